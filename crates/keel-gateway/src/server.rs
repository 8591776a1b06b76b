//! The listener: accepts HTTP/1.1 and h2c connections, hands each request to the proxy (or,
//! for `/actuator/*`, `/health*` and `/metrics`, to the admin router), records metrics and the
//! access log, reloads the route file, and drains on SIGTERM.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use futures::{
    FutureExt,
    future::{BoxFuture, Either},
};
use http::{Request, Response, StatusCode};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use keel_chassis::{
    Health, Phase,
    axum::{
        self, Json, Router,
        extract::{Path, State},
        response::IntoResponse,
        routing::{get, post},
    },
};
use keel_discovery::{Balancer, BalancerConfig, Discovery};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    GatewayConfig,
    body::Body,
    client::Clients,
    error::{Error, LoadError},
    exchange::Peer,
    idle::{Check, ConnWatch, Tracked},
    limit::Limiters,
    problem::{GatewayProblem, types},
    proxy::Proxy,
    route::{Breakers, RouteTable, Shared, needs_redis},
    route_metrics::RouteMetrics,
};

/// How `keel gateway` was started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The route file (`--config`); none: no routes.
    pub config: Option<PathBuf>,
    /// `--listen`, overriding the file's port.
    pub listen: Option<String>,
    /// `--profile` (repeatable).
    pub profiles: Vec<String>,
}

/// A running gateway's shared state.
#[derive(Debug)]
pub struct Gateway {
    proxy: Arc<Proxy>,
    breakers: Breakers,
    limiters: Mutex<Limiters>,
    redis: crate::config::RedisSettings,
    file: Option<PathBuf>,
    profiles: Vec<String>,
    health: Health,
    admin_on_main: bool,
    admin: Router,
    max_header_bytes: usize,
    max_headers: usize,
    has_discovery: bool,
    last_error: Mutex<Option<String>>,
    /// The metrics of requests no route matched.
    unmatched: RouteMetrics,
    _discovery: Option<Discovery>,
}

impl Gateway {
    /// Builds a gateway from `config` (routes compiled, discovery started, Redis connected
    /// when a route rate-limits there).
    pub async fn new(config: &GatewayConfig, profiles: Vec<String>) -> Result<Arc<Self>, Error> {
        // Metrics need the process's Prometheus recorder (installed once).
        let _ = keel_chassis::telemetry::prometheus();
        let breakers = Breakers::default();
        let mut limiters = Limiters {
            local: keel_ratelimit::RateLimiter::new(
                keel_ratelimit::LocalStore::new(),
                keel_ratelimit::FailMode::Open,
            ),
            redis: None,
        };
        if needs_redis(config) {
            limiters.redis = Some(connect_redis(&config.rate_limiter.redis).await?);
        }
        let shared = Shared {
            breakers: breakers.clone(),
            limiters: limiters.clone(),
        };
        let table = RouteTable::build(config, &shared)?;
        let discovery = config.discovery.clone().map(|d| {
            Discovery::start(
                d,
                reqwest::Client::builder()
                    .pool_max_idle_per_host(4)
                    .build()
                    .unwrap_or_default(),
            )
        });
        let balancer = discovery
            .as_ref()
            .and_then(|d| Balancer::new(d.catalog().clone(), BalancerConfig::default()).ok());
        let proxy = Arc::new(Proxy {
            table: ArcSwap::from_pointee(table),
            clients: Clients::new(config.http_client.clone()),
            pool: crate::client::Http1Pool::new(
                config.http_client.pool_max_idle_per_host,
                config.http_client.pool_idle_timeout,
                crate::client::UpstreamTls::new(&config.http_client).map_err(Error::Tls)?,
            ),
            balancer,
            forwarded: config.forwarded,
            response_timeout: config.http_client.response_timeout,
            max_body: config.server.max_body_bytes,
            body_read_timeout: config.server.body_read_timeout,
            access_log: config.access_log,
        });
        let health = Health::new();
        Ok(Arc::new_cyclic(|weak: &std::sync::Weak<Gateway>| Gateway {
            admin: admin_router(weak.clone(), health.clone(), config.admin.token.clone()),
            proxy,
            breakers,
            limiters: Mutex::new(limiters),
            redis: config.rate_limiter.redis.clone(),
            file: config.file.clone(),
            profiles,
            health,
            admin_on_main: config.admin.listen.is_none(),
            max_header_bytes: config.server.max_header_bytes,
            max_headers: config.server.max_headers,
            has_discovery: discovery.is_some(),
            last_error: Mutex::new(None),
            unmatched: RouteMetrics::new(Arc::from("unmatched")),
            _discovery: discovery,
        }))
    }

