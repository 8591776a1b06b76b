//! The request path: match a route, run its request filters, call the upstream (balanced,
//! retried, behind the route's breaker, within one time budget), run its response filters,
//! and stream the response back. Every failure becomes a problem+json answer naming the route.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::{
    FutureExt,
    future::{BoxFuture, Either},
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use keel_chassis::TraceContext;
use keel_discovery::Balancer;
use keel_resilience::{Deadline, Outcome};
use tokio::time::Instant;

use crate::{
    body::Body,
    client::{Clients, Http1Pool, PoolError},
    config::ForwardedSettings,
    cors,
    exchange::{Exchange, Peer, header_value},
    forward,
    h1::RequestWriter,
    problem::{GatewayProblem, types},
    route::{Matched, Route, RouteTable, Target},
};

/// Bodies up to this size are buffered so a retry can send them again.
const REPLAY_LIMIT: u64 = 1 << 20;
/// A request body of at most this many bytes with a declared length is read before the
/// upstream call on every route: it usually came with the head, it can be sent again, and a
/// plain HTTP/1.1 upstream then gets head and body in one write (the fast path).
const SMALL_BODY: u64 = 16 * 1024;
/// Most internal forwards (`forward:` URIs, fallbacks) per request.
const MAX_FORWARDS: u8 = 4;

/// The request-independent state of the proxy.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub(crate) table: ArcSwap<RouteTable>,
    pub(crate) clients: Clients,
    /// HTTP/1 upstream connections (h2c goes through `clients`).
    pub(crate) pool: Http1Pool,
    pub(crate) balancer: Option<Balancer>,
    pub(crate) forwarded: ForwardedSettings,
    /// Global time to the response head.
    pub(crate) response_timeout: Option<Duration>,
    /// Global request body limit.
    pub(crate) max_body: Option<u64>,
    /// The longest a body read into memory may take (`server.body-read-timeout`).
    pub(crate) body_read_timeout: Duration,
    pub(crate) access_log: bool,
}

/// What went wrong calling an upstream.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    NoInstance(String),
    Connect(String),
    Timeout(Duration),
    BodyTooLarge(u64),
    Other(String),
    CircuitOpen(String),
}

impl UpstreamError {
    /// Whether the request never reached an instance (safe to send elsewhere).
    fn not_sent(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }

    /// A one-line description.
    pub(crate) fn detail(&self) -> String {
        match self {
            UpstreamError::NoInstance(s) => format!("no available instance of `{s}`"),
            UpstreamError::Connect(e) => format!("cannot connect: {e}"),
            UpstreamError::Timeout(d) => format!("timed out after {} ms", d.as_millis()),
            UpstreamError::BodyTooLarge(l) => format!("body larger than {l} bytes"),
            UpstreamError::Other(e) => e.clone(),
            UpstreamError::CircuitOpen(n) => format!("circuit breaker `{n}` is open"),
        }
    }

    fn cause(&self) -> &'static str {
        match self {
            UpstreamError::NoInstance(_) => "no-instance",
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::BodyTooLarge(_) => "body-too-large",
            UpstreamError::Other(_) => "upstream-error",
            UpstreamError::CircuitOpen(_) => "circuit-open",
        }
    }

    fn into_problem(self, route: &str, path: &str) -> Response<Body> {
        let (status, ty, detail) = match self {
            UpstreamError::NoInstance(s) => (
                StatusCode::SERVICE_UNAVAILABLE,
                types::NO_INSTANCE,
                format!("no available instance of service `{s}`"),
            ),
            UpstreamError::Connect(e) => (
                StatusCode::BAD_GATEWAY,
                types::UPSTREAM_UNREACHABLE,
                format!("cannot connect to the upstream: {e}"),
            ),
            UpstreamError::Timeout(d) => (
                StatusCode::GATEWAY_TIMEOUT,
                types::UPSTREAM_TIMEOUT,
                format!("the upstream did not answer within {} ms", d.as_millis()),
            ),
            UpstreamError::BodyTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                types::BODY_TOO_LARGE,
                format!("the request body is larger than the limit of {limit} bytes"),
            ),
            UpstreamError::Other(e) => (
                StatusCode::BAD_GATEWAY,
                types::UPSTREAM_ERROR,
                format!("the upstream call failed: {e}"),
            ),
            UpstreamError::CircuitOpen(name) => (
                StatusCode::SERVICE_UNAVAILABLE,
                types::CIRCUIT_OPEN,
                format!("circuit breaker `{name}` is open"),
            ),
        };
        GatewayProblem::new(status, ty, detail)
            .route(route)
            .instance(path)
            .into_response()
    }
}

