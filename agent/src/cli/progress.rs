//! A task run from the command line: a progress display on a terminal (a
//! log line per finished object otherwise) and Ctrl-C cancellation.

use crate::Result;
use crate::progress::{Progress, now};
use qdrant_agent_proto::v1::{Task, TaskKind, TaskPhase};
use std::io::IsTerminal;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs one task with a progress display and Ctrl-C cancellation; returns
/// its result and its final state.
pub async fn run_task<T>(
    kind: TaskKind,
    name: &str,
    work: impl AsyncFnOnce(&Progress, &CancellationToken) -> Result<T>,
) -> Result<(T, Task)> {
    let progress = cli_progress(kind, name);
    let cancel = cancel_on_ctrl_c();
    let display = show_progress(progress.clone());
    let r = work(&progress, &cancel).await;
    progress.finish(r.as_ref().map(|_| ()));
    let _ = display.await;
    Ok((r?, progress.get()))
}

fn cli_progress(kind: TaskKind, name: &str) -> Progress {
    let mut t = Task {
        task_id: "cli".into(),
        backup_name: name.into(),
        started_at: now(),
        ..Default::default()
    };
    t.set_kind(kind);
    t.set_phase(TaskPhase::Running);
    Progress::new(t)
}

pub(super) fn cancel_on_ctrl_c() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ninterrupted: cancelling and cleaning up");
            t.cancel();
        }
    });
    token
}

/// A progress line on a terminal; a log line per finished object otherwise.
fn show_progress(p: Progress) -> tokio::task::JoinHandle<()> {
    let tty = std::io::stderr().is_terminal();
    let mut rx = p.subscribe();
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            let t = rx.borrow_and_update().clone();
            if tty {
                let total = if t.bytes_total > 0 {
                    format!("/{}", mib(t.bytes_total))
                } else {
                    String::new()
                };
                eprint!(
                    "\r{} {}/{} objects, {}{} MiB   ",
                    t.backup_name,
                    t.shards_done,
                    t.shards_total,
                    mib(t.bytes_done),
                    total
                );
            } else {
                for r in t.results.iter().skip(seen) {
                    tracing::info!(collection = %r.collection, shard = ?r.shard_id, key = %r.key, bytes = r.size, sha256 = %r.sha256, "object done");
                }
            }
            seen = t.results.len();
            if crate::progress::is_terminal(t.phase()) {
                if tty {
                    eprintln!();
                }
                return;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if tty {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1024.0 * 1024.0))
}
