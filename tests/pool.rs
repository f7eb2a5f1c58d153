//! Upstream connections: reused, replaced when the upstream closed them,
//! closed when idle too long. The upstream here is a few lines of raw
//! HTTP/1.1 so each test can see connections open and close.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::Sidecar;
use support::client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the raw upstream does after each answer.
#[derive(Clone, Copy)]
enum AfterAnswer {
    /// Keep the connection for the next request.
    KeepAlive,
    /// Close it, as an upstream whose keep-alive timer fired does: no
    /// `Connection: close`, the socket just goes away.
    Close,
}

struct RawUpstream {
    url: String,
    accepted: Arc<AtomicUsize>,
    /// Request lines, in arrival order.
    lines: mpsc::UnboundedReceiver<String>,
    /// A message per connection the sidecar closed.
    closed: mpsc::UnboundedReceiver<()>,
}

async fn raw_upstream(after: AfterAnswer) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let (line_tx, lines) = mpsc::unbounded_channel();
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, after, line_tx.clone(), closed_tx.clone()));
        }
    });
    RawUpstream {
        url,
        accepted,
        lines,
        closed,
    }
}

async fn serve(
    mut stream: TcpStream,
    after: AfterAnswer,
    lines: mpsc::UnboundedSender<String>,
    closed: mpsc::UnboundedSender<()>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Read one request: head, then Content-Length bytes of body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    let _ = closed.send(());
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        let _ = lines.send(head.lines().next().unwrap_or_default().to_string());
        let body = br#"{"ok":true}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err()
            || stream.write_all(body).await.is_err()
        {
            return;
        }
        if let AfterAnswer::Close = after {
            return;
        }
    }
}

fn drain(rx: &mut mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let mut v = Vec::new();
    while let Ok(l) = rx.try_recv() {
        v.push(l);
    }
    v
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection_in_origin_form() {
    let mut up = raw_upstream(AfterAnswer::KeepAlive).await;
    let sc = Sidecar::start(&up.url, "").await;
    for _ in 0..20 {
        let a = client::post_json(sc.addr, "/api/graphql?x=1", &client::query()).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let lines = drain(&mut up.lines);
    assert_eq!(lines.len(), 20);
    // HTTP/1.1 request lines carry the path, not the absolute URI.
    assert!(
        lines.iter().all(|l| l == "POST /api/graphql?x=1 HTTP/1.1"),
        "{lines:?}"
    );
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    sc.stop().await;
}

#[tokio::test]
async fn connections_the_upstream_closed_while_idle_are_replaced_without_errors() {
    let mut up = raw_upstream(AfterAnswer::Close).await;
    let sc = Sidecar::start(&up.url, "").await;
    for i in 0..10 {
        // Not idempotent (no retry once sent): a request written to the
        // closed socket would come back as an error, not a success.
        let a = client::post_json(sc.addr, "/api/graphql", &client::other_mutation()).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.text());
        assert_eq!(a.header("x-sidecar-attempts"), Some("1"));
        // Time for the sidecar to see the close, as it would between
        // real requests (a send racing the close is the inherent
        // keep-alive race, not what this test is about).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(drain(&mut up.lines).len(), 10, "each request sent once");
    assert_eq!(up.accepted.load(Ordering::SeqCst), 10);
    sc.stop().await;
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout_and_not_before() {
    // Long timeout: the connection stays open.
    let mut up = raw_upstream(AfterAnswer::KeepAlive).await;
    let sc = Sidecar::start(&up.url, "").await;
    let a = client::post_json(sc.addr, "/api/graphql", &client::query()).await;
    assert_eq!(a.status, 200);
    let early = tokio::time::timeout(Duration::from_millis(800), up.closed.recv()).await;
    assert!(
        early.is_err(),
        "closed before upstream.pool_idle_timeout (60 s)"
    );
    sc.stop().await;

    // Short timeout: the sidecar closes it on its own, with no traffic.
    let mut up = raw_upstream(AfterAnswer::KeepAlive).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::proxy::config(
        &up.url,
        &format!(
            "pool_idle_timeout = \"300ms\"\n[spool]\npath = \"{}\"\n",
            dir.path().join("spool.sqlite3").display()
        ),
    );
    let sc = Sidecar::start_in(cfg, dir).await;
    let a = client::post_json(sc.addr, "/api/graphql", &client::query()).await;
    assert_eq!(a.status, 200);
    let closed = tokio::time::timeout(Duration::from_secs(3), up.closed.recv()).await;
    assert!(
        closed.is_ok(),
        "idle connection still open 3 s after a 300 ms idle timeout"
    );
    // The next request opens a fresh connection and succeeds.
    let a = client::post_json(sc.addr, "/api/graphql", &client::query()).await;
    assert_eq!(a.status, 200);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    sc.stop().await;
}
