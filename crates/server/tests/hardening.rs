//! The service as an unlucky or hostile user meets it, through the real accept loop
//! (`serve_on`) on port 0: https upstreams with a private CA, a hanging WBIA, slow and
//! stalling bodies, hop-by-hop headers, too many pass-through requests, half-open and idle
//! connections, a connection limit, and the optional bearer token. No model runs here.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{any, get};
use axum::Router;
use common::envelope;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;
use wbia_client::{ClientOptions, WbiaClient};
use wbia_lightglue_engine::{ConfigDir, Engine, EngineOptions};
use wbia_lightglue_server::{serve_on, AppState, ServerOptions};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "wbia-lg-hardening-{tag}-{}-{}",
        std::process::id(),
        Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Our service through `serve_on` (the accept loop `serve` uses), never shut down.
async fn ours(
    wbia_url: &str,
    client: ClientOptions,
    options: ServerOptions,
) -> (SocketAddr, Arc<AppState>) {
    let configs = temp_dir("config");
    std::fs::write(configs.join("config.json"), "{}").unwrap();
    let state = Arc::new(AppState::new(
        Engine::start(EngineOptions {
            weights_dir: Some(repo().join("weights")),
            ..EngineOptions::default()
        })
        .unwrap(),
        WbiaClient::new(wbia_url, client).unwrap(),
        ConfigDir::new(configs),
        options,
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = state.clone();
    tokio::spawn(async move {
        serve_on(serving, listener, std::future::pending())
            .await
            .unwrap()
    });
    (addr, state)
}

async fn spawn_plain(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A test CA, and a server certificate for `localhost` and 127.0.0.1 signed by it.
struct TestPki {
    ca_pem: String,
    server_cert: Vec<u8>,
    server_key: Vec<u8>,
}

fn test_pki() -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wbia-lightglue test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    TestPki {
        ca_pem: ca_cert.pem(),
        server_cert: server_cert.der().to_vec(),
        server_key: server_key.serialize_der(),
    }
}

/// Serves `app` over TLS with the test PKI's server certificate.
async fn spawn_tls(app: Router, pki: &TestPki) -> SocketAddr {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    spawn_tls_with(
        app,
        CertificateDer::from(pki.server_cert.clone()),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone())),
    )
    .await
}

