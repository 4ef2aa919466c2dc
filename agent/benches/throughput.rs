//! Throughput and memory benchmark of the agent against a local S3 server.
//!
//! Streams a generated shard snapshot of BENCH_SIZE_MIB (default 1024) from
//! the Qdrant test double into S3 with `qdrant-agent backup`, uploads the
//! same bytes from a file with s5cmd, takes a FILE-mode backup, restores with
//! the agent, downloads with s5cmd, and prints throughput, ratios and the
//! agent's peak RSS (VmHWM). S3 endpoints: BENCH_UPLOAD_ENDPOINT and
//! BENCH_DOWNLOAD_ENDPOINT (a bucket named `bench` must exist on each, or
//! will be created with a plain PUT); when unset, a moto server is started.
//!
//! BENCH_BACKUP_ONLY=1 runs only the streamed backup (no file on disk), for
//! the agent's peak RSS at large sizes; BENCH_MEMORY_BUDGET sets its
//! --memory-budget.
//!
//!   cargo bench -p qdrant-agent --bench throughput
//!   BENCH_SIZE_MIB=4096 BENCH_UPLOAD_ENDPOINT=http://127.0.0.1:9000 cargo bench -p qdrant-agent --bench throughput

use std::path::Path;
use std::process::Command;
use test_support::bench::{Run, measure};
use test_support::qdrant_double::{Double, generated_stream, seed_for};
use test_support::s3_server::S3Server;

const AGENT: &str = env!("CARGO_BIN_EXE_qdrant-agent");
const MIB: u64 = 1 << 20;

fn ensure_bucket(endpoint: &str) {
    let _ = Command::new("curl")
        .args(["-fsS", "-X", "PUT", &format!("{endpoint}/bench")])
        .output();
}

fn agent(endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new(AGENT);
    c.args(args)
        .args(["--s3-endpoint", endpoint])
        // The agent's own variable: unset, its default budget applies.
        .envs(std::env::var("BENCH_MEMORY_BUDGET").map(|b| ("QDRANT_AGENT_MEMORY_BUDGET", b)))
        .env(
            "AWS_ACCESS_KEY_ID",
            std::env::var("BENCH_ACCESS_KEY").unwrap_or("test".into()),
        )
        .env(
            "AWS_SECRET_ACCESS_KEY",
            std::env::var("BENCH_SECRET_KEY").unwrap_or("test".into()),
        )
        .env("AWS_REGION", "us-east-1");
    c
}

fn s5cmd(endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new("s5cmd");
    c.args(["--endpoint-url", endpoint])
        .args(args)
        .env(
            "AWS_ACCESS_KEY_ID",
            std::env::var("BENCH_ACCESS_KEY").unwrap_or("test".into()),
        )
        .env(
            "AWS_SECRET_ACCESS_KEY",
            std::env::var("BENCH_SECRET_KEY").unwrap_or("test".into()),
        )
        .env("AWS_REGION", "us-east-1");
    c
}

