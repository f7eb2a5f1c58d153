//! Transparent forwarding: what goes in comes out, to the one upstream only.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use support::client::{self, TestBody};
use support::{FakeUpstream, Reply, Sidecar};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn all_bytes() -> Bytes {
    Bytes::from((0..=255u8).cycle().take(70_000).collect::<Vec<_>>())
}

#[tokio::test]
async fn method_path_query_headers_and_binary_body_pass_byte_exact() {
    let up = FakeUpstream::start(|_, _| Reply::Echo).await;
    let sc = Sidecar::start(&up.url(), "").await;
    let body = all_bytes();
    let req = Request::patch("/api/v1/items/a%20b?x=1&y=%2F&y=2")
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header("content-type", "application/octet-stream")
        .header("x-api-key", "k-123")
        .body(TestBody::full(body.clone()))
        .unwrap();
    let a = client::send(sc.addr, req).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, body, "response body");
    let seen = &up.requests()[0];
    assert_eq!(seen.method, "PATCH");
    assert_eq!(
        seen.uri.path_and_query().unwrap().as_str(),
        "/api/v1/items/a%20b?x=1&y=%2F&y=2"
    );
    let multi: Vec<_> = seen.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"]);
    assert_eq!(seen.header("x-api-key"), Some("k-123"));
    assert_eq!(seen.body, body, "request body");
}

#[tokio::test]
async fn chunked_bodies_and_trailers_pass_both_ways() {
    let mut resp_trailers = HeaderMap::new();
    resp_trailers.insert("x-checksum", HeaderValue::from_static("down"));
    let rt = resp_trailers.clone();
    let up = FakeUpstream::start(move |_, _| Reply::Full {
        status: 201,
        headers: vec![
            ("x-resp".into(), "a".into()),
            ("x-resp".into(), "b".into()),
            ("trailer".into(), "x-checksum".into()),
        ],
        body: Bytes::from_static(b"\x00\x01binary\xff"),
        trailers: Some(rt.clone()),
    })
    .await;
    let sc = Sidecar::start(&up.url(), "").await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("up"));
    let chunks = vec![
        Bytes::from_static(b"first "),
        Bytes::from_static(b"second "),
        Bytes::from_static(b"third"),
    ];
    let req = Request::post("/api/upload/file")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .body(TestBody::chunks(chunks, Some(trailers)))
        .unwrap();
    let a = client::send(sc.addr, req).await;
    assert_eq!(a.status, 201);
    assert_eq!(&a.body[..], b"\x00\x01binary\xff");
    let resp: Vec<_> = a.headers.get_all("x-resp").iter().collect();
    assert_eq!(resp, ["a", "b"]);
    assert_eq!(
        a.trailers.as_ref().and_then(|t| t.get("x-checksum")),
        Some(&HeaderValue::from_static("down")),
        "response trailers"
    );
    let seen = &up.requests()[0];
    assert_eq!(&seen.body[..], b"first second third");
    assert_eq!(
        seen.trailers.as_ref().and_then(|t| t.get("x-checksum")),
        Some(&HeaderValue::from_static("up")),
        "request trailers"
    );
}

#[tokio::test]
async fn upstream_statuses_and_error_bodies_pass_untouched() {
    let up = FakeUpstream::start(|r, _| match r.uri.path() {
        "/missing" => Reply::json(404, serde_json::json!({"detail": "no such thing"}))
            .with_header("x-upstream", "1"),
        "/teapot" => Reply::text(418, "short and stout"),
        _ => Reply::text(500, "upstream exploded"),
    })
    .await;
    let sc = Sidecar::start(&up.url(), "").await;
    let a = client::get(sc.addr, "/missing").await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json(), serde_json::json!({"detail": "no such thing"}));
    assert_eq!(a.header("x-upstream"), Some("1"));
    let a = client::get(sc.addr, "/teapot").await;
    assert_eq!(
        (a.status.as_u16(), a.text().as_str()),
        (418, "short and stout")
    );
    let a = client::get(sc.addr, "/boom").await;
    assert_eq!(
        (a.status.as_u16(), a.text().as_str()),
        (500, "upstream exploded")
    );
    assert_eq!(up.hits(), 3, "500 is not retried by default");
}

