//! A hostile upstream on a real socket, for behaviours the simulated upstream
//! does not script: an error body of any size generated as it is written, an
//! SSE stream of keep-alive comments that never ends, a stream that trickles
//! events for a long time. It counts the body bytes the gateway actually took
//! off the socket (a write completes only once the peer's buffers have room),
//! so a test can tell a bounded read from a whole one.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// `status` with a JSON-looking error body of `bytes` bytes.
    ErrorBody { status: u16, bytes: u64 },
    /// 200 SSE: `response.created`, then `: keep-alive` comments every
    /// `every`, forever.
    CommentsForever { every: Duration },
    /// 200 SSE: `response.created`, then a text delta every `every`, forever.
    SlowStream { every: Duration },
}

pub struct Hostile {
    pub addr: SocketAddr,
    /// Body bytes written to the gateway so far.
    pub written: Arc<AtomicU64>,
    /// Requests received.
    pub requests: Arc<AtomicUsize>,
}

impl Hostile {
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (w, r) = (written.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (w, r) = (w.clone(), r.clone());
                tokio::spawn(async move {
                    let _ = serve(socket, behaviour, &w, &r).await;
                });
            }
        });
        Self {
            addr,
            written,
            requests,
        }
    }

    /// The base URL to configure as an upstream.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }
}

/// Reads one request (headers and a content-length body) and discards it.
async fn read_request(socket: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 8192];
    let head_end = loop {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < length {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        have += n;
    }
    Ok(())
}

async fn serve(
    mut socket: TcpStream,
    behaviour: Behaviour,
    written: &AtomicU64,
    requests: &AtomicUsize,
) -> std::io::Result<()> {
    read_request(&mut socket).await?;
    requests.fetch_add(1, Ordering::SeqCst);
    match behaviour {
        Behaviour::ErrorBody { status, bytes } => error_body(socket, status, bytes, written).await,
        Behaviour::CommentsForever { every } => {
            stream(socket, every, written, |_| b": keep-alive\n\n".to_vec()).await
        }
        Behaviour::SlowStream { every } => {
            stream(socket, every, written, |n| {
                format!(
                    "event: response.output_text.delta\ndata: {{\"type\":\"response.output_text.delta\",\"sequence_number\":{n},\"delta\":\"x\"}}\n\n"
                )
                .into_bytes()
            })
            .await
        }
    }
}

async fn error_body(
    mut socket: TcpStream,
    status: u16,
    bytes: u64,
    written: &AtomicU64,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} Error\r\ncontent-type: application/json\r\ncontent-length: {bytes}\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await?;
    let open = br#"{"error":{"type":"server_error","code":"server_error","message":""#;
    let close = br#""}}"#;
    let filler = vec![b'x'; 64 * 1024];
    let mut left = bytes;
    let put = |part: &[u8], left: &mut u64| {
        let take = usize::try_from((*left).min(part.len() as u64)).unwrap();
        *left -= take as u64;
        part[..take].to_vec()
    };
    let first = put(open, &mut left);
    socket.write_all(&first).await?;
    written.fetch_add(first.len() as u64, Ordering::SeqCst);
    while left > close.len() as u64 {
        let room = usize::try_from((left - close.len() as u64).min(filler.len() as u64)).unwrap();
        socket.write_all(&filler[..room]).await?;
        left -= room as u64;
        written.fetch_add(room as u64, Ordering::SeqCst);
    }
    let last = put(close, &mut left);
    socket.write_all(&last).await?;
    written.fetch_add(last.len() as u64, Ordering::SeqCst);
    socket.flush().await
}

async fn stream(
    mut socket: TcpStream,
    every: Duration,
    written: &AtomicU64,
    event: impl Fn(u64) -> Vec<u8>,
) -> std::io::Result<()> {
    socket
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .await?;
    let created = br#"event: response.created
data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_hostile","object":"response","status":"in_progress","model":"gpt-5.5","usage":null}}

"#;
    let chunk = |data: &[u8]| {
        let mut out = format!("{:x}\r\n", data.len()).into_bytes();
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
        out
    };
    socket.write_all(&chunk(created)).await?;
    written.fetch_add(created.len() as u64, Ordering::SeqCst);
    for n in 1.. {
        tokio::time::sleep(every).await;
        let data = event(n);
        socket.write_all(&chunk(&data)).await?;
        written.fetch_add(data.len() as u64, Ordering::SeqCst);
    }
    Ok(())
}