/// The request body as the proxy holds it: streamed once, or buffered and replayable.
enum RequestBody {
    Stream(Option<Body>),
    Replay(Bytes),
}

impl RequestBody {
    fn take(&mut self) -> Option<Body> {
        match self {
            RequestBody::Stream(b) => b.take(),
            RequestBody::Replay(b) => Some(Body::full(b.clone())),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, RequestBody::Replay(_))
    }
}

/// A finished request, for metrics and the access log.
pub(crate) struct Handled {
    pub(crate) response: Response<Body>,
    pub(crate) route: Option<Arc<Route>>,
    /// The trace this request belongs to (for the access log).
    pub(crate) trace: TraceContext,
}

impl Proxy {
    /// Handles one request from `client`. The exchange is made before the returned future
    /// first runs, so that future holds little more than the routed request's (one boxed
    /// future per request, of [`route`](Self::route)).
    pub(crate) fn handle(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        peer: &Arc<Peer>,
        client: SocketAddr,
        secure: bool,
    ) -> impl Future<Output = Handled> + Send + use<> {
        let upgrade = forward::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let mut headers = parts.headers;
        if !headers.contains_key(header::HOST)
            && let Some(h) = &host
        {
            headers.insert(header::HOST, h.clone());
        }
        let deadline = Deadline::from_headers(&headers, Instant::now());
        let trace = TraceContext::from_headers(&headers);
        let ex = Exchange {
            method: parts.method,
            version: parts.version,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            original: parts.uri.path_and_query().cloned(),
            trace,
            headers,
            vars: Vec::new(),
            client,
            peer: peer.clone(),
            secure,
            host,
            prefix: None,
            preserve_host: false,
            claims: None,
            max_body: self.max_body,
            deadline,
            forwards: 0,
        };
        let trace = ex.trace.clone();
        let routed = self.dispatch(ex, Some(Body::Incoming(body)), 0, client_upgrade);
        keel_chassis::trace_context::scope(trace.clone(), routed).map(
            move |(mut response, route)| {
                if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                    forward::strip_hop_by_hop(response.headers_mut(), false);
                }
                Handled {
                    response,
                    route,
                    trace,
                }
            },
        )
    }

    /// Routes `ex` and answers it (boxed: internal forwards recurse). `depth` counts them.
    fn dispatch(
        self: &Arc<Self>,
        ex: Exchange,
        body: Option<Body>,
        depth: u8,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> BoxFuture<'static, (Response<Body>, Option<Arc<Route>>)> {
        Box::pin(Arc::clone(self).route(ex, body, depth, client_upgrade))
    }

    /// Finds `ex`'s route (or answers 404, or a CORS preflight), applies its JWT, rate
    /// limit and request filters, answers from its target and applies its response filters.
    /// One future, so the exchange is held once, not moved from one future into the next.
    // Not an async fn: one stores each argument twice (once as passed, once moved into the
    // body's own variable); an async block keeps the captured value in place.
    #[allow(clippy::manual_async_fn)]
    fn route(
        self: Arc<Self>,
        mut ex: Exchange,
        body: Option<Body>,
        depth: u8,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> impl Future<Output = (Response<Body>, Option<Arc<Route>>)> + Send + use<> {
        async move {
            if depth > MAX_FORWARDS {
                let res = GatewayProblem::new(
                    StatusCode::LOOP_DETECTED,
                    types::INTERNAL,
                    format!("more than {MAX_FORWARDS} internal forwards"),
                )
                .instance(&ex.path)
                .into_response();
                return (res, None);
            }
            let table = self.table.load();
            let cross_origin = depth == 0 && cors::is_cross_origin(&ex.headers, ex.secure);
            let preflight = cross_origin && cors::is_preflight(&ex.method, &ex.headers);
            let found = table
                .find(
                    &ex.method,
                    &ex.path,
                    ex.query.as_deref(),
                    &ex.headers,
                    ex.client.ip(),
                    preflight,
                )
                .or_else(|| {
                    let locator = table.locator.as_ref()?;
                    let services = self.balancer.as_ref()?.catalog().services();
                    locator.route_for(&ex.path, &services).map(|route| Matched {
                        route,
                        vars: Vec::new(),
                    })
                });
            let cors_config = if cross_origin {
                found
                    .as_ref()
                    .and_then(|m| m.route.cors.clone())
                    .or_else(|| table.cors.find(&ex.path).cloned())
            } else {
                None
            };
            drop(table);
            let matched = found.as_ref().map(|m| m.route.clone());
            if let Some(c) = &cors_config {
                let id = matched.as_ref().map(|r| &*r.id);
                if preflight {
                    return (cors::preflight(c, &ex.headers, id, &ex.path), matched);
                }
                if let Err(res) = cors::check_actual(c, &ex.headers, id, &ex.path) {
                    return (*res, matched);
                }
            }
            let origin = cors_config
                .as_ref()
                .and_then(|_| ex.headers.get(header::ORIGIN).cloned());
            let mut res = 'answer: {
                let Some(m) = found else {
                    break 'answer GatewayProblem::new(
                        StatusCode::NOT_FOUND,
                        types::NO_ROUTE,
                        format!("no route matches {} {}", ex.method, ex.path),
                    )
                    .instance(&ex.path)
                    .trace(ex.trace.trace_id_hex())
                    .into_response();
                };
                let route = m.route;
                ex.vars = m.vars;
                ex.forwards = depth;
                if let Some(j) = &route.jwt
                    && let Err(res) = Box::pin(j.apply(&mut ex, &route.id)).await
                {
                    break 'answer *res;
                }
                let limited = match &route.rate_limit {
                    Some(l) => match Box::pin(l.apply(&ex, &route.id)).await {
                        Ok(d) => Some(d),
                        Err(res) => break 'answer *res,
                    },
                    None => None,
                };
                for f in &route.request_filters {
                    if let Some(res) = f.on_request(&mut ex, &route.id) {
                        break 'answer res;
                    }
                }
                let mut res = match &route.target {
                    Target::NoOp => Response::new(Body::Empty),
                    Target::Compose(c) => Box::pin(self.compose(&route.id, c, &ex)).await,
                    Target::Forward(path) => {
                        ex.path = path.clone();
                        self.dispatch(ex_clone(&ex), body, depth + 1, client_upgrade)
                            .await
                            .0
                    }
                    Target::Http { .. } | Target::Lb { .. } => {
                        self.upstream(&route, &ex, body, depth, client_upgrade)
                            .await
                    }
                };
                for f in &route.response_filters {
                    f.on_response(&ex, &mut res);
                }
                if let Some(d) = &limited {
                    crate::limit::add_headers(d, &mut res);
                }
                res
            };
            if let (Some(c), Some(origin)) = (&cors_config, &origin) {
                cors::decorate(c, origin, &mut res);
            }
            (res, matched)
        }
    }

    /// Calls the route's upstream with its retry and breaker policies.
    // Not an async fn: one stores each argument twice (once as passed, once moved into the
    // body's own variable); an async block keeps the captured value in place.
    #[allow(clippy::manual_async_fn)]
    fn upstream(
        self: &Arc<Self>,
        route: &Route,
        ex: &Exchange,
        body: Option<Body>,
        depth: u8,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> impl Future<Output = Response<Body>> + Send {
        async move {
            let tripped = Arc::new(AtomicBool::new(false));
            let body = match self.prepare_body(route, ex, body, &tripped).await {
                Ok(b) => b,
                Err(res) => return *res,
            };
            let mut body = body;
            let retry = route.retry.as_ref().filter(|r| r.allows(&ex.method));
            let mut avoid: Vec<String> = Vec::new();
            let mut retries = 0u32;
            let result = loop {
                let permit = match &route.breaker {
                    Some(b) => match b.breaker.try_acquire_owned() {
                        Ok(p) => Some(p),
                        Err(_) => break Err(UpstreamError::CircuitOpen(breaker_name(b))),
                    },
                    None => None,
                };
                let Some(attempt_body) = body.take() else {
                    break Err(UpstreamError::Other(
                        "the request body was already sent".into(),
                    ));
                };
                let r = self
                    .fetch(
                        &route.target,
                        route.connect_timeout,
                        self.attempt_timeout(route),
                        ex,
                        attempt_body,
                        &mut avoid,
                    )
                    .await;
                if let (Some(p), Some(b)) = (permit, &route.breaker) {
                    let outcome = match &r {
                        Ok(res) if b.failure_statuses.contains(res.status().as_u16()) => {
                            Outcome::Failure
                        }
                        Ok(_) => Outcome::Success,
                        Err(UpstreamError::NoInstance(_) | UpstreamError::BodyTooLarge(_)) => {
                            Outcome::Ignored
                        }
                        Err(_) => Outcome::Failure,
                    };
                    p.record(outcome);
                }
                let again = match (&r, retry) {
                    (_, None) => false,
                    (Ok(res), Some(p)) => p.statuses.contains(res.status().as_u16()),
                    (Err(e), Some(p)) => {
                        p.on_errors
                            && matches!(e, UpstreamError::Connect(_) | UpstreamError::Timeout(_))
                    }
                };
                // A request that never reached an lb:// instance goes to another one once, even
                // without a Retry filter, when its body can be sent again.
                let lb_failover = retry.is_none()
                    && retries == 0
                    && matches!(route.target, Target::Lb { .. })
                    && matches!(&r, Err(e) if e.not_sent());
                let limit = retry.map_or(1, |p| p.retries);
                if (again || lb_failover) && retries < limit && body.replayable() {
                    retries += 1;
                    let wait = retry.map_or(Duration::ZERO, |p| p.backoff(retries));
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    continue;
                }
                break r;
            };
            if tripped.load(Ordering::Acquire) {
                let limit = ex.max_body.unwrap_or(0);
                return UpstreamError::BodyTooLarge(limit).into_problem(&route.id, &ex.path);
            }
            let failed = match (&result, &route.breaker) {
                (Err(_), Some(b)) => b.fallback.is_some(),
                (Ok(res), Some(b)) => {
                    b.fallback.is_some() && b.failure_statuses.contains(res.status().as_u16())
                }
                _ => false,
            };
            if failed && let Some(path) = route.breaker.as_ref().and_then(|b| b.fallback.clone()) {
                let cause = match &result {
                    Err(e) => e.cause(),
                    Ok(_) => "status",
                };
                let mut fx = ex_clone(ex);
                fx.path = path;
                fx.method = Method::GET;
                fx.query = None;
                fx.headers
                    .insert("x-keel-fallback-cause", HeaderValue::from_static(cause));
                fx.headers
                    .insert("x-keel-fallback-route", header_value(&route.id));
                return self.dispatch(fx, None, depth + 1, None).await.0;
            }
            match result {
                Ok(mut res) => {
                    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                        if let Some(client_up) = client_upgrade {
                            let upstream_up = hyper::upgrade::on(&mut res);
                            tokio::spawn(tunnel(client_up, upstream_up));
                        }
                        return res.map(|_| Body::Empty);
                    }
                    res
                }
                Err(e) => e.into_problem(&route.id, &ex.path),
            }
        }
    }

    /// Applies the body limit and reads small bodies of declared length into memory: up to
    /// 16 KiB always, up to 1 MiB when a retry or `lb://` failover may send them again.
    async fn prepare_body(
        &self,
        route: &Route,
        ex: &Exchange,
        body: Option<Body>,
        tripped: &Arc<AtomicBool>,
    ) -> Result<RequestBody, Box<Response<Body>>> {
        let Some(body) = body else {
            return Ok(RequestBody::Replay(Bytes::new()));
        };
        let declared = ex
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let (Some(len), Some(max)) = (declared, ex.max_body)
            && len > max
        {
            return Err(Box::new(
                UpstreamError::BodyTooLarge(max).into_problem(&route.id, &ex.path),
            ));
        }
        let chunked = ex.headers.contains_key(header::TRANSFER_ENCODING);
        let empty = !chunked && declared.unwrap_or(0) == 0 && ex.version != Version::HTTP_2
            || http_body::Body::is_end_stream(&body);
        if empty {
            return Ok(RequestBody::Replay(Bytes::new()));
        }
        let replay_wanted = route.retry.as_ref().is_some_and(|r| r.allows(&ex.method))
            || matches!(route.target, Target::Lb { .. });
        let limit = if replay_wanted {
            REPLAY_LIMIT
        } else {
            SMALL_BODY
        };
        if declared.is_some_and(|l| l <= limit) {
            // Bounded as the upstream call would have been had the body streamed to it (the
            // attempt's time limit and the request's deadline), and at most by
            // `server.body-read-timeout`. (A body that came with its head is read on the first
            // poll, before the timer would be registered.)
            let within = [
                self.attempt_timeout(route),
                ex.deadline.map(|d| d.remaining()),
            ]
            .into_iter()
            .flatten()
            .fold(self.body_read_timeout, Duration::min);
            let Ok(collected) = tokio::time::timeout(within, body.collect()).await else {
                return Err(Box::new(
                    GatewayProblem::new(
                        StatusCode::REQUEST_TIMEOUT,
                        types::REQUEST_TIMEOUT,
                        format!(
                            "the request body did not arrive within {} ms",
                            within.as_millis()
                        ),
                    )
                    .route(&route.id)
                    .instance(&ex.path)
                    .into_response(),
                ));
            };
            let bytes = match collected {
                Ok(c) => c.to_bytes(),
                Err(e) => {
                    return Err(Box::new(
                        GatewayProblem::new(
                            StatusCode::BAD_REQUEST,
                            types::BAD_REQUEST,
                            format!("the request body could not be read: {e}"),
                        )
                        .route(&route.id)
                        .instance(&ex.path)
                        .into_response(),
                    ));
                }
            };
            return Ok(RequestBody::Replay(bytes));
        }
        let body = match (body, ex.max_body) {
            (Body::Incoming(b), Some(max)) => Body::limited(b, max, tripped.clone()),
            (b, _) => b,
        };
        Ok(RequestBody::Stream(Some(body)))
    }

    /// The time limit of one attempt at `route`'s upstream: the route's (else the global)
    /// response timeout and its breaker's time limit, whichever is smaller. (`fetch` also
    /// bounds it by the request's deadline.)
    fn attempt_timeout(&self, route: &Route) -> Option<Duration> {
        [
            route.response_timeout.or(self.response_timeout),
            route.breaker.as_ref().and_then(|b| b.time_limit),
        ]
        .into_iter()
        .flatten()
        .filter(|d| *d != Duration::MAX)
        .min()
    }

    /// One call to one instance of `target`, answered within `timeout` (and the request's
    /// deadline). A request whose body is empty or in memory, to a plain HTTP/1.1 upstream,
    /// takes the fast path (`h1.rs`): its head is written straight from `ex`. Any other goes
    /// through hyper's client, in a future of its own, so the common case's stays small.
    // Not an async fn: one stores each argument twice (once as passed, once moved into the
    // body's own variable); an async block keeps the captured value in place.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn fetch(
        &self,
        target: &Target,
        connect_timeout: Option<Duration>,
        timeout: Option<Duration>,
        ex: &Exchange,
        body: Body,
        avoid: &mut Vec<String>,
    ) -> impl Future<Output = Result<Response<Body>, UpstreamError>> + Send {
        async move {
            let (authority, h2c, tls, host, pick) = match target {
                Target::Http {
                    authority,
                    h2c,
                    tls,
                    host,
                } => (authority.clone(), *h2c, *tls, Some(host.clone()), None),
                Target::Lb { service } => {
                    let balancer = self
                        .balancer
                        .as_ref()
                        .ok_or_else(|| UpstreamError::NoInstance(service.clone()))?;
                    let pick = balancer
                        .pick(service, avoid)
                        .map_err(|e| UpstreamError::NoInstance(e.service))?;
                    let tls = pick.instance.secure;
                    let authority: http::uri::Authority =
                        pick.instance.authority().parse().map_err(|e| {
                            UpstreamError::Other(format!("invalid upstream authority: {e}"))
                        })?;
                    (authority, false, tls, None, Some(pick))
                }
                _ => return Err(UpstreamError::Other("not an upstream route".into())),
            };
            let host = match (&ex.host, ex.preserve_host) {
                (Some(h), true) => h.clone(),
                _ => host.unwrap_or_else(|| header_value(authority.as_str())),
            };
            let target = ex
                .upstream_path_and_query()
                .map_err(|e| UpstreamError::Other(format!("invalid upstream path: {e}")))?;
            let timeout = [timeout, ex.deadline.map(|d| d.remaining())]
                .into_iter()
                .flatten()
                .min();
            let upgrade = forward::is_upgrade(&ex.headers);
            let connect = connect_timeout.unwrap_or_else(|| self.clients.connect_timeout());
            let fast = !h2c
                && !tls
                && !upgrade
                && ex.method != Method::CONNECT
                && (matches!(body, Body::Full(_)) || http_body::Body::is_end_stream(&body));
            let call = if fast {
                let body = match body {
                    Body::Full(Some(b)) => b,
                    _ => Bytes::new(),
                };
                let length = (!body.is_empty()).then_some(body.len());
                let mut head = RequestWriter::new(&ex.method, target.as_str(), ex.headers.len());
                forward::upstream_headers(&self.forwarded, ex, &host, false, length, |n, v| {
                    head.header(n, v);
                });
                let request = head.finish(&body);
                let idempotent = ex.method.is_idempotent();
                let head_request = ex.method == Method::HEAD;
                Either::Left(async move {
                    self.pool
                        .send_fast(
                            authority.as_str(),
                            connect,
                            request,
                            idempotent,
                            head_request,
                        )
                        .await
                        .map_err(pool_error)
                })
            } else {
                let req = self.upstream_request(ex, &authority, target, host, upgrade, body)?;
                Either::Right(Box::pin(async move {
                    if h2c {
                        let client = self.clients.get(connect_timeout, true);
                        client
                            .request(req)
                            .await
                            .map(|res| res.map(Body::Incoming))
                            .map_err(|e| classify(&e))
                    } else {
                        self.pool
                            .send(authority.as_str(), tls, connect, req)
                            .await
                            .map_err(pool_error)
                    }
                }))
            };
            let result = match timeout {
                Some(t) => match tokio::time::timeout(t, call).await {
                    Ok(r) => r,
                    Err(_) => Err(UpstreamError::Timeout(t)),
                },
                None => call.await,
            };
            if let Some(pick) = pick {
                let outcome = match &result {
                    Ok(res) if res.status().is_server_error() => Outcome::Failure,
                    Ok(_) => Outcome::Success,
                    Err(_) => Outcome::Failure,
                };
                if matches!(&result, Err(e) if e.not_sent()) {
                    avoid.push(pick.instance.id.clone());
                }
                pick.record(outcome);
            }
            result
        }
    }

    /// The request for hyper's client: `target` on `authority`, with the headers
    /// [`forward::upstream_headers`] gives.
    fn upstream_request(
        &self,
        ex: &Exchange,
        authority: &http::uri::Authority,
        target: http::uri::PathAndQuery,
        host: HeaderValue,
        upgrade: bool,
        body: Body,
    ) -> Result<Request<Body>, UpstreamError> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(authority.clone());
        parts.path_and_query = Some(target);
        let uri = Uri::from_parts(parts)
            .map_err(|e| UpstreamError::Other(format!("invalid upstream URI: {e}")))?;
        let mut headers = HeaderMap::with_capacity(ex.headers.len() + 8);
        forward::upstream_headers(&self.forwarded, ex, &host, upgrade, None, |n, v| {
            headers.append(n.clone(), v.clone());
        });
        let mut req = Request::new(body);
        *req.method_mut() = ex.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        Ok(req)
    }
}