#[tokio::test]
async fn hop_by_hop_dropped_host_rewritten_forwarded_headers_added() {
    let up = FakeUpstream::start(|_, _| {
        Reply::text(200, "ok")
            .with_header("keep-alive", "timeout=5")
            .with_header("x-kept", "yes")
    })
    .await;
    let sc = Sidecar::start(&up.url(), "").await;
    let req = Request::get("/h")
        .header("host", "app.example.com")
        .header("connection", "x-private-hop")
        .header("x-private-hop", "secret")
        .header("keep-alive", "timeout=1")
        .header("proxy-authorization", "Basic abc")
        .header("upgrade", "h2c")
        .body(TestBody::empty())
        .unwrap();
    let a = client::send(sc.addr, req).await;
    assert_eq!(a.status, 200);
    assert!(a.headers.get("keep-alive").is_none());
    assert_eq!(a.header("x-kept"), Some("yes"));
    let seen = &up.requests()[0];
    for h in [
        "connection",
        "x-private-hop",
        "keep-alive",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(seen.headers.get(h).is_none(), "{h} reached the upstream");
    }
    assert_eq!(seen.header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(seen.header("x-forwarded-host"), Some("app.example.com"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
}

#[tokio::test]
async fn request_id_is_taken_or_made_and_returned() {
    let up = FakeUpstream::start(|_, _| Reply::status(204)).await;
    let sc = Sidecar::start(&up.url(), "").await;
    let req = Request::get("/r")
        .header("x-request-id", "client-chosen-42")
        .body(TestBody::empty())
        .unwrap();
    let a = client::send(sc.addr, req).await;
    assert_eq!(a.header("x-request-id"), Some("client-chosen-42"));
    assert_eq!(
        up.requests()[0].header("x-request-id"),
        Some("client-chosen-42")
    );

    let a = client::get(sc.addr, "/r").await;
    let made = a.header("x-request-id").expect("generated id").to_string();
    assert_eq!(made.len(), 32);
    assert_eq!(up.requests()[1].header("x-request-id"), Some(made.as_str()));
    let b = client::get(sc.addr, "/r").await;
    assert_ne!(
        b.header("x-request-id"),
        Some(made.as_str()),
        "ids are unique"
    );
}

/// Write raw bytes, read the whole answer until the server closes or 2 s.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    // The answer comes after the client's FIN has arrived: the request is
    // delivered and answered, not cut off as an aborted exchange.
    let up =
        FakeUpstream::start(|_, _| Reply::text(200, "stored").delayed(Duration::from_millis(300)))
            .await;
    let sc = Sidecar::start(&up.url(), "").await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(b"POST /items HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the sidecar answered and closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\r\nstored\r\n"), "{answer}");
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn absolute_uri_and_foreign_host_still_go_to_the_upstream() {
    let up = FakeUpstream::start(|r, _| Reply::text(200, r.uri.path())).await;
    let sc = Sidecar::start(&up.url(), "").await;
    let answer = raw(
        sc.addr,
        b"GET http://169.254.169.254/latest/meta-data HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = raw(
        sc.addr,
        b"GET /steal HTTP/1.1\r\nHost: evil.example.net:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.requests();
    assert_eq!(seen.len(), 2, "both went to the configured upstream");
    assert_eq!(seen[0].uri.path(), "/latest/meta-data");
    assert_eq!(seen[0].header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(seen[1].header("host"), Some(up.addr.to_string().as_str()));

    let answer = raw(
        sc.addr,
        b"CONNECT evil.example.net:443 HTTP/1.1\r\nHost: evil.example.net:443\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("method_not_allowed"), "{answer}");
    assert_eq!(up.hits(), 2, "CONNECT never reached the upstream");
}

#[tokio::test]
async fn a_missing_repeated_or_malformed_host_is_refused_with_400_and_never_forwarded() {
    let up = FakeUpstream::start(|_, _| Reply::status(200)).await;
    let sc = Sidecar::start(&up.url(), "").await;
    for (req, why) in [
        (
            &b"GET /nohost HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
            "needs a Host",
        ),
        (
            b"GET /two HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
            "more than one",
        ),
        (
            b"GET /bad HTTP/1.1\r\nHost: a b/c\r\nConnection: close\r\n\r\n",
            "not a host",
        ),
        (
            b"POST /api/graphql HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            "needs a Host",
        ),
    ] {
        let answer = raw(sc.addr, req).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("application/problem+json"), "{answer}");
        assert!(answer.contains("\"code\":\"invalid_host\""), "{answer}");
        assert!(answer.contains(why), "{answer}");
    }
    // HTTP/1.0 may leave Host out; an empty Host is allowed too.
    let answer = raw(sc.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    let answer = raw(
        sc.addr,
        b"GET /empty HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let paths: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.uri.path().to_string())
        .collect();
    assert_eq!(
        paths,
        ["/old", "/empty"],
        "only the valid ones went upstream"
    );
}

#[tokio::test]
async fn body_over_the_limit_gets_a_structured_413() {
    let up = FakeUpstream::start(|_, _| Reply::Echo).await;
    let extra = format!(
        "[limits]\nmax_request_body = \"1MiB\"\nmax_graphql_body = \"64KiB\"\n{}",
        String::new()
    );
    let sc = Sidecar::start(&up.url(), &extra).await;
    // Declared too large: refused before anything is read or forwarded.
    let req = Request::post("/api/upload/file")
        .header("content-length", (2 * 1024 * 1024).to_string())
        .body(TestBody::full(vec![0u8; 2 * 1024 * 1024]))
        .unwrap();
    let a = client::send(sc.addr, req).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    let j = a.json();
    assert_eq!(j["code"], "request_too_large");
    assert_eq!(j["status"], 413);
    assert_eq!(j["retryable"], false);
    assert!(j["request_id"].as_str().is_some_and(|s| !s.is_empty()));

    // Chunked, discovered while streaming.
    let chunks = (0..40).map(|_| Bytes::from(vec![7u8; 64 * 1024])).collect();
    let req = Request::post("/stream")
        .body(TestBody::chunks(chunks, None))
        .unwrap();
    let a = client::send(sc.addr, req).await;
    assert_eq!(a.status, 413, "{}", a.text());
    assert_eq!(a.json()["code"], "request_too_large");

    // GraphQL bodies have their own (smaller) bound, answered as GraphQL.
    let big = support::client::add_step_with(vec![("s1".into(), "x".repeat(100_000))]);
    let a = client::post_json(sc.addr, "/api/graphql", &big).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(
        a.json()["errors"][0]["extensions"]["code"],
        "request_too_large"
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn large_header_block_is_refused() {
    let up = FakeUpstream::start(|_, _| Reply::status(200)).await;
    let sc = Sidecar::start(&up.url(), "").await;
    let mut req = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    req.extend_from_slice(format!("x-big: {}\r\n\r\n", "a".repeat(20 * 1024)).as_bytes());
    let answer = raw(sc.addr, &req).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn slow_header_client_is_cut_off() {
    let up = FakeUpstream::start(|_, _| Reply::status(200)).await;
    let sc = Sidecar::start(&up.url(), "[listen]\nheader_read_timeout = \"1s\"\n").await;
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let head = b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Drip: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed = false;
    for b in head.iter() {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        // A closed socket shows up as a read of 0 bytes.
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(250), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {
                closed = true; // an error answer counts as being cut off
                break;
            }
            Err(_) => {}
        }
    }
    let elapsed = started.elapsed();
    assert!(closed, "the connection stayed open while headers dripped");
    assert!(
        elapsed < Duration::from_secs(4),
        "cut off after {elapsed:?}"
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn connection_limit_queues_extra_clients() {
    let up =
        FakeUpstream::start(|_, _| Reply::status(200).delayed(Duration::from_millis(300))).await;
    let sc = Sidecar::start(&up.url(), "[listen]\nmax_connections = 1\n").await;
    let started = tokio::time::Instant::now();
    let a = tokio::spawn(client::get(sc.addr, "/a"));
    let b = tokio::spawn(async move {
        // A separate connection: waits until the first one closes.
        let mut s = TcpStream::connect(sc.addr).await.unwrap();
        s.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    });
    assert_eq!(a.await.unwrap().status, 200);
    let b = b.await.unwrap();
    assert!(b.starts_with("HTTP/1.1 200"), "{b}");
    // The second request could not start until the first connection ended.
    assert!(started.elapsed() >= Duration::from_millis(550));
}

#[tokio::test]
async fn cleartext_http2_is_accepted_when_enabled() {
    let up = FakeUpstream::start(|r, _| Reply::text(200, &format!("{:?}", r.version))).await;
    let sc = Sidecar::start(&up.url(), "[listen]\nhttp2 = true\n").await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    let resp = h2
        .request(
            Request::get(format!("http://{}/h2", sc.addr))
                .body(TestBody::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-request-id").is_some());
    // The upstream leg is plain HTTP/1.1, whatever the client spoke.
    assert_eq!(up.requests()[0].version, http::Version::HTTP_11);
    // HTTP/1.1 still works on the same port.
    assert_eq!(client::get(sc.addr, "/h1").await.status, 200);
}
