//! The HTTP edge under hostile connections, over real sockets: half-sent
//! headers, trickled bodies and idle keep-alives are closed within their
//! timeouts, and a flood past the connection cap is refused politely while
//! service comes back once it ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::TestGateway;

/// Small timeouts; assertions allow generous slack (closure, not speed).
async fn gateway(pool: PgPool, max_connections: usize) -> TestGateway {
    TestGateway::start_with(pool, |config| {
        config.server.header_read_timeout_secs = 1;
        config.server.body_read_timeout_secs = 1;
        config.server.idle_timeout_secs = 1;
        config.server.max_connections = max_connections;
    })
    .await
}

/// Reads until the server closes the socket; what it sent, or a panic if it
/// is still open after `within`.
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open past {within:?}"
    );
    String::from_utf8_lossy(&out).into_owned()
}

#[sqlx::test(migrations = "./migrations")]
async fn half_sent_headers_are_closed(pool: PgPool) {
    let gw = gateway(pool, 100).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // Keep trickling header bytes: activity must not reset the timeout.
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if tcp.write_all(b"a").await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(8), trickle).await;
    let answer = read_until_closed(&mut tcp, Duration::from_secs(8)).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    gw.shutdown().await;
}

#[sqlx::test(migrations = "./migrations")]
async fn idle_keep_alive_connections_are_closed(pool: PgPool) {
    let gw = gateway(pool, 100).await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    // One request served, then the connection idles.
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut tcp, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A connection that never sends anything is closed too.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    read_until_closed(&mut silent, Duration::from_secs(10)).await;
    gw.shutdown().await;
}

#[sqlx::test(migrations = "./migrations")]
async fn trickled_bodies_are_cut_with_408(pool: PgPool) {
    let gw = gateway(pool, 100).await;
    let key = gw.key("acme").await;
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"model\":"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let trickle = async {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if tcp.write_all(b" ").await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(6), trickle).await;
    let answer = read_until_closed(&mut tcp, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    gw.shutdown().await;
}

async fn healthz(gw: &TestGateway) -> Option<u16> {
    // A fresh connection each time: the pool of a shared client would hide
    // the cap.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    match client.get(gw.url("/healthz")).send().await {
        Ok(response) => Some(response.status().as_u16()),
        Err(err) => {
            eprintln!("healthz: {err:?}");
            None
        }
    }
}

#[sqlx::test(migrations = "./migrations")]
async fn a_flood_past_the_cap_is_refused_politely_and_service_recovers(pool: PgPool) {
    let gw = TestGateway::start_with(pool, |config| {
        config.server.header_read_timeout_secs = 30;
        config.server.idle_timeout_secs = 30;
        config.server.max_connections = 50;
    })
    .await;
    // 1,200 idle connections from one peer (the figure): the first
    // 50 hold the cap, the rest are refused (or, past 256 refusals under
    // way, closed at once). Once the refusals of the silent ones have timed
    // out (1 s), a real request is answered 503.
    let mut flood = Vec::new();
    for _ in 0..1_200 {
        if let Ok(tcp) = TcpStream::connect(gw.addr).await {
            flood.push(tcp);
        }
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // A normal request is refused with the envelope and retry-after, not
    // left hanging or reset.
    let mut tcp = TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(
        answer.contains("\"code\":\"service_unavailable\""),
        "{answer}"
    );
    let status = healthz(&gw).await;
    assert!(matches!(status, Some(503)), "{status:?}");
    // The flood ends: service comes back.
    drop(flood);
    let mut recovered = None;
    for _ in 0..50 {
        recovered = healthz(&gw).await;
        if recovered == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(recovered, Some(200));
    gw.shutdown().await;
}

#[sqlx::test(migrations = "./migrations")]
async fn idle_flood_is_closed_by_the_timeouts_and_service_recovers(pool: PgPool) {
    let gw = gateway(pool, 50).await;
    let flood: Vec<TcpStream> = {
        let mut v = Vec::new();
        for _ in 0..200 {
            v.push(TcpStream::connect(gw.addr).await.unwrap());
        }
        v
    };
    // The flood is still connected (not dropped by us), yet the idle timeout
    // frees the cap and a normal request is served.
    let mut served = None;
    for _ in 0..80 {
        served = healthz(&gw).await;
        if served == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, Some(200));
    drop(flood);
    gw.shutdown().await;
}

#[sqlx::test(migrations = "./migrations")]
async fn open_files_soft_limit_is_raised_to_the_hard_limit(pool: PgPool) {
    let gw = TestGateway::start(pool).await;
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    assert_eq!(soft, hard);
    gw.shutdown().await;
}

#[sqlx::test(migrations = "./migrations")]
async fn shutdown_still_drains_a_request_under_way(pool: PgPool) {
    let gw = gateway(pool, 100).await;
    // A keep-alive connection mid-idle does not hold shutdown up.
    let _idle = TcpStream::connect(gw.addr).await.unwrap();
    let started = std::time::Instant::now();
    gw.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
}