fn pool_error(e: PoolError) -> UpstreamError {
    match e {
        PoolError::Connect(m) => UpstreamError::Connect(m),
        PoolError::Send(e) => UpstreamError::Other(root_cause(&e)),
        PoolError::Failed(m) => UpstreamError::Other(m),
    }
}

fn breaker_name(b: &crate::route::BreakerPolicy) -> String {
    b.breaker
        .name()
        .strip_prefix("gateway:")
        .unwrap_or(b.breaker.name())
        .to_owned()
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg = s.to_string();
        source = s.source();
    }
    msg
}

fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = s.to_string();
        source = s.source();
    }
    if e.is_connect() {
        UpstreamError::Connect(msg)
    } else {
        UpstreamError::Other(msg)
    }
}

/// A copy of the exchange for an internal forward.
pub(crate) fn ex_clone(ex: &Exchange) -> Exchange {
    Exchange {
        method: ex.method.clone(),
        version: ex.version,
        path: ex.path.clone(),
        query: ex.query.clone(),
        original: ex.original.clone(),
        headers: ex.headers.clone(),
        vars: Vec::new(),
        client: ex.client,
        peer: ex.peer.clone(),
        secure: ex.secure,
        host: ex.host.clone(),
        prefix: ex.prefix.clone(),
        preserve_host: false,
        claims: ex.claims.clone(),
        trace: ex.trace.clone(),
        max_body: ex.max_body,
        deadline: ex.deadline,
        forwards: ex.forwards,
    }
}

/// Copies bytes both ways between an upgraded client connection and upstream connection.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (Ok(c), Ok(u)) = (client.await, upstream.await) else {
        return;
    };
    let mut c = hyper_util::rt::TokioIo::new(c);
    let mut u = hyper_util::rt::TokioIo::new(u);
    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}
