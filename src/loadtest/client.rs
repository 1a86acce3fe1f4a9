//! The load generator's HTTP client: one keep-alive HTTP/1.1 connection per virtual user, driven
//! through hyper's connection API, the way wrk and oha hold theirs.
//!
//! Written on hyper rather than using the reqwest client goose builds for each user: at 1,000 requests/s,
//! with nothing short of CPU, that client read ~50 µs (a third) above oha's p50 on the same route
//! (BENCHMARKS.md). That is its own work on every request (a cookie jar, a timer, a pool checkout and
//! a task spawned per response to hand the connection back to the pool), and a load generator's own
//! cost is added to everything it measures.
//!
//! A request is sent once. It goes out again, on a new connection, only when the old connection closed
//! before taking it (hyper hands it back unsent): a server draining for shutdown answers with
//! `Connection: close`, and the next request must not count as a failure because of it. The same rule
//! as hyper-util's pooled client, which reqwest uses.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::ServiceExt;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not a target this client can reach: an http:// or https:// URL with a host")]
    Target(String),
    #[error("the credential cannot be sent in an HTTP header")]
    Credential,
    #[error("cannot load the system's trusted certificates: {0}")]
    Roots(std::io::Error),
    #[error("cannot connect: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot build the request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// Where every user's requests go, and what each request carries besides its own path and body.
#[derive(Clone)]
pub struct Target {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority`, what a connection is made to.
    origin: Uri,
    host: HeaderValue,
    /// The target URL's path, without its trailing slash ("" at the root); every request path is
    /// appended to it.
    prefix: String,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

static USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("kybctl-loadtest/", env!("CARGO_PKG_VERSION")));
static JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Target {
    /// `url`: `http://host:port[/prefix]` or `https://…`. `credential` is sent as
    /// `Authorization: Bearer …`. `timeout` bounds each request from connecting to its last body byte.
    pub fn new(
        url: &str,
        credential: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let refused = || ClientError::Target(url.to_owned());
        let parsed: Uri = url.parse().map_err(|_| refused())?;
        let scheme = parsed.scheme_str().ok_or_else(refused)?;
        if !matches!(scheme, "http" | "https") || parsed.query().is_some() {
            return Err(refused());
        }
        let authority = parsed.authority().ok_or_else(refused)?.clone();
        if authority.host().is_empty() || authority.as_str().contains('@') {
            return Err(refused());
        }
        let origin = Uri::builder()
            .scheme(scheme)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|_| refused())?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| refused())?;
        let authorization = credential
            .map(|c| {
                let mut v = HeaderValue::from_str(&format!("Bearer {c}"))
                    .map_err(|_| ClientError::Credential)?;
                v.set_sensitive(true);
                Ok::<_, ClientError>(v)
            })
            .transpose()?;
        crate::tls::ensure_crypto_provider();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(timeout));
        let tls = hyper_rustls::HttpsConnectorBuilder::new();
        let tls = if scheme == "https" {
            tls.with_native_roots().map_err(ClientError::Roots)?
        } else {
            // An http target never negotiates TLS, so no trusted roots are loaded: a minimal image
            // (the analysis Job's) may have none.
            tls.with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        };
        let connector = tls.https_or_http().enable_http1().wrap_connector(tcp);
        Ok(Target {
            connector,
            origin,
            host,
            prefix: parsed.path().trim_end_matches('/').to_owned(),
            authorization,
            timeout,
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        json: Option<Bytes>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let uri = if self.prefix.is_empty() {
            Uri::try_from(path)
        } else {
            Uri::try_from(format!("{}{path}", self.prefix))
        }
        .map_err(hyper::http::Error::from)?;
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, self.host.clone())
            .header(header::USER_AGENT, USER_AGENT.clone());
        // No Accept-Encoding, as wrk and oha send none: compression would dominate the small bodies.
        if let Some(a) = &self.authorization {
            b = b.header(header::AUTHORIZATION, a.clone());
        }
        if json.is_some() {
            b = b.header(header::CONTENT_TYPE, JSON.clone());
        }
        Ok(b.body(Full::new(json.unwrap_or_default()))?)
    }
}

/// One user's connection: made on first use, and again whenever the last one closed or failed.
pub struct Connection {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Clone for Connection {
    /// Another user's connection to the same target, not connected yet (goose's session data must be
    /// `Clone`; a hyper connection cannot be shared).
    fn clone(&self) -> Self {
        Connection::new(self.target.clone())
    }
}

impl Connection {
    pub fn new(target: Target) -> Self {
        Connection {
            target,
            sender: None,
        }
    }

    /// Sends one request (`json`: a JSON body) and reads the whole answer, within the target's timeout.
    /// After any error the connection is dropped, so a late answer can never be read as the next one's.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        json: Option<Bytes>,
    ) -> Result<Response<Bytes>, ClientError> {
        let limit = self.target.timeout;
        let outcome = match tokio::time::timeout(limit, self.exchange(method, path, json)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(ClientError::Timeout(limit)),
        };
        if outcome.is_err() {
            self.sender = None;
        }
        outcome
    }