    /// The health registry (readiness is UP while serving).
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Reloads the route file. On error the current routes stay in service.
    pub async fn reload(&self) -> Result<usize, LoadError> {
        let Some(file) = &self.file else {
            return Ok(self.proxy.table.load().routes.len());
        };
        let result = match GatewayConfig::load(file, &self.profiles) {
            Ok(c) => {
                if c.discovery.is_some() && !self.has_discovery {
                    tracing::warn!("discovery settings changed; restart the gateway to apply them");
                }
                let have_redis = self.limiters().redis.is_some();
                if needs_redis(&c) && !have_redis {
                    match connect_redis(&self.redis).await {
                        Ok(r) => {
                            self.limiters
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .redis = Some(r);
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot use Redis for rate limits"),
                    }
                }
                let shared = Shared {
                    breakers: self.breakers.clone(),
                    limiters: self.limiters(),
                };
                RouteTable::build(&c, &shared)
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(table) => {
                let n = table.routes.len();
                self.proxy.table.store(Arc::new(table));
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                tracing::info!(routes = n, file = %file.display(), "routes reloaded");
                Ok(n)
            }
            Err(e) => {
                tracing::error!(error = %e, "route file rejected; keeping the previous routes");
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn limiters(&self) -> Limiters {
        self.limiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Enforces `server.max-header-bytes` and `server.max-headers` with a 431 problem (hyper's
    /// own limits sit above these and answer without a body).
    fn check_head(&self, req: &Request<Incoming>) -> Option<Response<Body>> {
        let h = req.headers();
        let bytes: usize = h
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        let detail = if h.len() > self.max_headers {
            format!(
                "{} request headers; at most {} are accepted",
                h.len(),
                self.max_headers
            )
        } else if bytes > self.max_header_bytes {
            format!(
                "the request head is {bytes} bytes; at most {} are accepted",
                self.max_header_bytes
            )
        } else {
            return None;
        };
        Some(
            GatewayProblem::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                types::HEADERS_TOO_LARGE,
                detail,
            )
            .instance(req.uri().path())
            .into_response(),
        )
    }

    /// Serves one connection's request. What can be decided at once (admin paths, the head's
    /// limits, the exchange and its route's future) is, before the returned future first runs,
    /// so that future is small: hyper keeps it in the connection's slot, unboxed.
    fn serve_request(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: &Arc<Peer>,
        client: SocketAddr,
        secure: bool,
    ) -> Either<
        BoxFuture<'static, Response<Body>>,
        impl Future<Output = Response<Body>> + Send + use<>,
    > {
        let path = req.uri().path();
        if self.admin_on_main && is_admin_path(path) {
            return Either::Left(Box::pin(admin_call(self.admin.clone(), req)));
        }
        if let Some(res) = self.check_head(&req) {
            return Either::Left(Box::pin(std::future::ready(res)));
        }
        let start = tokio::time::Instant::now();
        let method = req.method().clone();
        let path = self.proxy.access_log.then(|| req.uri().path().to_owned());
        let gw = Arc::clone(self);
        Either::Right(
            self.proxy
                .handle(req, peer, client, secure)
                .map(move |out| {
                    let status = out.response.status();
                    let elapsed = start.elapsed();
                    let metrics = out.route.as_ref().map_or(&gw.unmatched, |r| &r.metrics);
                    metrics.record(&method, status, elapsed);
                    if let Some(path) = path {
                        let route = out.route.as_ref().map_or("unmatched", |r| &*r.id);
                        tracing::info!(
                            target: "keel_gateway::access",
                            client = %client.ip(),
                            method = %method,
                            path = %path,
                            status = status.as_u16(),
                            route = %route,
                            duration_ms = elapsed.as_secs_f64() * 1e3,
                            trace_id = %out.trace.trace_id_hex(),
                            "request"
                        );
                    }
                    out.response
                }),
        )
    }
}

fn is_admin_path(path: &str) -> bool {
    path.starts_with("/actuator/")
        || matches!(
            path,
            "/health" | "/health/live" | "/health/ready" | "/metrics"
        )
}

async fn admin_call(router: Router, req: Request<Incoming>) -> Response<Body> {
    use tower::ServiceExt;
    let req = req.map(axum::body::Body::new);
    let res = match router.oneshot(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let (parts, body) = res.into_parts();
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Response::from_parts(parts, Body::full(bytes))
}

type Weak = std::sync::Weak<Gateway>;

fn admin_router(gw: Weak, health: Health, token: Option<String>) -> Router {
    let gateway = Router::new()
        .route("/actuator/gateway/routes", get(routes))
        .route("/actuator/gateway/routes/{id}", get(route_by_id))
        .route("/actuator/gateway/refresh", post(refresh))
        .route("/actuator/gateway/circuitbreakers", get(circuit_breakers))
        .route_layer(axum::middleware::from_fn_with_state(
            token.clone().map(Arc::<str>::from),
            require_admin,
        ))
        .with_state(gw);
    keel_chassis::server::with_builtin_routes(gateway, health, token)
        .layer(axum::middleware::from_fn(keel_chassis::server::problemize))
}

async fn require_admin(
    State(token): State<Option<Arc<str>>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Err(res) = keel_chassis::server::check_admin_token(req.headers(), token.as_deref()) {
        return res;
    }
    next.run(req).await
}

fn route_json(r: &crate::route::Route) -> Value {
    json!({
        "route_id": &*r.id,
        "uri": r.def.uri,
        "order": r.order,
        "predicates": r.def.predicates.iter().map(|p| p.display()).collect::<Vec<_>>(),
        "filters": r.def.filters.iter().map(|f| f.display()).collect::<Vec<_>>(),
        "metadata": r.def.metadata,
    })
}

fn gone() -> axum::response::Response {
    keel_chassis::Problem::new(StatusCode::SERVICE_UNAVAILABLE)
        .with_detail("the gateway is stopping")
        .into_response()
}

async fn routes(State(gw): State<Weak>) -> axum::response::Response {
    let Some(gw) = gw.upgrade() else {
        return gone();
    };
    let table = gw.proxy.table.load();
    Json(
        table
            .routes
            .iter()
            .map(|r| route_json(r))
            .collect::<Vec<_>>(),
    )
    .into_response()
}

async fn route_by_id(State(gw): State<Weak>, Path(id): Path<String>) -> axum::response::Response {
    let Some(gw) = gw.upgrade() else {
        return gone();
    };
    let table = gw.proxy.table.load();
    match table.routes.iter().find(|r| *r.id == *id) {
        Some(r) => Json(route_json(r)).into_response(),
        None => keel_chassis::Problem::new(StatusCode::NOT_FOUND)
            .with_detail(format!("no route with id {id:?}"))
            .into_response(),
    }
}

async fn refresh(State(gw): State<Weak>) -> axum::response::Response {
    let Some(gw) = gw.upgrade() else {
        return gone();
    };
    match gw.reload().await {
        Ok(n) => Json(json!({ "routes": n })).into_response(),
        Err(e) => keel_chassis::Problem::new(StatusCode::BAD_REQUEST)
            .with_title("Route file rejected")
            .with_detail(format!("{e}; the previous routes stay in service"))
            .with_extension("route", e.route().unwrap_or_default())
            .into_response(),
    }
}

async fn circuit_breakers(State(gw): State<Weak>) -> axum::response::Response {
    let Some(gw) = gw.upgrade() else {
        return gone();
    };
    let list: Vec<Value> = gw
        .breakers
        .all()
        .into_iter()
        .map(|(name, b)| {
            let mut v = serde_json::to_value(b.snapshot()).unwrap_or(Value::Null);
            if let Some(m) = v.as_object_mut() {
                m.insert("name".into(), Value::String(name));
            }
            v
        })
        .collect();
    Json(list).into_response()
}

/// Watches the route file's modification time and reloads when it changes.
async fn watch_file(gw: Arc<Gateway>, interval: Duration, stop: CancellationToken) {
    let Some(file) = gw.file.clone() else { return };
    let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last: Option<SystemTime> = mtime(&file);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let now = mtime(&file);
        if now.is_some() && now != last {
            last = now;
            let _ = gw.reload().await;
        }
    }
}

/// The TLS acceptor for `server.tls` (ALPN offers h2 when HTTP/2 is on).
fn tls_acceptor(
    t: &crate::config::TlsSettings,
    http2: bool,
) -> Result<tokio_rustls::TlsAcceptor, Error> {
    use tokio_rustls::rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.certificate)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| {
            Error::Tls(format!(
                "server.tls.certificate {}: {e}",
                t.certificate.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "server.tls.certificate {}: no certificate in the file",
            t.certificate.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&t.private_key).map_err(|e| {
        Error::Tls(format!(
            "server.tls.private-key {}: {e}",
            t.private_key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(format!("server.tls: {e}")))?;
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Compiles `config`'s routes without serving them; returns how many there are. This is
/// what start-up and reload check before a file is used.
pub fn check(config: &GatewayConfig) -> Result<usize, LoadError> {
    crate::client::UpstreamTls::new(&config.http_client).map_err(|problem| LoadError::Invalid {
        file: config.file.clone(),
        route: None,
        field: "httpclient.ssl.trusted-x509-certificates".into(),
        problem,
    })?;
    RouteTable::build(config, &Shared::for_check()).map(|t| t.routes.len())
}

async fn connect_redis(
    settings: &crate::config::RedisSettings,
) -> Result<keel_ratelimit::RateLimiter, Error> {
    let store = keel_ratelimit::RedisStore::connect(&settings.url, settings.timeout)
        .await
        .map_err(|e| Error::Args {
            flag: "rate_limiter.redis.url",
            message: e.to_string(),
        })?;
    if !settings.fail_open_explicit {
        tracing::warn!(
            "rate_limiter.redis.fail_open is not set: when Redis is down, Redis rate limits let requests through (as Spring does); set it to say so explicitly"
        );
    }
    let mode = if settings.fail_open {
        keel_ratelimit::FailMode::Open
    } else {
        keel_ratelimit::FailMode::Closed
    };
    Ok(keel_ratelimit::RateLimiter::new(store, mode))
}

/// Runs `keel gateway` until SIGTERM/SIGINT.
pub async fn run(options: Options) -> Result<(), Error> {
    let mut config = match &options.config {
        Some(path) => GatewayConfig::load(path, &options.profiles)?,
        None => GatewayConfig::default(),
    };
    if let Some(l) = &options.listen {
        config.server.listen = crate::config::listen_address(l).map_err(|message| Error::Args {
            flag: "--listen",
            message,
        })?;
    }
    let _telemetry = keel_chassis::telemetry::init(
        "gateway",
        &keel_chassis::TelemetryConfig {
            otlp_endpoint: config.otlp_endpoint.clone(),
        },
    );
    let _ = keel_chassis::telemetry::prometheus();
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            keel_chassis::wait_for_signal().await;
            stop.cancel();
        });
    }
    serve(config, options.profiles, stop).await
}

/// Serves `config` until `stop` is cancelled, then drains.
pub async fn serve(
    config: GatewayConfig,
    profiles: Vec<String>,
    stop: CancellationToken,
) -> Result<(), Error> {
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.server.listen,
            source,
        })?;
    serve_on(listener, config, profiles, stop).await
}

/// One accepted client connection, before it is served.
struct Connection {
    gw: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    client: SocketAddr,
    /// `server.header_read_timeout`: how long the connection may go without a request in
    /// progress (see `idle`).
    idle_timeout: Duration,
    /// Asks the connection to finish its request in progress and close.
    stop: CancellationToken,
}

/// How long a connection closing for idleness gets to close gracefully before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

impl Connection {
    /// Serves HTTP/1.1 (or HTTP/2 when enabled) on `io` until the client or the upstream side
    /// ends it, `stop` is cancelled, or it has no request in progress for the idle timeout —
    /// which is also the time a client has to send a request head.
    async fn serve<I>(self, io: I, secure: bool)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            gw,
            builder,
            client,
            idle_timeout,
            stop,
        } = self;
        let peer = Arc::new(Peer::new(client, secure));
        let watch = Arc::new(ConnWatch::new());
        let svc = {
            let watch = watch.clone();
            service_fn(move |req| {
                let busy = watch.begin();
                gw.serve_request(req, &peer, client, secure)
                    .map(move |res| Ok::<_, Infallible>(res.map(|body| Tracked::new(body, busy))))
            })
        };
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        let cancelled = stop.cancelled();
        tokio::pin!(cancelled);
        let (mut stopping, mut expired) = (false, false);
        loop {
            tokio::select! {
                biased;
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = &mut cancelled, if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = &mut idle => match watch.check(idle_timeout, tokio::time::Instant::now()) {
                    Check::Expired if expired => return,
                    Check::Expired => {
                        tracing::debug!(%client, ?idle_timeout, "no request in progress or its head incomplete for the idle timeout: closing");
                        expired = true;
                        conn.as_mut().graceful_shutdown();
                        idle.as_mut().reset(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
                    }
                    Check::Until(at) => idle.as_mut().reset(at),
                },
            }
        }
    }
}

/// Headers hyper parses without allocating (its default limit).
const HYPER_STACK_HEADERS: usize = 100;

/// Serves `config` on an already bound listener until `stop` is cancelled.
pub async fn serve_on(
    listener: TcpListener,
    config: GatewayConfig,
    profiles: Vec<String>,
    stop: CancellationToken,
) -> Result<(), Error> {
    let tls = match &config.server.tls {
        None => None,
        Some(t) => Some(tls_acceptor(t, config.server.http2)?),
    };
    let gw = Gateway::new(&config, profiles).await?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.server.listen,
        source,
    })?;
    if config.reload.watch && config.file.is_some() {
        tokio::spawn(watch_file(gw.clone(), config.reload.interval, stop.clone()));
    }
    let admin_task = match config.admin.listen {
        Some(a) => {
            let l = TcpListener::bind(a)
                .await
                .map_err(|source| Error::Bind { addr: a, source })?;
            let router = gw.admin.clone();
            let stop = stop.clone();
            Some(tokio::spawn(async move {
                let _ = axum::serve(l, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
            }))
        }
        None => None,
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No hyper header-read timeout: it arms a timer per request. `idle::ConnWatch` keeps one
    // per connection with the same limit (see `Connection::serve`).
    builder.http1().max_buf_size(
        config
            .server
            .max_header_bytes
            .saturating_mul(4)
            .max(64 * 1024),
    );
    // hyper parses up to 100 headers into an array on the stack; a larger limit makes it
    // allocate that array on the heap for every request. Up to 100, `check_head` answers the
    // configured limit with a problem and hyper's own 431 (without a body) covers the rest.
    if config.server.max_headers > HYPER_STACK_HEADERS {
        builder.http1().max_headers(config.server.max_headers);
    }
    builder.http2().timer(TokioTimer::new());
    if !config.server.http2 {
        builder = builder.http1_only();
    }
    let builder = Arc::new(builder);
    gw.health.set_phase(Phase::Ready);
    tracing::info!(
        %addr,
        routes = gw.proxy.table.load().routes.len(),
        "keel gateway listening"
    );
    // Connections keep serving through the drain delay; `connections_stop` asks them to
    // finish once the listener has closed.
    let (connections, connections_stop) = (TaskTracker::new(), CancellationToken::new());
    let idle_timeout = config.server.header_read_timeout;
    // On stop, readiness turns DOWN at once; the listener keeps accepting for the drain
    // delay (so load balancers see DOWN before connections are refused), then closes.
    let closing = {
        let (stop, health, delay) = (stop.clone(), gw.health.clone(), config.server.drain_delay);
        async move {
            stop.cancelled().await;
            health.set_phase(Phase::Draining);
            tokio::time::sleep(delay).await;
        }
    };
    tokio::pin!(closing);
    loop {
        let (stream, client) = tokio::select! {
            () = &mut closing => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            gw: gw.clone(),
            builder: builder.clone(),
            client,
            idle_timeout,
            stop: connections_stop.clone(),
        };
        match &tls {
            None => {
                connections.spawn(conn.serve(stream, false));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(s)) => conn.serve(s, true).await,
                        Ok(Err(e)) => {
                            tracing::debug!(%client, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {}
                    }
                });
            }
        }
    }
    drop(listener);
    connections.close();
    connections_stop.cancel();
    if tokio::time::timeout(config.server.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; closing them");
    }
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    tracing::info!("keel gateway stopped");
    Ok(())
}
