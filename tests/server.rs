//! Server behaviour: graceful shutdown drains in-flight requests; idle and header-read timeouts close
//! connections, each in its own part of a connection's life (waiting for a request, reading its head);
//! the read timeout also answers a request whose body stops coming.

mod common;

use std::time::{Duration, Instant};

use common::{business, config, migrated_db, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A registry that answers after a delay makes a request that is reliably in flight.
async fn slow_registry(delay: Duration) -> String {
    let app = axum::Router::new().route(
        "/v1/businesses/lookup",
        axum::routing::get(move || async move {
            tokio::time::sleep(delay).await;
            axum::Json(serde_json::json!({"naics_code": "311811"}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/")
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let mut cfg = config(&migrated_db().await, None);
    cfg.registry.base_url = Some(
        slow_registry(Duration::from_millis(800))
            .await
            .parse()
            .unwrap(),
    );
    cfg.registry.timeout = Duration::from_secs(5);
    let mut s = Service::start(cfg).await;
    let http = s.http.clone();
    let url = s.url("/v1/classifications");
    let in_flight = tokio::spawn(async move {
        http.post(url)
            .json(&business("Slow Bakery", "bakery"))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let handle = s.take_handle();
    s.shutdown_token().cancel();
    let r = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["method"],
        "registry"
    );
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("server stops after draining")
        .unwrap();
    // New connections are refused once stopped.
    assert!(reqwest::get(s.url("/health")).await.is_err());
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let mut cfg = config(&migrated_db().await, None);
    cfg.server.idle_timeout = Duration::from_millis(400);
    cfg.server.read_timeout = Duration::from_millis(400);
    let s = Service::start(cfg).await;
    let addr = s.base.trim_start_matches("http://").to_owned();

    // Keep-alive connection that goes quiet after one request.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap();
    assert_eq!(n, 0, "server closes the idle connection");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "closed too early: {:?}",
        t.elapsed()
    );

    // A client that never finishes its headers.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nhost:").await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(r, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).contains("408"));
}

#[tokio::test]
async fn a_keep_alive_client_learns_of_the_shutdown_from_a_response_not_a_reset() {
    let mut s = Service::start(config(&migrated_db().await, None)).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let get = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    c.write_all(get).await.unwrap();
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // Shutdown starts while the connection is idle; the client's next request, sent 300 ms later
    // (a client busy elsewhere), is still answered, and the answer says the connection ends.
    let handle = s.take_handle();
    s.shutdown_token().cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.write_all(get).await.unwrap();
    let n = c.read(&mut buf).await.unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("closed after the answer")
        .unwrap_or(0);
    assert_eq!(n, 0);
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the server stops")
        .unwrap();
}

/// The header-read timeout (the plan's read timeout) on its own, with an idle timeout far longer: a
/// client that keeps sending a header a byte at a time, so the connection is never quiet, is cut
/// off once its head is late; one that finishes its head in time is answered.
#[tokio::test]
async fn a_head_sent_too_slowly_is_cut_off_though_bytes_keep_coming() {
    let mut cfg = config(&migrated_db().await, None);
    cfg.server.idle_timeout = Duration::from_secs(30);
    cfg.server.read_timeout = Duration::from_millis(600);
    let s = Service::start(cfg).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut buf = vec![0u8; 4096];

    // In time: the head in two parts, 200 ms apart.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.write_all(b"host: x\r\n\r\n").await.unwrap();
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // Too slow: a byte every 100 ms, never the end of the head.
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let t = Instant::now();
    c.write_all(b"GET /health HTTP/1.1\r\nx-slow: ")
        .await
        .unwrap();
    let cut_off = loop {
        tokio::select! {
            r = c.read(&mut buf) => break r,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if c.write_all(b"a").await.is_err() {
                    break Ok(0);
                }
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the slow head was never cut off"
        );
    };
    let elapsed = t.elapsed();
    assert!(
        matches!(cut_off, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).contains("408"),
        "{cut_off:?}"
    );
    // Within a connection tick (250 ms) of the deadline, and not before it.
    assert!(
        elapsed >= Duration::from_millis(550) && elapsed < Duration::from_millis(2_000),
        "cut off after {elapsed:?}"
    );
}

/// A body that stops coming is answered once the read timeout passes between its frames, well before
/// the write timeout, on the routes that read one however they read it (a JSON document, an import's
/// raw lines).
#[tokio::test]
async fn a_body_that_stops_coming_is_answered_at_the_read_timeout() {
    let mut cfg = config(&migrated_db().await, None);
    cfg.server.read_timeout = Duration::from_millis(600);
    cfg.server.write_timeout = Duration::from_secs(20);
    let s = Service::start(cfg).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    for (path, media_type) in [
        ("/v1/classifications", "application/json"),
        ("/v1/merchants", "application/json"),
        ("/v1/merchants:import", "application/x-ndjson"),
    ] {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let t = Instant::now();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {media_type}\r\ncontent-length: 100\r\n\r\n{{\"name\""
        );
        c.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer in 10 s"))
            .unwrap();
        let elapsed = t.elapsed();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 4"), "{path}: {answer}");
        assert!(
            elapsed >= Duration::from_millis(550) && elapsed < Duration::from_secs(5),
            "{path}: answered after {elapsed:?}"
        );
    }
}

/// A keep-alive connection waiting for its next request is governed by the idle timeout, not the
/// header-read timeout: still usable after the read timeout has passed, closed once idle for the
/// idle timeout. (hyper's own header timer closed it at the read timeout.)
#[tokio::test]
async fn a_keep_alive_connection_outlives_the_read_timeout_until_the_idle_timeout() {
    let mut cfg = config(&migrated_db().await, None);
    cfg.server.read_timeout = Duration::from_millis(300);
    cfg.server.idle_timeout = Duration::from_millis(1_500);
    let s = Service::start(cfg).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let get = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(get).await.unwrap();
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // Idle for more than twice the read timeout, then a second request on the same connection.
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.write_all(get).await.unwrap();
    let n = c.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "the idle connection was closed at the read timeout"
    );

    let t = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "server closes the idle connection");
    let elapsed = t.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1_400) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}, idle timeout 1.5 s"
    );
}

/// One HTTP/2 connection (prior knowledge, as a mesh sidecar or gRPC-style client speaks it) carries
/// many requests at once: each is answered, under its own request id, and counted in `/metrics`.
/// The server calls the stack of each connection in place (`http_server::ConnectionService`), so
/// this is the case where calls on one connection overlap.
#[tokio::test]
async fn concurrent_http2_streams_on_one_connection_are_each_answered_and_counted() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let s = Service::start(config(&migrated_db().await, None)).await;
    let scrape_health_count = || async {
        s.metrics()
            .await
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    r#"kyb_http_requests_total{method="GET",route="/health",status="200"} "#,
                )
            })
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let before = scrape_health_count().await;

    let addr = s.base.trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("an HTTP/2 connection by prior knowledge");
    tokio::spawn(conn);
    const STREAMS: usize = 64;
    let responses = futures::future::join_all((0..STREAMS).map(|_| {
        let mut sender = sender.clone();
        let uri = format!("{}/health", s.base);
        async move {
            let req = hyper::Request::get(uri)
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.expect("a response");
            let status = resp.status();
            let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, id, body)
        }
    }))
    .await;
    let mut ids = std::collections::HashSet::new();
    for (status, id, body) in &responses {
        assert_eq!(*status, hyper::StatusCode::OK);
        assert_eq!(&body[..], br#"{"status":"ok"}"#);
        assert!(ids.insert(id.clone()), "request id {id} given twice");
    }
    assert_eq!(scrape_health_count().await - before, STREAMS as u64);
}
