//! Drives a chassis service through its real HTTP interface on a free port.

use std::{net::SocketAddr, time::Duration};

use keel_chassis::{
    CheckKind, ComponentHealth, KeelConfig, NoAppConfig, Problem, Service, ShutdownHandle,
    axum::{
        Json, Router,
        extract::{Path, Query},
        routing::{get, post},
    },
};
use serde_json::Value;

struct Running {
    addr: SocketAddr,
    handle: ShutdownHandle,
    task: tokio::task::JoinHandle<Result<(), keel_chassis::Error>>,
    client: reqwest::Client,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }
}

#[derive(serde::Deserialize)]
struct Slow {
    ms: u64,
}

fn app() -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/echo", post(|Json(v): Json<Value>| async move { Json(v) }))
        .route(
            "/items/{id}",
            get(|Path(id): Path<u32>| async move {
                if id == 1 {
                    Ok(Json(serde_json::json!({"id": 1})))
                } else {
                    Err(Problem::not_found(format!("no item {id}")))
                }
            }),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("boom");
                }
                "unreachable"
            }),
        )
        .route(
            "/slow",
            get(|Query(s): Query<Slow>| async move {
                tokio::time::sleep(Duration::from_millis(s.ms)).await;
                "done"
            }),
        )
}

async fn start(tune: impl FnOnce(&mut KeelConfig<NoAppConfig>)) -> Running {
    let mut config = KeelConfig::<NoAppConfig>::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.body_limit_bytes = 1024;
    config.server.request_timeout_ms = 2_000;
    tune(&mut config);
    let service = Service::from_config("test", config).handle_signals(false);
    service
        .health()
        .register("always", CheckKind::Readiness, || async {
            ComponentHealth::up()
        });
    let bound = service.bind().await.unwrap();
    let addr = bound.local_addr().unwrap();
    let handle = bound.shutdown_handle();
    let task = tokio::spawn(bound.serve(app()));
    let client = reqwest::Client::new();
    // The server is accepting once bind() returned; readiness flips as serve starts.
    for _ in 0..100 {
        if let Ok(r) = client
            .get(format!("http://{addr}/health/ready"))
            .send()
            .await
            && r.status() == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Running {
        addr,
        handle,
        task,
        client,
    }
}

async fn problem(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status(), status);
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "status {status}"
    );
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["status"], status);
    assert!(v["title"].is_string());
    v
}

