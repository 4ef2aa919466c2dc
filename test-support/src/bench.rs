//! What the benchmarks share: running a command to completion while
//! sampling its peak RSS, and medians.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Run {
    pub secs: f64,
    pub peak_rss_mib: Option<f64>,
}

/// Runs `cmd` to completion, sampling its peak RSS (VmHWM) from /proc;
/// panics with its stderr when it fails.
pub fn measure(cmd: &mut Command) -> Run {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib: Option<u64> = None;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Some(kib) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        {
            peak_kib = Some(peak_kib.unwrap_or(0).max(kib));
        }
        if let Some(st) = child.try_wait().expect("wait") {
            let secs = start.elapsed().as_secs_f64();
            if !st.success() {
                let mut err = String::new();
                use std::io::Read;
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("{cmd:?} failed: {err}");
            }
            return Run {
                secs,
                peak_rss_mib: peak_kib.map(|k| k as f64 / 1024.0),
            };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}
