//! A FAULT INJECTOR for tests: a TCP proxy in front of a real server that
//! can be closed (every connection stops moving bytes, new ones wait) and
//! opened again. It holds an operation "in flight" for as long as a test
//! needs, which no real server does on request.

use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Gate {
    /// `http://127.0.0.1:<port>`: use it in place of the upstream's URL.
    pub url: String,
    open: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// A proxy to `upstream` (`host:port` or `http://host:port`), open.
    pub async fn start(upstream: &str) -> std::io::Result<Self> {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let open = Arc::new(watch::channel(true).0);
        let gate = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let rx = gate.subscribe();
                tokio::spawn(async move {
                    let _ = forward(client, &upstream, rx).await;
                });
            }
        });
        Ok(Self { url, open, task })
    }

    /// Stops every byte until `open`.
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    client: TcpStream,
    upstream: &str,
    rx: watch::Receiver<bool>,
) -> std::io::Result<()> {
    wait_open(&mut rx.clone()).await;
    let server = TcpStream::connect(upstream).await?;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, rx.clone());
    let down = pump(sr, cw, rx);
    let _ = tokio::join!(up, down);
    Ok(())
}

async fn wait_open(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|open| *open).await;
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut rx: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        wait_open(&mut rx).await;
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        wait_open(&mut rx).await;
        to.write_all(&buf[..n]).await?;
    }
}