#[tokio::test]
async fn health_endpoints_have_the_actuator_shape() {
    let s = start(|_| {}).await;
    let res = s.get("/health").await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["status"], "UP");
    assert_eq!(v["components"]["always"]["status"], "UP");
    assert_eq!(v["components"]["lifecycle"]["details"]["phase"], "ready");

    let v: Value = s.get("/health/live").await.json().await.unwrap();
    assert_eq!(v["status"], "UP");
    let res = s.get("/health/ready").await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn metrics_expose_red_metrics_per_route_template_and_process_metrics() {
    let s = start(|_| {}).await;
    assert_eq!(s.get("/items/1").await.status(), 200);
    assert_eq!(s.get("/items/2").await.status(), 404);
    let big = s
        .client
        .post(s.url("/echo"))
        .header("content-type", "application/json")
        .body(vec![b' '; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let odd = s
        .client
        .request(http::Method::from_bytes(b"BREW").unwrap(), s.url("/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(odd.status(), 405);
    let res = s.get("/metrics").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = res.text().await.unwrap();
    let has = |needle: &str| text.lines().any(|l| l.contains(needle));
    assert!(
        has(r#"keel_http_server_requests_total{method="GET",route="/items/{id}",status="200"}"#),
        "{text}"
    );
    assert!(has(r#"route="/items/{id}",status="404""#), "{text}");
    assert!(
        has("keel_http_server_request_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(has("process_resident_memory_bytes "), "{text}");
    assert!(
        !text.contains("/items/1\""),
        "raw paths must not become labels"
    );
}

#[tokio::test]
async fn malformed_json_is_a_400_problem() {
    let s = start(|_| {}).await;
    let res = s
        .client
        .post(s.url("/echo"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let v = problem(res, 400).await;
    assert_eq!(v["instance"], "/echo");
    assert!(v["detail"].as_str().unwrap().contains("JSON"), "{v}");
    assert!(v["traceId"].as_str().unwrap().len() == 32);

    let res = s
        .client
        .post(s.url("/echo"))
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(res, 415).await;
}

#[tokio::test]
async fn unknown_route_and_wrong_method_are_problems() {
    let s = start(|_| {}).await;
    let v = problem(s.get("/nope").await, 404).await;
    assert_eq!(v["detail"], "no route for GET /nope");
    let res = s.client.delete(s.url("/ok")).send().await.unwrap();
    assert!(res.headers().contains_key("allow"));
    problem(res, 405).await;
    // A path parameter of the wrong type.
    problem(s.get("/items/abc").await, 400).await;
}

#[tokio::test]
async fn oversized_body_is_a_413_problem() {
    let s = start(|_| {}).await;
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(4096));
    let res = s
        .client
        .post(s.url("/echo"))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    problem(res, 413).await;
    // Without a content-length (chunked), the limit still holds.
    let stream = futures_stream(big.into_bytes());
    let res = s
        .client
        .post(s.url("/echo"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    problem(res, 413).await;
}

fn futures_stream(
    bytes: Vec<u8>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    futures::stream::iter(
        bytes
            .chunks(512)
            .map(|c| Ok(c.to_vec()))
            .collect::<Vec<_>>(),
    )
}

#[tokio::test]
async fn handler_errors_and_panics_are_problems_and_the_server_survives() {
    let s = start(|_| {}).await;
    let v = problem(s.get("/items/7").await, 404).await;
    assert_eq!(v["detail"], "no item 7");
    assert_eq!(
        v["instance"], "/items/7",
        "handler problems get the request path"
    );
    assert_eq!(v["traceId"].as_str().unwrap().len(), 32);
    problem(s.get("/panic").await, 500).await;
    assert_eq!(s.get("/ok").await.status(), 200);
}

#[tokio::test]
async fn trace_context_and_request_id_are_propagated() {
    let s = start(|_| {}).await;
    let res = s
        .client
        .get(s.url("/ok"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("tracestate", "congo=t61rcWkgMzE")
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let tp = res.headers()["traceparent"].to_str().unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "same trace: {tp}"
    );
    assert!(
        !tp.contains("00f067aa0ba902b7"),
        "a new server span id: {tp}"
    );
    assert_eq!(res.headers()["tracestate"], "congo=t61rcWkgMzE");
    assert_eq!(res.headers()["x-request-id"], "req-123");

    // Without a caller context, a new trace is started and a request id generated.
    let res = s.get("/ok").await;
    assert_eq!(res.headers()["traceparent"].to_str().unwrap().len(), 55);
    assert!(!res.headers()["x-request-id"].is_empty());
}

#[tokio::test]
async fn request_timeout_and_incoming_deadline_give_503_problems() {
    // 2 s: a quick request is well inside it on a stalled machine too.
    let s = start(|c| c.server.request_timeout_ms = 2_000).await;
    let v = problem(s.get("/slow?ms=30000").await, 503).await;
    assert!(v["detail"].as_str().unwrap().contains("2000 ms"), "{v}");
    // The caller's remaining budget is shorter than ours: it wins.
    let res = s
        .client
        .get(s.url("/slow?ms=30000"))
        .header("keel-deadline-ms", "50")
        .send()
        .await
        .unwrap();
    let v = problem(res, 503).await;
    assert!(v["detail"].as_str().unwrap().contains("50 ms"), "{v}");
    assert_eq!(s.get("/slow?ms=10").await.status(), 200);
}

#[tokio::test]
async fn graceful_drain_finishes_in_flight_requests_while_not_ready() {
    let s = start(|c| {
        // Long enough that readiness is read inside it on a stalled machine; the request
        // outlasts it, so it is still in flight when the listener closes.
        c.server.drain_delay_ms = 3_000;
        c.server.shutdown_grace_ms = 5_000;
        c.server.request_timeout_ms = 10_000;
    })
    .await;
    let client = s.client.clone();
    let slow_url = s.url("/slow?ms=3600");
    let slow = tokio::spawn(async move { client.get(slow_url).send().await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    s.handle.shutdown();
    tokio::time::sleep(Duration::from_millis(150)).await;

    // Draining: still accepting during the drain delay, but not ready.
    let res = reqwest::Client::new()
        .get(s.url("/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["components"]["lifecycle"]["details"]["phase"], "draining");

    let res = slow.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "done");
    let out = tokio::time::timeout(Duration::from_secs(5), s.task)
        .await
        .expect("serve returns after draining")
        .unwrap();
    assert!(out.is_ok());
    // The listener is closed.
    assert!(
        reqwest::Client::new()
            .get(format!("http://{}/ok", s.addr))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn grace_period_bounds_the_drain() {
    let s = start(|c| {
        c.server.shutdown_grace_ms = 300;
        c.server.request_timeout_ms = 0;
    })
    .await;
    let client = s.client.clone();
    let url = s.url("/slow?ms=10000");
    let _stuck = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    s.handle.shutdown();
    let out = tokio::time::timeout(Duration::from_secs(5), s.task)
        .await
        .expect("serve returns once the grace period is over")
        .unwrap();
    assert!(out.is_ok());
    // The 300 ms grace, not the stuck request's 10 s (room left for a stall).
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = KeelConfig::<NoAppConfig>::default();
    config.server.listen = taken.local_addr().unwrap();
    let err = Service::from_config("test", config)
        .bind()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot listen on"), "{err}");
}