async fn write_source_file(path: &Path, size: u64) {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::File::create(path).await.expect("file");
    let mut s = std::pin::pin!(generated_stream(seed_for("bench", 0), size));
    while let Some(b) = s.next().await {
        f.write_all(&b).await.expect("write");
    }
    f.flush().await.expect("flush");
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn line(what: &str, size: u64, r: &Run) -> f64 {
    let mibs = size as f64 / MIB as f64 / r.secs;
    let rss = r
        .peak_rss_mib
        .map(|m| format!("{m:.0} MiB"))
        .unwrap_or_else(|| "-".into());
    println!(
        "{what:<44} {:>8.2} s {:>9.1} MiB/s   peak RSS {rss}",
        r.secs, mibs
    );
    mibs
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        // `cargo test --benches` / nextest listing: nothing to run as a test.
        return;
    }
    let size = std::env::var("BENCH_SIZE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024u64)
        * MIB;
    let part = std::env::var("BENCH_PART_SIZE").unwrap_or_else(|_| (8 * MIB).to_string());
    let conc = std::env::var("BENCH_CONCURRENCY").unwrap_or_else(|_| "4".into());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = rt.enter();

    let mut moto = None;
    let mut endpoint_or_moto = |var: &str| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| {
                let s = moto.get_or_insert_with(|| S3Server::start().expect("moto"));
                s.endpoint.clone()
            })
    };
    let up = endpoint_or_moto("BENCH_UPLOAD_ENDPOINT");
    let down = endpoint_or_moto("BENCH_DOWNLOAD_ENDPOINT");
    ensure_bucket(&up);
    ensure_bucket(&down);

    let dir = tempfile::tempdir().expect("tmp");
    let snaps = dir.path().join("snapshots");
    let mut src = Double::new("1.18.3");
    src.snapshots_dir = Some(snaps.clone());
    src.add_collection("bench", 384, &[size]);
    let src_url = rt.block_on(src.clone().start()).expect("double");
    let file = dir.path().join("shard.snapshot");
    // Only the streamed backup (its memory at large sizes): no copy on disk.
    let only_backup = std::env::var_os("BENCH_BACKUP_ONLY").is_some();
    if !only_backup {
        rt.block_on(write_source_file(&file, size));
    }

    // A fresh prefix per run: the agent refuses to overwrite a backup.
    let run = format!("{}-{}", std::process::id(), rand_suffix());
    let agent_url = format!("s3://bench/agent-{run}");
    let s5_url = format!("s3://bench/s5cmd-{run}/shard.snapshot");
    println!(
        "object size {} MiB, part size {part} B, {conc} parts in flight",
        size / MIB
    );
    println!("upload server {up}, download server {down}\n");

    // The same stream-mode backup, on the upload server and (for the
    // restore measurements) on the download server.
    let stream_backup = |endpoint: &str| {
        measure(&mut agent(
            endpoint,
            &[
                "backup",
                "--qdrant-url",
                &src_url,
                "--to",
                &agent_url,
                "--name",
                "b1",
                "--node-name",
                "n0",
                "--part-size",
                &part,
                "--concurrency",
                &conc,
            ],
        ))
    };
    let a = stream_backup(&up);
    let agent_up = line("agent backup, stream mode (Qdrant -> S3)", size, &a);
    if only_backup {
        return;
    }
    let s = measure(&mut s5cmd(
        &up,
        &["cp", &file.display().to_string(), &s5_url],
    ));
    let s5_up = line("s5cmd cp file -> S3", size, &s);
    let snaps_arg = snaps.display().to_string();
    let f = measure(&mut agent(
        &up,
        &[
            "backup",
            "--qdrant-url",
            &src_url,
            "--to",
            &agent_url,
            "--name",
            "f1",
            "--node-name",
            "n0",
            "--mode",
            "file",
            "--snapshots-dir",
            &snaps_arg,
            "--part-size",
            &part,
            "--concurrency",
            &conc,
        ],
    ));
    line("agent backup, file mode (snapshot file -> S3)", size, &f);

    if down != up {
        let a = stream_backup(&down);
        line("  (same backup on the download server)", size, &a);
        let _ = measure(&mut s5cmd(
            &down,
            &["cp", &file.display().to_string(), &s5_url],
        ));
    }
    let dst = Double::new("1.18.3");
    let dst_url = rt.block_on(dst.clone().start()).expect("double");
    let r = measure(&mut agent(
        &down,
        &[
            "restore",
            "--qdrant-url",
            &dst_url,
            "--from",
            &agent_url,
            "--name",
            "b1",
            "--skip-verify",
        ],
    ));
    let agent_down = line("agent restore, streamed (S3 -> Qdrant)", size, &r);
    let dst2 = Double::new("1.18.3");
    let dst2_url = rt.block_on(dst2.clone().start()).expect("double");
    let rv = measure(&mut agent(
        &down,
        &[
            "restore",
            "--qdrant-url",
            &dst2_url,
            "--from",
            &agent_url,
            "--name",
            "b1",
        ],
    ));
    line("agent restore, verify first then stream", size, &rv);
    let out = dir.path().join("download.snapshot");
    let d = measure(&mut s5cmd(
        &down,
        &["cp", &s5_url, &out.display().to_string()],
    ));
    let s5_down = line("s5cmd cp S3 -> file", size, &d);
    assert_eq!(
        dst.collection("bench")
            .map(|c| c.shards[&0].content.sha256()),
        Some(test_support::qdrant_double::generated_sha256(
            seed_for("bench", 0),
            size
        )),
        "restored bytes differ"
    );
    println!("\nupload:   agent / s5cmd = {:.2}", agent_up / s5_up);
    println!("download: agent / s5cmd = {:.2}", agent_down / s5_down);
}