/// Serves `app` over TLS with this certificate and key.
async fn spawn_tls_with(
    app: Router,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                // Clients that refuse our certificate end here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[derive(Default)]
struct Counters {
    callbacks: AtomicUsize,
}

/// https WBIA (API, pass-through) and an https job callback, trusted through a CA bundle
/// file (`ClientOptions::ca_file`, which `serve` fills from `SSL_CERT_FILE`); refused without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_wbia_and_callbacks_with_a_private_ca() {
    let pki = test_pki();
    let counters = Arc::new(Counters::default());
    let app = Router::new()
        .route(
            "/api/test/heartbeat/",
            get(|| async { envelope(json!(true)) }),
        )
        .route(
            "/api/image/json/",
            get(|| async { envelope(json!([1, 2, 3])) }),
        )
        .route(
            "/callback",
            any(|State(c): State<Arc<Counters>>| async move {
                c.callbacks.fetch_add(1, Ordering::SeqCst);
                "ok"
            }),
        )
        .with_state(counters.clone());
    let wbia = spawn_tls(app, &pki).await;
    let url = format!("https://localhost:{}", wbia.port());
    let dir = temp_dir("pki");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();

    // Without the CA: the certificate is refused, and the error says so.
    let untrusting = WbiaClient::new(&url, ClientOptions::default()).unwrap();
    assert!(!untrusting.heartbeat().await);
    let err = untrusting
        .job_callback(&format!("{url}/callback"), "POST", "j")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert_eq!(counters.callbacks.load(Ordering::SeqCst), 0);

    // With it: heartbeat, the pass-through and a callback all work.
    let client = ClientOptions {
        ca_file: Some(ca_file),
        initial_backoff: Duration::from_millis(10),
        ..ClientOptions::default()
    };
    let (addr, state) = ours(&url, client, ServerOptions::default()).await;
    assert!(state.wbia.heartbeat().await);
    let passed: Value = reqwest::get(format!("http://{addr}/api/image/json/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(passed["response"], json!([1, 2, 3]));
    state
        .wbia
        .job_callback(&format!("{url}/callback"), "POST", "j")
        .await
        .unwrap();
    assert_eq!(counters.callbacks.load(Ordering::SeqCst), 1);

    // A file without certificates is refused at start, not at the first request.
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate").unwrap();
    let refused = WbiaClient::new(
        &url,
        ClientOptions {
            ca_file: Some(empty),
            ..ClientOptions::default()
        },
    );
    assert!(refused.is_err());
}

/// A self-signed certificate made as operators make them, `openssl req -x509` (OpenSSL marks
/// it `CA:TRUE`), listed in the CA file (`SSL_CERT_FILE`), is trusted as itself, as curl and
/// Python trust it; it must still name the host. Unlisted, or listed but expired, it is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_certificate_listed_in_the_ca_file_is_trusted() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = temp_dir("self-signed");
    let (cert_pem, key_pem) = (dir.join("wbia.crt"), dir.join("wbia.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .arg("-keyout")
        .arg(&key_pem)
        .arg("-out")
        .arg(&cert_pem)
        .output()
        .expect("openssl, which makes the certificate the way operators do");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert_pem)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"),
        "the case under test is a CA:TRUE end-entity certificate"
    );
    let app = Router::new().route(
        "/api/test/heartbeat/",
        get(|| async { envelope(json!(true)) }),
    );
    let wbia = spawn_tls_with(
        app.clone(),
        CertificateDer::from_pem_file(&cert_pem).unwrap(),
        PrivateKeyDer::from_pem_file(&key_pem).unwrap(),
    )
    .await;
    let options = |ca_file: Option<PathBuf>| ClientOptions {
        ca_file,
        retries: 0,
        ..ClientOptions::default()
    };
    let url = format!("https://localhost:{}", wbia.port());
    let listed = WbiaClient::new(&url, options(Some(cert_pem.clone()))).unwrap();
    assert!(listed.heartbeat().await, "listed");
    let unlisted = WbiaClient::new(&url, options(None)).unwrap();
    assert!(!unlisted.heartbeat().await, "unlisted");
    // The same server under a name the certificate does not carry (its IP address).
    let renamed = WbiaClient::new(
        &format!("https://127.0.0.1:{}", wbia.port()),
        options(Some(cert_pem.clone())),
    )
    .unwrap();
    assert!(!renamed.heartbeat().await, "a name the certificate lacks");

    // Listed but expired (rcgen: OpenSSL 3.0's `req` cannot back-date).
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let expired = params.self_signed(&key).unwrap();
    let expired_pem = dir.join("expired.crt");
    std::fs::write(&expired_pem, expired.pem()).unwrap();
    let old = spawn_tls_with(
        app,
        expired.der().clone(),
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .await;
    let url = format!("https://localhost:{}", old.port());
    let client = WbiaClient::new(&url, options(Some(expired_pem))).unwrap();
    let err = client
        .job_callback(&format!("{url}/callback"), "POST", "j")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("expired"), "{err}");
}

/// `/health` answers from the background check while WBIA's heartbeat hangs; readiness
/// follows the models, never WBIA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_does_not_wait_for_a_hanging_wbia() {
    let app = Router::new().route(
        "/api/test/heartbeat/",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            envelope(json!(true))
        }),
    );
    let wbia = spawn_plain(app).await;
    let (addr, state) = ours(
        &format!("http://{wbia}"),
        ClientOptions::default(),
        ServerOptions::default(),
    )
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let health = |path: &'static str| {
        let client = client.clone();
        async move {
            let resp = client
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .expect("health answers although WBIA hangs");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = health("/health").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["wbia_reachable"], false);
    assert_eq!(body["worker_alive"], true);
    let (status, _) = health("/health/live").await;
    assert_eq!(status, 200);
    // Models loaded (as warm-up would say): ready, although WBIA is still unreachable.
    state.ready.store(true, Ordering::Release);
    let (status, body) = health("/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["wbia_reachable"], false);
}

/// Hop-by-hop headers (RFC 9110 §7.6.1, and those named in `Connection`) stop at this hop in
/// both directions; end-to-end ones pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_strips_hop_by_hop_headers_both_ways() {
    let app = Router::new().route(
        "/api/echo/",
        get(|headers: HeaderMap| async move {
            let seen: Vec<String> = headers.keys().map(|k| k.to_string()).collect();
            (
                [
                    ("x-kept", "1"),
                    ("proxy-authenticate", "Basic"),
                    ("x-private-hop", "1"),
                    ("connection", "x-private-hop"),
                ],
                envelope(json!(seen)),
            )
        }),
    );
    let wbia = spawn_plain(app).await;
    let (addr, _) = ours(
        &format!("http://{wbia}"),
        ClientOptions::default(),
        ServerOptions::default(),
    )
    .await;
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/api/echo/"))
        .header("x-end-to-end", "1")
        .header("te", "trailers")
        .header("trailer", "x-t")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("connection", "x-per-hop")
        .header("x-per-hop", "1")
        .header("upgrade", "websocket")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-kept"], "1");
    assert!(resp.headers().get("proxy-authenticate").is_none());
    assert!(resp.headers().get("x-private-hop").is_none());
    let seen: Value = resp.json().await.unwrap();
    let seen: Vec<&str> = seen["response"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(seen.contains(&"x-end-to-end"), "{seen:?}");
    for hop in [
        "te",
        "trailer",
        "proxy-authorization",
        "x-per-hop",
        "upgrade",
    ] {
        assert!(!seen.contains(&hop), "{hop} reached WBIA: {seen:?}");
    }
}

