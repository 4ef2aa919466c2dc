//! A task's live state, shared between the worker that runs it, gRPC
//! `GetTask`/`WatchTask` callers and the CLI's progress display. The state is
//! the proto `Task`, so every view reports the same thing.

use qdrant_agent_proto::v1::{ShardResult, Task, TaskPhase};
use tokio::sync::watch;

#[derive(Clone)]
pub struct Progress {
    tx: watch::Sender<Task>,
}

pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Millisecond)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl Progress {
    pub fn new(task: Task) -> Self {
        Self {
            tx: watch::Sender::new(task),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Task> {
        self.tx.subscribe()
    }

    pub fn get(&self) -> Task {
        self.tx.borrow().clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut Task)) {
        self.tx.send_modify(f);
    }

    pub fn add_bytes(&self, n: u64) {
        self.tx.send_modify(|t| t.bytes_done += n);
    }

    pub fn shard_done(&self, r: ShardResult) {
        self.tx.send_modify(|t| {
            t.shards_done += 1;
            t.results.push(r);
        });
    }

    pub fn is_finished(&self) -> bool {
        is_terminal(self.tx.borrow().phase())
    }

    pub fn finish(&self, result: Result<(), &crate::Error>) {
        self.tx.send_modify(|t| {
            t.finished_at = now();
            match result {
                Ok(()) => t.set_phase(TaskPhase::Succeeded),
                Err(e @ (crate::Error::Cancelled | crate::Error::Interrupted(_))) => {
                    t.set_phase(TaskPhase::Cancelled);
                    t.error = e.to_string();
                    t.error_reason = "Cancelled".into();
                }
                Err(e) => {
                    t.set_phase(TaskPhase::Failed);
                    t.error = e.to_string();
                    t.error_reason = e.reason().into();
                }
            }
        });
    }
}

pub fn is_terminal(p: TaskPhase) -> bool {
    matches!(
        p,
        TaskPhase::Succeeded | TaskPhase::Failed | TaskPhase::Cancelled
    )
}

/// `f`, or `Cancelled` as soon as `cancel` fires: a request to a store or a
/// Qdrant that stopped answering is dropped at once (the SDK's own timeouts
/// and retries would hold a Ctrl-C for minutes).
pub async fn or_cancelled<T>(
    cancel: &tokio_util::sync::CancellationToken,
    f: impl std::future::Future<Output = crate::Result<T>>,
) -> crate::Result<T> {
    tokio::select! {
        r = f => r,
        _ = cancel.cancelled() => Err(crate::Error::Cancelled),
    }
}
