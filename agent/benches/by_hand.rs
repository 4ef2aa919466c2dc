//! The agent against doing it by hand, on the real Qdrant and a real S3
//! server (s3s-fs), same data and same servers, in one run.
//!
//! Seeds one collection of BENCH_POINTS (default 150,000) points x 384
//! dimensions in one shard and one of BENCH_POINTS / 4 points in four
//! shards, then for BENCH_ROUNDS (default 3) rounds times:
//! - backup by the agent: `qdrant-agent backup` (default mode, auto);
//! - backup by hand: Qdrant's collection snapshot API, `s5cmd cp` of each
//!   file, the snapshot deleted;
//! - restore by the agent: `qdrant-agent restore` under new names;
//! - restore by hand: `s5cmd cp` of each file, Qdrant's snapshot upload API.
//!
//! each collection on its own, and prints per case the medians, the agent /
//! by-hand ratios and the agent's peak RSS. Goals: restore <= 1.0 x by hand
//! for the one shard, <= 0.7 x for the four; peak RSS <= 128 MiB.
//!
//!   scripts/bench.sh            (installs s5cmd, then runs this)
//!   cargo bench -p qdrant-agent --bench by_hand

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use test_support::bench::{Run, measure, median};
use test_support::real_qdrant::{RealQdrant, call};
use test_support::s3_server::S3sFs;

const AGENT: &str = env!("CARGO_BIN_EXE_qdrant-agent");
const DIM: usize = 384;
const KEY: &str = "bench";
const SECRET: &str = "bench-secret";

fn env_or(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "3600"])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deterministic pseudo-random vectors (xorshift), sent 1,000 points at a time.
fn seed(base: &str, name: &str, points: usize, shards: u32) {
    call(
        "PUT",
        base,
        &format!("/collections/{name}?wait=true"),
        None,
        Some(serde_json::json!({
            "vectors": {"size": DIM, "distance": "Cosine"},
            "shard_number": shards,
        })),
    )
    .expect("create collection");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(shards);
    let body = std::env::temp_dir().join(format!("bench-seed-{}.json", std::process::id()));
    for start in (0..points).step_by(1000) {
        let mut s = String::from("{\"points\":[");
        for id in start..(start + 1000).min(points) {
            if id > start {
                s.push(',');
            }
            s.push_str(&format!("{{\"id\":{},\"vector\":[", id + 1));
            for d in 0..DIM {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if d > 0 {
                    s.push(',');
                }
                s.push_str(&format!("{:.4}", (x % 20_000) as f32 / 10_000.0 - 1.0));
            }
            s.push_str(&format!("],\"payload\":{{\"n\":{id}}}}}"));
        }
        s.push_str("]}");
        std::fs::write(&body, s).expect("seed body");
        curl(&[
            "-X",
            "PUT",
            "-H",
            "content-type: application/json",
            "--data-binary",
            &format!("@{}", body.display()),
            &format!("{base}/collections/{name}/points?wait=true"),
        ]);
    }
    let _ = std::fs::remove_file(body);
}

fn count(base: &str, name: &str) -> u64 {
    call(
        "POST",
        base,
        &format!("/collections/{name}/points/count"),
        None,
        Some(serde_json::json!({"exact": true})),
    )
    .expect("count")["count"]
        .as_u64()
        .unwrap_or(0)
}

fn delete_collection(base: &str, name: &str) {
    call("DELETE", base, &format!("/collections/{name}"), None, None).expect("delete");
}

fn with_s3(cmd: &mut Command) {
    cmd.env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1");
}

fn agent(endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new(AGENT);
    c.args(args).args(["--s3-endpoint", endpoint]);
    with_s3(&mut c);
    c
}

fn s5cmd(endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new(test_support::bins::tool("s5cmd"));
    c.args(["--endpoint-url", endpoint]).args(args);
    with_s3(&mut c);
    c
}

/// Backup by hand: a collection snapshot per collection, copied with s5cmd,
/// then deleted from the node.
fn backup_by_hand(base: &str, snaps: &Path, endpoint: &str, round: usize, cols: &[&str]) -> f64 {
    let start = Instant::now();
    for c in cols {
        let made = call(
            "POST",
            base,
            &format!("/collections/{c}/snapshots?wait=true"),
            None,
            None,
        )
        .expect("snapshot");
        let name = made["name"].as_str().expect("snapshot name").to_string();
        let file = snaps.join(c).join(&name);
        measure(&mut s5cmd(
            endpoint,
            &[
                "cp",
                &file.display().to_string(),
                &format!("s3://bench/hand/r{round}/{c}.snapshot"),
            ],
        ));
        call(
            "DELETE",
            base,
            &format!("/collections/{c}/snapshots/{name}?wait=true"),
            None,
            None,
        )
        .expect("delete snapshot");
    }
    start.elapsed().as_secs_f64()
}

