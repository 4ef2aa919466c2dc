//! `qdrant-double`: the Qdrant TEST DOUBLE as a process, for the demo and
//! the benchmark. Collections are given as NAME:DIM:SIZE[,SIZE...] where
//! each SIZE (bytes, or with a K/M/G suffix) is one shard's snapshot size.

use clap::Parser;
use test_support::qdrant_double::Double;

#[derive(Parser)]
#[command(about = "A Qdrant REST API test double that streams generated shard snapshots")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:6333")]
    listen: std::net::SocketAddr,
    #[arg(long, default_value = "1.18.3")]
    version: String,
    #[arg(long)]
    snapshots_dir: Option<std::path::PathBuf>,
    #[arg(long)]
    peer_id: Option<u64>,
    #[arg(long)]
    api_key: Option<String>,
    /// NAME:DIM:SIZE[,SIZE...], repeatable.
    #[arg(long = "collection")]
    collections: Vec<String>,
    /// ALIAS=COLLECTION, repeatable.
    #[arg(long = "alias")]
    aliases: Vec<String>,
    /// Serve a distributed Qdrant of this many nodes, node i on the port of
    /// --listen plus i (peer ids 101, 102, ...).
    #[arg(long, default_value_t = 1)]
    members: usize,
    /// Replicas of each shard when --members is above 1.
    #[arg(long, default_value_t = 1)]
    replication_factor: u64,
}

fn size(s: &str) -> Result<u64, String> {
    let (n, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    n.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("size {s:?}: {e}"))
}

#[tokio::main]
async fn main() -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let mut members = if a.members > 1 {
        Double::cluster(&a.version, a.members)
    } else {
        vec![Double::new(&a.version)]
    };
    for m in &mut members {
        m.api_key = a.api_key.clone();
        m.snapshots_dir = a.snapshots_dir.clone();
    }
    if a.members <= 1 {
        members[0].peer_id = a.peer_id;
    }
    let d = &members[0];
    for c in &a.collections {
        let parts: Vec<&str> = c.splitn(3, ':').collect();
        let [name, dim, sizes] = parts[..] else {
            return Err(format!("--collection {c:?}: want NAME:DIM:SIZE[,SIZE]"));
        };
        let dim = dim.parse::<u64>().map_err(|e| format!("dim: {e}"))?;
        let sizes = sizes.split(',').map(size).collect::<Result<Vec<_>, _>>()?;
        if a.members > 1 {
            d.add_replicated_collection(name, dim, &sizes, a.replication_factor);
        } else {
            d.add_collection(name, dim, &sizes);
        }
    }
    for al in &a.aliases {
        let (alias, col) = al.split_once('=').ok_or("--alias wants ALIAS=COLLECTION")?;
        d.add_alias(alias, col);
    }
    let mut served = Vec::new();
    for (i, m) in members.into_iter().enumerate() {
        let mut addr = a.listen;
        addr.set_port(a.listen.port() + i as u16);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        eprintln!("qdrant-double {} listening on http://{addr}", a.version);
        served.push(tokio::spawn(async move {
            axum::serve(listener, m.router()).await
        }));
    }
    for s in served {
        s.await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
