//! The standard HTTP stack every chassis service serves behind, and its built-in routes.
//!
//! Layer order, outermost first (see [`apply_stack`]):
//!
//! 1. **observe** — request id (`x-request-id`, taken or generated), W3C trace context
//!    (server span, `traceparent` on the response), access log, RED metrics per route
//!    template (`keel_http_server_requests_total`, `keel_http_server_request_duration_seconds`).
//! 2. **catch panic** — a panicking handler becomes a 500 problem+json; the process lives on.
//! 3. **problem** — any error response that is not already JSON (axum rejections, 404, 405,
//!    413, …) is rewritten as `application/problem+json` with `instance` and `traceId`.
//! 4. **timeout** — the request's time budget: `server.request_timeout_ms`, shortened by an
//!    incoming `keel-deadline-ms` header; 503 problem+json when exceeded.
//! 5. **route** — records the matched route template for the metrics (every layer here is
//!    applied per route, so the template is known even for requests refused below).
//! 6. **body limit** (innermost) — `server.body_limit_bytes`; 413 beyond it.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use http_body_util::BodyExt;
use tower_http::{catch_panic::CatchPanicLayer, limit::RequestBodyLimitLayer};
use tracing::{Instrument, field::Empty};

use crate::{
    config::ServerConfig,
    health::{Health, HealthReport},
    problem::{PROBLEM_JSON, Problem},
    telemetry,
    trace_context::{self, TraceContext},
};

/// Header carrying the request id.
pub const REQUEST_ID: &str = "x-request-id";
/// Header carrying the caller's remaining time budget in milliseconds.
pub const DEADLINE_HEADER: &str = "keel-deadline-ms";

/// Requests-total counter name.
pub const REQUESTS_TOTAL: &str = "keel_http_server_requests_total";
/// Request-duration histogram name.
pub const REQUEST_DURATION: &str = "keel_http_server_request_duration_seconds";

/// Put this in a response's extensions to log its access line at DEBUG instead of INFO
/// (for high-volume routine calls such as registry heartbeats).
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietAccessLog;

/// The request id of the current request, available as a request extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

#[derive(Clone, Default)]
struct RouteSlot(Arc<OnceLock<String>>);

/// Adds `/health`, `/health/live`, `/health/ready` and `/metrics` to `router`. With an
/// admin token, `/health` and `/metrics` require it; the probes stay open.
pub fn with_builtin_routes(router: Router, health: Health, admin_token: Option<String>) -> Router {
    let protected = Router::new()
        .route("/health", get(overall))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            admin_token.map(Arc::<str>::from),
            require_admin,
        ))
        .with_state(health.clone());
    let probes = Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(health);
    router.merge(protected).merge(probes)
}

/// Checks `Authorization: Bearer <token>` against the admin token (when one is set).
/// Returns a 401 problem+json response when it does not match.
#[allow(clippy::result_large_err)]
pub fn check_admin_token(headers: &http::HeaderMap, token: Option<&str>) -> Result<(), Response> {
    let Some(token) = token else { return Ok(()) };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return Ok(());
    }
    let mut res = Problem::new(StatusCode::UNAUTHORIZED)
        .with_detail("this endpoint requires `Authorization: Bearer <admin token>`")
        .into_response();
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(res)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_admin(
    State(token): State<Option<Arc<str>>>,
    req: Request,
    next: Next,
) -> Response {
    match check_admin_token(req.headers(), token.as_deref()) {
        Ok(()) => next.run(req).await,
        Err(res) => res,
    }
}

async fn overall(State(h): State<Health>) -> Response {
    report(h.overall().await)
}
async fn live(State(h): State<Health>) -> Response {
    report(h.liveness().await)
}
async fn ready(State(h): State<Health>) -> Response {
    report(h.readiness().await)
}

fn report(r: HealthReport) -> Response {
    let status = if r.is_up() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(r)).into_response()
}

async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        telemetry::render_metrics(),
    )
        .into_response()
}

/// Wraps `router` (every route and the fallback) in the standard stack.
pub fn apply_stack(router: Router, config: &ServerConfig) -> Router {
    let _ = telemetry::prometheus();
    let timeout = Duration::from_millis(config.request_timeout_ms);
    router
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(config.body_limit_bytes))
        .layer(middleware::from_fn(record_route))
        .layer(middleware::from_fn_with_state(timeout, enforce_timeout))
        .layer(middleware::from_fn(problemize))
        .layer(CatchPanicLayer::custom(panic_to_problem))
        .layer(middleware::from_fn(observe))
}

async fn record_route(matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    if let (Some(m), Some(slot)) = (matched, req.extensions().get::<RouteSlot>()) {
        let _ = slot.0.set(m.as_str().to_owned());
    }
    next.run(req).await
}

fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()))
}

fn is_probe(path: &str) -> bool {
    path == "/metrics" || path == "/health" || path.starts_with("/health/")
}