/// Bodies stream: a download slower than the client's total timeout arrives whole as long as
/// it keeps moving; one that stalls is cut off and the cut is visible to the client (never a
/// complete-looking 200); an upload larger than any buffer arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_streams_with_idle_timeouts() {
    const PIECES: usize = 6;
    let app = Router::new()
        .route(
            "/api/slow/",
            get(|| async {
                let stream = futures::stream::unfold(0usize, |i| async move {
                    if i == PIECES {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    Some((Ok::<_, std::io::Error>(vec![b'x'; 1000]), i + 1))
                });
                (
                    [("content-length", (PIECES * 1000).to_string())],
                    Body::from_stream(stream),
                )
            }),
        )
        .route(
            "/api/stall/",
            get(|| async {
                let stream = futures::stream::unfold(0usize, |i| async move {
                    if i == 1 {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    Some((Ok::<_, std::io::Error>(vec![b'y'; 1000]), i + 1))
                });
                ([("content-length", "10000")], Body::from_stream(stream))
            }),
        )
        .route(
            "/api/upload/",
            axum::routing::post(|body: Body| async move { envelope(json!(drain(body).await)) }),
        )
        .route(
            "/api/silent/",
            axum::routing::post(|body: Body| async move {
                drain(body).await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                envelope(json!(null))
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::disable());
    let wbia = spawn_plain(app).await;
    let client_options = ClientOptions {
        // A total timeout shorter than the slow download (2.4 s): it must not apply.
        timeout: Duration::from_secs(1),
        forward_idle_timeout: Duration::from_secs(1),
        ..ClientOptions::default()
    };
    let (addr, _) = ours(
        &format!("http://{wbia}"),
        client_options,
        ServerOptions::default(),
    )
    .await;
    let client = reqwest::Client::new();
    let slow = client
        .get(format!("http://{addr}/api/slow/"))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    assert_eq!(slow.bytes().await.unwrap().len(), PIECES * 1000);

    let stalled = client
        .get(format!("http://{addr}/api/stall/"))
        .send()
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(30), stalled.bytes())
        .await
        .expect("a stalled upstream is cut off by the idle timeout");
    assert!(body.is_err(), "a cut-off body must not look complete");

    // 300 MB, more than the 256 MiB the pass-through used to buffer whole.
    let size = 300usize << 20;
    let upload = futures::stream::iter(
        (0..size / (1 << 20))
            .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 1 << 20]))),
    );
    let sent: Value = client
        .post(format!("http://{addr}/api/upload/"))
        .header("content-length", size.to_string())
        .body(reqwest::Body::wrap_stream(upload))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sent["response"], json!(size));

    // An upload slower than the idle timeout in all (six pieces 400 ms apart, 2.4 s against
    // 1 s) keeps moving, so it goes through whole.
    let slow_upload = futures::stream::unfold(0usize, |i| async move {
        if i == PIECES {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![1u8; 1000])),
            i + 1,
        ))
    });
    let sent = client
        .post(format!("http://{addr}/api/upload/"))
        .header("content-length", (PIECES * 1000).to_string())
        .body(reqwest::Body::wrap_stream(slow_upload))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let sent: Value = sent.json().await.unwrap();
    assert_eq!(sent["response"], json!(PIECES * 1000));

    // Once the upload is in, a WBIA that answers nothing is cut off by the idle timeout: 504
    // in WBIA's envelope, well before the route's hour.
    let silent = tokio::time::timeout(
        Duration::from_secs(30),
        client
            .post(format!("http://{addr}/api/silent/"))
            .body(vec![2u8; 5000])
            .send(),
    )
    .await
    .expect("a silent upstream is cut off by the idle timeout")
    .unwrap();
    assert_eq!(silent.status(), 504);
    let answer: Value = silent.json().await.unwrap();
    assert_eq!(answer["status"]["code"], json!(504), "{answer}");
}