/// Restore by hand: s5cmd downloads each file, Qdrant's upload API recovers it.
fn restore_by_hand(base: &str, tmp: &Path, endpoint: &str, round: usize, cols: &[&str]) -> f64 {
    let start = Instant::now();
    for c in cols {
        let file = tmp.join(format!("{c}-r{round}.snapshot"));
        measure(&mut s5cmd(
            endpoint,
            &[
                "cp",
                &format!("s3://bench/hand/r{round}/{c}.snapshot"),
                &file.display().to_string(),
            ],
        ));
        curl(&[
            "-X",
            "POST",
            "-F",
            &format!("snapshot=@{}", file.display()),
            &format!(
                "{base}/collections/{c}-hand{round}/snapshots/upload?priority=snapshot&wait=true"
            ),
        ]);
        std::fs::remove_file(&file).expect("remove download");
    }
    start.elapsed().as_secs_f64()
}

fn report(what: &str, agent: &[f64], hand: &[f64], rss: f64) {
    let (a, h) = (median(agent), median(hand));
    println!(
        "{what:<22} agent {a:>7.2} s   by hand {h:>7.2} s   agent / by hand {:>5.2}   agent peak RSS {rss:.0} MiB",
        a / h
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let points = env_or("BENCH_POINTS", 150_000);
    let rounds = env_or("BENCH_ROUNDS", 3);
    let q = RealQdrant::start(1, None).expect("the real Qdrant");
    let node = &q.nodes[0];
    let base = node.url.clone();
    let dir = tempfile::tempdir().expect("tmp");
    let s3root: PathBuf = dir.path().join("s3");
    std::fs::create_dir_all(&s3root).expect("s3 root");
    let s3 = S3sFs::start(&s3root, KEY, SECRET).expect("s3s-fs");
    s3.bucket("bench").expect("bucket");
    let cols = ["one-shard", "four-shards"];
    let seeded = Instant::now();
    seed(&base, cols[0], points, 1);
    seed(&base, cols[1], points / 4, 4);
    println!(
        "seeded {points} + {} points x {DIM} in {:.0} s; {rounds} rounds",
        points / 4,
        seeded.elapsed().as_secs_f64()
    );
    let snaps = node.snapshots.display().to_string();
    // Each case on its own: one large shard, then several smaller ones.
    let mut lines = vec![];
    for case in cols {
        let (mut ab, mut hb, mut ar, mut hr) = (vec![], vec![], vec![], vec![]);
        let (mut rss_backup, mut rss_restore) = (0f64, 0f64);
        let peak = |rss: &mut f64, r: &Run| *rss = rss.max(r.peak_rss_mib.unwrap_or(0.0));
        for round in 0..rounds {
            let name = format!("{case}-r{round}");
            let r = measure(&mut agent(
                &s3.endpoint,
                &[
                    "backup",
                    "--qdrant-url",
                    &base,
                    "--to",
                    "s3://bench/agent",
                    "--name",
                    &name,
                    "--snapshots-dir",
                    &snaps,
                    "--collection",
                    case,
                ],
            ));
            peak(&mut rss_backup, &r);
            ab.push(r.secs);
            hb.push(backup_by_hand(
                &base,
                &node.snapshots,
                &s3.endpoint,
                round,
                &[case],
            ));
            let rename = format!("{case}={case}-agent{round}");
            let r = measure(&mut agent(
                &s3.endpoint,
                &[
                    "restore",
                    "--qdrant-url",
                    &base,
                    "--from",
                    "s3://bench/agent",
                    "--name",
                    &name,
                    "--snapshots-dir",
                    &snaps,
                    "--rename",
                    &rename,
                ],
            ));
            peak(&mut rss_restore, &r);
            ar.push(r.secs);
            hr.push(restore_by_hand(
                &base,
                dir.path(),
                &s3.endpoint,
                round,
                &[case],
            ));
            for restored in [
                format!("{case}-agent{round}"),
                format!("{case}-hand{round}"),
            ] {
                assert_eq!(count(&base, &restored), count(&base, case), "{restored}");
                delete_collection(&base, &restored);
            }
        }
        println!(
            "{case}: backup agent {ab:.2?} by hand {hb:.2?}; restore agent {ar:.2?} by hand {hr:.2?}"
        );
        lines.push((format!("{case} backup"), ab, hb, rss_backup));
        lines.push((format!("{case} restore"), ar, hr, rss_restore));
    }
    println!();
    for (what, agent, hand, rss) in &lines {
        report(what, agent, hand, *rss);
    }
}