    async fn exchange(
        &mut self,
        method: Method,
        path: &str,
        json: Option<Bytes>,
    ) -> Result<Response<Bytes>, ClientError> {
        let mut request = self.target.request(method, path, json)?;
        let mut fresh = false;
        loop {
            if !self.ready().await {
                self.sender = Some(self.connect().await?);
                fresh = true;
            }
            let sender = self.sender.as_mut().expect("connected above");
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = body.collect().await?.to_bytes();
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => {
                    self.sender = None;
                    match e.take_message() {
                        // Never written: the connection closed first. Once more on a new one; a new
                        // connection that refuses it too is a failure.
                        Some(unsent) if !fresh => request = unsent,
                        _ => return Err(e.into_error().into()),
                    }
                }
            }
        }
    }

    /// Whether the current connection can take a request now (it waits while the connection finishes
    /// the previous exchange; false once it has closed).
    async fn ready(&mut self) -> bool {
        match &mut self.sender {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let io = self
            .target
            .connector
            .clone()
            .oneshot(self.target.origin.clone())
            .await
            .map_err(ClientError::Connect)?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        // The connection's own task; how it ended shows on the sender (the next request's error).
        tokio::spawn(async move {
            let _ = connection.await;
        });
        sender.ready().await?;
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    fn target(url: &str) -> Result<Target, ClientError> {
        Target::new(url, Some("k3y"), Duration::from_secs(5))
    }

    #[test]
    fn targets_are_http_or_https_urls_with_a_host() {
        let t = target("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.origin, "http://127.0.0.1:8080/");
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.prefix, "");
        let t = target("https://kyb.example.com/api/").unwrap();
        assert_eq!(t.host, "kyb.example.com");
        assert_eq!(t.prefix, "/api");
        let r = t.request(Method::GET, "/health", None).unwrap();
        assert_eq!(r.uri(), "/api/health");
        assert_eq!(r.headers()[header::AUTHORIZATION], "Bearer k3y");
        assert!(r.headers()[header::AUTHORIZATION].is_sensitive());
        assert!(r.headers().get(header::ACCEPT_ENCODING).is_none());
        for bad in [
            "127.0.0.1:8080",
            "ftp://host/",
            "http://",
            "http://user@host/",
            "http://host/?q=1",
            "not a url",
        ] {
            assert!(
                matches!(target(bad), Err(ClientError::Target(_))),
                "{bad} accepted"
            );
        }
        assert!(matches!(
            Target::new("http://h", Some("a\nb"), Duration::from_secs(1)),
            Err(ClientError::Credential)
        ));
    }

    /// A server that answers every request with `Connection: close` (as the service does while it
    /// drains) and counts the connections it accepted.
    async fn closing_server() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = s.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        (url, accepted)
    }

    #[tokio::test]
    async fn a_closed_connection_is_replaced_without_failing_a_request() {
        let (url, accepted) = closing_server().await;
        let mut c = Connection::new(target(&url).unwrap());
        for _ in 0..20 {
            let r = c.send(Method::GET, "/health", None).await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.body().as_ref(), b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn keep_alive_reuses_one_connection_and_bodies_go_out_as_json() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut all = Vec::new();
            let mut buf = vec![0; 4096];
            for _ in 0..3 {
                let mut seen = Vec::new();
                while !(seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.ends_with(b"}")) {
                    let n = s.read(&mut buf).await.unwrap();
                    seen.extend_from_slice(&buf[..n]);
                }
                all.extend_from_slice(&seen);
                s.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .unwrap();
            }
            String::from_utf8(all).unwrap()
        });
        let mut c = Connection::new(target(&url).unwrap());
        for _ in 0..3 {
            let r = c
                .send(
                    Method::POST,
                    "/v1/merchants",
                    Some(Bytes::from_static(b"{}")),
                )
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
        let seen = server.await.unwrap().to_ascii_lowercase();
        assert_eq!(seen.matches("post /v1/merchants http/1.1").count(), 3);
        assert_eq!(seen.matches("content-type: application/json").count(), 3);
        assert_eq!(seen.matches("authorization: bearer k3y").count(), 3);
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_a_refusing_one_fails_to_connect() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let mut c = Connection::new(Target::new(&url, None, Duration::from_millis(300)).unwrap());
        let started = std::time::Instant::now();
        let e = c.send(Method::GET, "/health", None).await.unwrap_err();
        assert!(matches!(e, ClientError::Timeout(_)), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(c.sender.is_none(), "a timed-out connection is dropped");
        held.abort();

        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut c = Connection::new(target(&format!("http://127.0.0.1:{port}")).unwrap());
        let e = c.send(Method::GET, "/health", None).await.unwrap_err();
        assert!(matches!(e, ClientError::Connect(_)), "{e}");
    }
}
