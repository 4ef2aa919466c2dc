//! The task registry: tasks by caller-given id, idempotent (one id, one
//! request), in memory, the newest finished ones kept for `GetTask`.

use crate::progress::{Progress, now};
use qdrant_agent_proto::v1::{Task, TaskKind, TaskPhase};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Finished tasks kept for `GetTask`/`ListTasks`.
const KEEP_FINISHED: usize = 100;

struct Entry {
    progress: Progress,
    cancel: CancellationToken,
    fingerprint: String,
    seq: u64,
}

pub struct Registry {
    /// Changes with each process, so callers can tell a restart.
    pub instance_id: String,
    node_name: String,
    tasks: Mutex<HashMap<String, Entry>>,
    seq: AtomicU64,
}

impl Registry {
    pub fn new(node_name: String) -> Self {
        Self {
            instance_id: format!("{:016x}", rand::random::<u64>()),
            node_name,
            tasks: Mutex::default(),
            seq: AtomicU64::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The task `id`, or NotFound naming this agent instance.
    pub fn find(&self, id: &str) -> Result<Progress, Status> {
        self.lock()
            .get(id)
            .map(|e| e.progress.clone())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no task {id:?} on this agent (instance {})",
                    self.instance_id
                ))
            })
    }

    /// Registers a task or returns the one with the same id (and no cancel
    /// token: it runs already). The fingerprint (the request without
    /// credentials) must match: one id, one request.
    pub fn register(
        &self,
        id: &str,
        kind: TaskKind,
        backup_name: &str,
        fingerprint: String,
    ) -> Result<(Progress, Option<CancellationToken>), Status> {
        if id.is_empty() || id.len() > 200 || id.chars().any(|c| c.is_control()) {
            return Err(Status::invalid_argument(
                "task_id must be 1-200 printable characters",
            ));
        }
        let mut tasks = self.lock();
        if let Some(e) = tasks.get(id) {
            if e.fingerprint != fingerprint {
                return Err(Status::already_exists(format!(
                    "task {id:?} exists with a different request"
                )));
            }
            return Ok((e.progress.clone(), None));
        }
        let mut finished: Vec<(u64, String)> = tasks
            .iter()
            .filter(|(_, e)| e.progress.is_finished())
            .map(|(k, e)| (e.seq, k.clone()))
            .collect();
        if finished.len() >= KEEP_FINISHED {
            finished.sort();
            for (_, k) in finished.iter().take(finished.len() + 1 - KEEP_FINISHED) {
                tasks.remove(k);
            }
        }
        let mut task = Task {
            task_id: id.to_string(),
            backup_name: backup_name.to_string(),
            started_at: now(),
            instance_id: self.instance_id.clone(),
            node_name: self.node_name.clone(),
            ..Default::default()
        };
        task.set_kind(kind);
        task.set_phase(TaskPhase::Running);
        let progress = Progress::new(task);
        let cancel = CancellationToken::new();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        tasks.insert(
            id.to_string(),
            Entry {
                progress: progress.clone(),
                cancel: cancel.clone(),
                fingerprint,
                seq,
            },
        );
        Ok((progress, Some(cancel)))
    }

    /// Asks task `id` to stop; its state as it is now.
    pub fn cancel(&self, id: &str) -> Result<Task, Status> {
        let (progress, cancel) = {
            let tasks = self.lock();
            let e = tasks
                .get(id)
                .ok_or_else(|| Status::not_found(format!("no task {id:?}")))?;
            (e.progress.clone(), e.cancel.clone())
        };
        cancel.cancel();
        Ok(progress.get())
    }

    /// Asks every running task to stop (the agent is shutting down).
    pub fn cancel_all(&self) {
        for e in self.lock().values() {
            e.cancel.cancel();
        }
    }

    /// Waits until no task runs, at most `limit`; whether none does.
    pub async fn idle(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.running().is_empty() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Every task this instance knows, oldest first.
    pub fn all(&self) -> Vec<Task> {
        let mut tasks: Vec<(u64, Task)> = self
            .lock()
            .values()
            .map(|e| (e.seq, e.progress.get()))
            .collect();
        tasks.sort_by_key(|(s, _)| *s);
        tasks.into_iter().map(|(_, t)| t).collect()
    }

    /// The tasks still running.
    pub fn running(&self) -> Vec<Task> {
        self.all()
            .into_iter()
            .filter(|t| !crate::progress::is_terminal(t.phase()))
            .collect()
    }
}
