//! Real upstream servers and a gateway on real sockets, shared by the gateway's tests.

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Request, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use futures::StreamExt;
use keel_gateway::GatewayConfig;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// An upstream test server; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server (its port refuses connections afterwards).
    pub fn kill(&self) {
        self.stop.cancel();
    }
}

#[derive(Clone)]
struct St {
    name: String,
    hits: Arc<AtomicUsize>,
    flaky: Arc<Mutex<HashMap<String, usize>>>,
}

async fn echo(State(st): State<St>, req: Request) -> Json<Value> {
    st.hits.fetch_add(1, Ordering::Relaxed);
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                Value::String(v.to_str().unwrap_or_default().to_owned()),
            )
        })
        .collect();
    Json(json!({
        "upstream": st.name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "target": req.uri().to_string(),
        "headers": headers,
    }))
}

async fn status(State(st): State<St>, Path(code): Path<u16>) -> Response {
    st.hits.fetch_add(1, Ordering::Relaxed);
    let mut r = Json(json!({"upstream": st.name, "status": code})).into_response();
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

async fn slow(State(st): State<St>, Path(ms): Path<u64>) -> Json<Value> {
    st.hits.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Json(json!({"upstream": st.name, "slept": ms}))
}

/// Fails the first `n` calls for `key` with 503, then answers 200.
async fn flaky(State(st): State<St>, Path((key, n)): Path<(String, usize)>) -> Response {
    st.hits.fetch_add(1, Ordering::Relaxed);
    let mut m = st.flaky.lock().unwrap();
    let c = m.entry(key).or_default();
    *c += 1;
    if *c <= n {
        (StatusCode::SERVICE_UNAVAILABLE, format!("attempt {c}")).into_response()
    } else {
        Json(json!({"upstream": st.name, "attempts": *c})).into_response()
    }
}

/// Streams `n` bytes.
async fn bytes(Path(n): Path<usize>) -> Response {
    let chunk = Bytes::from(vec![b'k'; 64 * 1024]);
    let chunks = n / chunk.len();
    let rest = n % chunk.len();
    let mut parts: Vec<Result<Bytes, std::io::Error>> =
        (0..chunks).map(|_| Ok(chunk.clone())).collect();
    parts.push(Ok(Bytes::from(vec![b'k'; rest])));
    Body::from_stream(futures::stream::iter(parts)).into_response()
}

/// Counts the bytes of the request body as they stream in.
async fn count(headers: HeaderMap, body: Body) -> Json<Value> {
    let mut n = 0usize;
    let mut s = body.into_data_stream();
    while let Some(c) = s.next().await {
        match c {
            Ok(c) => n += c.len(),
            Err(e) => return Json(json!({"error": e.to_string(), "received": n})),
        }
    }
    Json(json!({"received": n, "chunked": headers.contains_key("transfer-encoding")}))
}

/// Starts an upstream named `name` on a free port.
pub async fn upstream(name: &str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let st = St {
        name: name.to_owned(),
        hits: hits.clone(),
        flaky: Arc::default(),
    };
    let app = Router::new()
        .route("/status/{code}", any(status))
        .route("/slow/{ms}", get(slow))
        .route("/flaky/{key}/{n}", any(flaky))
        .route("/bytes/{n}", get(bytes))
        .route("/count", post(count))
        .fallback(echo)
        .with_state(st);
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    Upstream {
        addr,
        name: name.to_owned(),
        hits,
        stop,
    }
}

/// A gateway serving a route file on a free port; stops when dropped.
pub struct Gw {
    pub addr: SocketAddr,
    pub file: PathBuf,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), keel_gateway::Error>>>,
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_file(&self.file);
    }
}

impl Gw {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops and waits for the drain.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

/// Writes `yaml` to a fresh file and serves it.
pub async fn gateway(yaml: &str) -> Gw {
    static N: AtomicUsize = AtomicUsize::new(0);
    let file = std::env::temp_dir().join(format!(
        "keel-gw-{}-{}.yaml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&file, yaml).unwrap();
    let config = GatewayConfig::load(&file, &[]).unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = keel_gateway::check(&config) {
        panic!("{e}");
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(keel_gateway::serve_on(
        listener,
        config,
        Vec::new(),
        stop.clone(),
    ));
    Gw {
        addr,
        file,
        stop,
        task: Some(task),
    }
}

/// A client that neither follows redirects nor pools across tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Asserts a problem+json answer with `status` and returns its document.
pub async fn problem(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    res.json().await.unwrap()
}
