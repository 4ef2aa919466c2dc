//! A child process that never outlives its owner: SIGTERM, a grace period,
//! then SIGKILL on drop (which also runs on panic), and the kernel's
//! parent-death signal in case the owner itself is killed.

use rustix::process::{Pid, Signal, kill_process};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct Guarded {
    name: String,
    child: Option<Child>,
    grace: Duration,
}

impl Guarded {
    /// Spawns `cmd`. The child gets SIGKILL if the spawning thread exits, so
    /// spawn from a thread that lives as long as the process should (the test's
    /// own thread or a runtime worker, never a short-lived blocking thread).
    pub fn spawn(
        name: impl Into<String>,
        cmd: &mut Command,
        grace: Duration,
    ) -> std::io::Result<Self> {
        let name = name.into();
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| std::io::Error::other(format!("cannot start {name}: {e}")))?;
        Ok(Self {
            name,
            child: Some(child),
            grace,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Sends a signal (e.g. SIGSTOP to freeze the process, SIGCONT to resume).
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self
            .child
            .as_ref()
            .and_then(|c| Pid::from_raw(c.id() as i32))
        {
            let _ = kill_process(pid, sig);
        }
    }

    /// SIGKILL at once: nothing of the process's own cleanup runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within the grace period.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Some(pid) = Pid::from_raw(c.id() as i32) {
            // A stopped process cannot act on SIGTERM.
            let _ = kill_process(pid, Signal::CONT);
            let _ = kill_process(pid, Signal::TERM);
        }
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}