async fn observe(mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let rid = request_id(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!(
        "http.request",
        otel.name = Empty,
        otel.kind = "server",
        http.request.method = %method,
        url.path = %path,
        http.response.status_code = Empty,
        trace_id = Empty,
        span_id = Empty,
        request_id = %rid,
    );
    let cx = server_trace_context(&req, &span);
    span.record("trace_id", cx.trace_id_hex());
    span.record("span_id", cx.span_id_hex());

    let slot = RouteSlot::default();
    req.extensions_mut().insert(slot.clone());
    req.extensions_mut().insert(cx.clone());
    req.extensions_mut().insert(RequestId(rid.clone()));

    let mut res = trace_context::scope(cx.clone(), next.run(req))
        .instrument(span.clone())
        .await;

    let status = res.status();
    let elapsed = start.elapsed();
    let route = slot
        .0
        .get()
        .cloned()
        .unwrap_or_else(|| "unmatched".to_owned());
    let labels = [
        ("method", method.as_str().to_owned()),
        ("route", route.clone()),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!(REQUESTS_TOTAL, &labels).increment(1);
    metrics::histogram!(REQUEST_DURATION, &labels).record(elapsed.as_secs_f64());
    span.record("http.response.status_code", status.as_u16());
    span.in_scope(|| {
        let ms = elapsed.as_secs_f64() * 1000.0;
        let s = status.as_u16();
        if is_probe(&path) || res.extensions().get::<QuietAccessLog>().is_some() {
            tracing::debug!(method = %method, path = %path, status = s, duration_ms = ms, %route, "request completed");
        } else if status.is_server_error() {
            tracing::warn!(method = %method, path = %path, status = s, duration_ms = ms, %route, "request completed");
        } else {
            tracing::info!(method = %method, path = %path, status = s, duration_ms = ms, %route, "request completed");
        }
    });

    let headers = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&rid) {
        headers.insert(REQUEST_ID, v);
    }
    cx.write_headers(headers);
    res
}

/// The trace context for a server span: continues the caller's trace. When spans are
/// exported over OTLP, the exported span's ids are used so logs and traces agree.
fn server_trace_context(req: &Request, span: &tracing::Span) -> TraceContext {
    let cx = TraceContext::from_headers(req.headers());
    #[cfg(feature = "otlp")]
    if telemetry::otlp_active() {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        if let Some(parent) = cx.parent_span_id {
            let remote = SpanContext::new(
                TraceId::from_bytes(cx.trace_id),
                SpanId::from_bytes(parent),
                TraceFlags::new(cx.flags),
                true,
                TraceState::default(),
            );
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
        let otel = span.context();
        let sc = otel.span().span_context().clone();
        if sc.is_valid() {
            return TraceContext {
                trace_id: sc.trace_id().to_bytes(),
                span_id: sc.span_id().to_bytes(),
                parent_span_id: cx.parent_span_id,
                flags: sc.trace_flags().to_u8(),
                tracestate: cx.tracestate,
            };
        }
    }
    let _ = span;
    cx
}

fn panic_to_problem(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("panic");
    tracing::error!(error = msg, "handler panicked");
    Problem::internal("the request handler failed unexpectedly").into_response()
}

async fn enforce_timeout(State(budget): State<Duration>, req: Request, next: Next) -> Response {
    let incoming = req
        .headers()
        .get(DEADLINE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis);
    let budget = match (budget.is_zero(), incoming) {
        (true, None) => return next.run(req).await,
        (true, Some(d)) => d,
        (false, Some(d)) => d.min(budget),
        (false, None) => budget,
    };
    match tokio::time::timeout(budget, next.run(req)).await {
        Ok(res) => res,
        Err(_) => Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .with_title("Request Timeout")
            .with_detail(format!(
                "the request did not complete within its {} ms budget",
                budget.as_millis()
            ))
            .into_response(),
    }
}

/// Adds `instance` and `traceId` to a problem document that lacks them.
async fn enrich(res: Response, path: &str, trace_id: Option<String>) -> Response {
    let (mut parts, body) = res.into_parts();
    let Ok(collected) = http_body_util::Limited::new(body, 64 * 1024)
        .collect()
        .await
    else {
        return Problem::internal("error body too large").into_response();
    };
    let bytes = collected.to_bytes();
    let Ok(mut problem) = serde_json::from_slice::<Problem>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    if problem.instance.is_none() {
        problem.instance = Some(path.to_owned());
    }
    if let Some(t) = trace_id {
        problem.extensions.entry("traceId").or_insert(t.into());
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(problem.to_bytes()))
}

/// Largest non-problem error body that is carried over into `detail`.
const MAX_DETAIL_BYTES: usize = 4096;

/// Middleware (`axum::middleware::from_fn(problemize)`): rewrites any 4xx/5xx response that
/// is not already problem+json (extractor rejections, 404, 405, …) into one. Part of
/// [`apply_stack`]; exported for routers served outside it (e.g. the gateway's admin API).
pub async fn problemize(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let trace_id = req
        .extensions()
        .get::<TraceContext>()
        .map(|c| c.trace_id_hex());
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if content_type.starts_with(PROBLEM_JSON) {
        return enrich(res, &path, trace_id).await;
    }
    if content_type.starts_with("application/json") {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = match http_body_util::Limited::new(body, MAX_DETAIL_BYTES)
        .collect()
        .await
    {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_owned(),
        Err(_) => String::new(),
    };
    let detail = if !text.is_empty() {
        text
    } else if status == StatusCode::NOT_FOUND {
        format!("no route for {method} {path}")
    } else if status == StatusCode::METHOD_NOT_ALLOWED {
        format!("{method} is not allowed on {path}")
    } else {
        status.canonical_reason().unwrap_or("error").to_owned()
    };
    let mut problem = Problem::new(status).with_detail(detail).with_instance(path);
    if let Some(t) = trace_id {
        problem = problem.with_extension("traceId", t);
    }
    let mut out = problem.into_response();
    // Keep headers such as `Allow` and `Retry-After`.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}
