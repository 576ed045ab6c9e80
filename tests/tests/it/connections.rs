//! Slow and idle clients cannot hold the host's connections: a request whose headers never end
//! and a kept-alive connection left idle are closed after the header timeout, and with every
//! connection slot taken by such clients `/healthz` is answered once they are dropped.

use std::time::{Duration, Instant};

use sluice_tests::{TestHost, start_host_with, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn host(header_timeout: Duration, max_connections: usize) -> (TestHost, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.header_timeout = header_timeout;
    config.max_connections = max_connections;
    (start_host_with(config).await, dir)
}

fn addr(host: &TestHost) -> String {
    host.url.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection; returns what it sent and how long it took.
async fn read_until_closed(tcp: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, start.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the host kept the connection open for 20 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_never_end_are_cut_off() {
    let timeout = Duration::from_millis(400);
    let (host, _dir) = host(timeout, 64).await;
    let mut tcp = TcpStream::connect(addr(&host)).await.unwrap();
    // A slowloris client: a request line and one header, then silence.
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (_, took) = read_until_closed(&mut tcp).await;
    assert!(
        took >= timeout / 2,
        "closed after {took:?}, before the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed() {
    let timeout = Duration::from_millis(400);
    let (host, _dir) = host(timeout, 64).await;
    let mut tcp = TcpStream::connect(addr(&host)).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let (answer, _) = read_until_closed(&mut tcp).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        start.elapsed() >= timeout / 2,
        "kept alive, then closed when idle: {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_served_when_idle_clients_hold_every_slot() {
    let timeout = Duration::from_millis(500);
    let (host, _dir) = host(timeout, 4).await;
    // The test client's own keep-alive connection must not be one of the four.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(addr(&host)).await.unwrap());
    }
    // Give the host time to accept all four.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        fresh.get(host.url("/healthz")).send(),
    )
    .await
    .expect("/healthz was never answered")
    .unwrap();
    assert_eq!(r.status(), 200);
    // It waited for a slot: the idle clients were dropped at their timeout.
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "answered after {:?}: the bound did not hold",
        start.elapsed()
    );
    for mut tcp in idle {
        let (got, _) = read_until_closed(&mut tcp).await;
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "{got:?}"
        );
    }
}