/// Reads a request body to its end, returning its length.
async fn drain(body: Body) -> usize {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut n = 0usize;
    while let Some(chunk) = stream.next().await {
        n += chunk.unwrap().len();
    }
    n
}

/// Beyond `max_proxied` requests in flight, pass-through answers 503 with Retry-After at
/// once, and serves again when a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_is_bounded() {
    let arrived = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Notify::new());
    let app =
        Router::new()
            .route(
                "/api/hold/",
                get(
                    |State((arrived, release)): State<(
                        Arc<AtomicUsize>,
                        Arc<tokio::sync::Notify>,
                    )>| async move {
                        arrived.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        envelope(json!("held"))
                    },
                ),
            )
            .route("/api/quick/", get(|| async { envelope(json!("quick")) }))
            .with_state((arrived.clone(), release.clone()));
    let wbia = spawn_plain(app).await;
    let (addr, _) = ours(
        &format!("http://{wbia}"),
        ClientOptions::default(),
        ServerOptions {
            max_proxied: 2,
            ..ServerOptions::default()
        },
    )
    .await;
    let client = reqwest::Client::new();
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(client.get(format!("http://{addr}/api/hold/")).send()))
        .collect();
    while arrived.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = client
        .get(format!("http://{addr}/api/quick/"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["status"]["success"], false);
    release.notify_waiters();
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status(), 200);
    }
    let again = client
        .get(format!("http://{addr}/api/quick/"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
}

/// Reads until the server closes the connection (or `limit` passes): what it sent.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|_| got)
}

/// Half-open connections (a request head never finished) and idle keep-alive ones are
/// closed after `header_read_timeout`; past `max_connections`, new connections wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_and_bounded() {
    let app = Router::new().route(
        "/api/test/heartbeat/",
        get(|| async { envelope(json!(true)) }),
    );
    let wbia = spawn_plain(app).await;
    let (addr, _) = ours(
        &format!("http://{wbia}"),
        ClientOptions::default(),
        ServerOptions {
            header_read_timeout: Duration::from_millis(500),
            max_connections: 3,
            ..ServerOptions::default()
        },
    )
    .await;
    // Half-open: part of a request line, then nothing.
    let mut half_open = TcpStream::connect(addr).await.unwrap();
    half_open.write_all(b"GET /health HT").await.unwrap();
    assert!(
        read_until_closed(&mut half_open, Duration::from_secs(10))
            .await
            .is_some(),
        "a half-open connection must be closed"
    );
    // Idle keep-alive: one request answered, then silence.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = read_until_closed(&mut idle, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive connection must be closed");
    assert!(answered.starts_with(b"HTTP/1.1 200"));

    // Three silent connections fill the limit; a fourth is not served until one closes.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    fourth
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    let early = tokio::time::timeout(Duration::from_millis(200), fourth.read(&mut first)).await;
    assert!(early.is_err(), "served beyond max_connections");
    // The silent ones time out (header_read_timeout), freeing room: now it is served.
    let answer = read_until_closed(&mut fourth, Duration::from_secs(10))
        .await
        .expect("served once the others were closed");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}

/// With `api_token` set, our endpoints want the bearer token; probes and the pass-through
/// to WBIA do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_guards_our_endpoints_only() {
    let app = Router::new().route(
        "/api/image/json/",
        get(|| async { envelope(json!(["from-wbia"])) }),
    );
    let wbia = spawn_plain(app).await;
    let (addr, _) = ours(
        &format!("http://{wbia}"),
        ClientOptions::default(),
        ServerOptions {
            api_token: Some("s3cret-token".into()),
            ..ServerOptions::default()
        },
    )
    .await;
    let client = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut request = client.get(format!("http://{addr}{path}"));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send()
    };
    for path in ["/api/engine/job/", "/info", "/metrics"] {
        let refused = get(path, None).await.unwrap();
        assert_eq!(refused.status(), 401, "{path}");
        assert_eq!(refused.headers()["www-authenticate"], "Bearer");
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["status"]["code"], 401);
        assert_eq!(get(path, Some("wrong")).await.unwrap().status(), 401);
        assert_eq!(
            get(path, Some("s3cret-token")).await.unwrap().status(),
            200,
            "{path}"
        );
    }
    assert_eq!(get("/health/live", None).await.unwrap().status(), 200);
    let passed = get("/api/image/json/", None).await.unwrap();
    assert_eq!(passed.status(), StatusCode::OK);
    let passed: Value = passed.json().await.unwrap();
    assert_eq!(passed["response"], json!(["from-wbia"]));
    let text = get("/metrics", Some("s3cret-token"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("wbia_lightglue_unauthorized_total 6"),
        "{text}"
    );
}
