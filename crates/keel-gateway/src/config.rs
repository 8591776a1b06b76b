//! The gateway's configuration: one YAML file, in Keel's layout or as a Spring Cloud Gateway
//! `application.yml` (see `docs/gateway.md`), read once at the edge into plain structs.
//!
//! Both layouts are the same tree read with Spring's relaxed binding; the gateway section is
//! `spring.cloud.gateway` (and `spring.cloud.gateway.server.webflux`, Spring Cloud Gateway
//! 4.3's name) merged with Keel's top-level `gateway`. Multi-document files are filtered by
//! profile first (`--profile`, else `spring.profiles.active`).
//!
//! Loading only checks shapes and values that need no context; predicates, filters, CORS,
//! JWT and composition are compiled by their modules when the route table is built, and
//! their errors name the route too.

pub(crate) mod profile;
pub mod spec;
pub(crate) mod tree;

use std::{
    collections::BTreeMap,
    net::{SocketAddr, ToSocketAddrs},
    path::{Path, PathBuf},
    time::Duration,
};

use keel_discovery::{DiscoveryConfig, SourceKind};
use keel_resilience::CircuitBreakerConfig;
use serde_json::{Map, Value};

pub use spec::{Args, Spec};
use tree::{lookup, merge, relax, scalar_string, string_list};

use crate::error::LoadError;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Everything the gateway runs from.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The file this came from (none: built in code).
    pub file: Option<PathBuf>,
    /// Listener settings.
    pub server: ServerSettings,
    /// Admin endpoints.
    pub admin: AdminSettings,
    /// Routes, in file order.
    pub routes: Vec<RouteDef>,
    /// Filters applied to every route before its own (`default-filters`).
    pub default_filters: Vec<Spec>,
    /// Global CORS: path pattern → configuration (compiled by `cors`).
    pub cors: Vec<(String, Value)>,
    /// The discovery locator (a route per registered service).
    pub locator: LocatorSettings,
    /// Where `lb://` instances come from; `None`: no discovery (then `lb://` routes fail to load).
    pub discovery: Option<DiscoveryConfig>,
    /// Upstream connections.
    pub http_client: HttpClientSettings,
    /// Circuit breaker settings by name (`resilience4j.circuitbreaker` or `gateway.circuit_breaker`).
    pub breakers: BreakerSettings,
    /// Rate limiter stores.
    pub rate_limiter: RateLimiterSettings,
    /// JWT validation (compiled by `auth`); `None`: no JWT filter may be used.
    pub jwt: Option<Value>,
    /// `X-Forwarded-*` and `Forwarded` on upstream requests.
    pub forwarded: ForwardedSettings,
    /// One log line per request.
    pub access_log: bool,
    /// Hot reload of the file.
    pub reload: ReloadSettings,
    /// OTLP span export endpoint.
    pub otlp_endpoint: Option<String>,
    /// Things in the file that are accepted but not supported, to be logged at start-up.
    pub warnings: Vec<String>,
}

/// One route as written.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteDef {
    /// Its id (generated as `route-N` when absent, as Spring generates one).
    pub id: String,
    /// `http://…`, `https://…`, `lb://service`, `ws://…`, `h2c://…`, `no://op`, or `forward:/path`.
    pub uri: Option<String>,
    /// Predicates, AND-combined.
    pub predicates: Vec<Spec>,
    /// Filters, applied in order after the default filters.
    pub filters: Vec<Spec>,
    /// Lower runs first; equal orders keep file order.
    pub order: i32,
    /// Free-form metadata (`response-timeout`, `connect-timeout`, `cors`, …).
    pub metadata: Map<String, Value>,
    /// Keel's API composition (makes this a composition route).
    pub compose: Option<Value>,
}

/// Listener settings (`server`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Accept HTTP/2 (h2c with prior knowledge, or ALPN over TLS). Default true.
    pub http2: bool,
    /// Largest request head (request line and headers), in bytes; 431 beyond it. Default 16 KiB.
    pub max_header_bytes: usize,
    /// Most request headers. Default 100.
    pub max_headers: usize,
    /// Largest request body, in bytes, on every route (a `RequestSize` filter may lower it).
    /// Default: no limit (bodies stream).
    pub max_body_bytes: Option<u64>,
    /// TLS termination.
    pub tls: Option<TlsSettings>,
    /// After SIGTERM, how long readiness reports DOWN before the listener closes.
    pub drain_delay: Duration,
    /// How long in-flight requests get to finish after the listener closes.
    pub shutdown_grace: Duration,
    /// How long a client has to send a request head (slow-loris protection). Default 30 s.
    pub header_read_timeout: Duration,
    /// How long a request body the gateway reads into memory (a small one, or one kept for a
    /// retry) may take to arrive, when no shorter upstream time limit applies. Default 60 s.
    pub body_read_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            http2: true,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: None,
            tls: None,
            drain_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(60),
        }
    }
}

/// TLS termination (`server.tls`, or Spring Boot's `server.ssl` PEM settings).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    /// Certificate chain, PEM.
    pub certificate: PathBuf,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
}

/// Admin endpoints (`/actuator/gateway/*`, health and metrics).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdminSettings {
    /// A separate listener for them (`management.server.port`); `None`: on the main listener.
    pub listen: Option<SocketAddr>,
    /// When set, admin endpoints other than the probes require `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

/// The discovery locator (`discovery.locator`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LocatorSettings {
    /// A route `/{service}/**` → `lb://service` (prefix stripped) per registered service.
    pub enabled: bool,
    /// Match the service id in lower case (Spring's `lower-case-service-id`). Keel's catalog
    /// is lower case anyway; this only affects the path predicate.
    pub lower_case_service_id: bool,
    /// Filters added to every located route, after the prefix is stripped.
    pub filters: Vec<Spec>,
    /// Order of the located routes (after the file's routes by default).
    pub order: i32,
}

/// Upstream connections (`httpclient`).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpClientSettings {
    /// Connect timeout. Default 5 s (Spring: 45 s).
    pub connect_timeout: Duration,
    /// Time to the response head. Default none (Spring: none).
    pub response_timeout: Option<Duration>,
    /// Idle pooled connections are closed after this long. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// Most idle connections kept per upstream. Default 256.
    pub pool_max_idle_per_host: usize,
    /// Accept any upstream certificate (testing only).
    pub insecure: bool,
    /// Extra trusted CA certificates for https:// upstreams (PEM files).
    pub trusted_certificates: Vec<PathBuf>,
}

impl Default for HttpClientSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            response_timeout: None,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            insecure: false,
            trusted_certificates: Vec::new(),
        }
    }
}

/// Circuit breaker settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BreakerSettings {
    /// For breakers without their own entry.
    pub default: CircuitBreakerConfig,
    /// By breaker name.
    pub instances: BTreeMap<String, CircuitBreakerConfig>,
    /// Time limit of a breaker's call (`resilience4j.timelimiter`), default.
    pub default_time_limit: Option<Duration>,
    /// Time limits by breaker name.
    pub time_limits: BTreeMap<String, Duration>,
}

impl BreakerSettings {
    /// The configuration of the breaker called `name`.
    pub fn config(&self, name: &str) -> CircuitBreakerConfig {
        self.instances
            .get(name)
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }

    /// The time limit of the breaker called `name`.
    pub fn time_limit(&self, name: &str) -> Option<Duration> {
        self.time_limits
            .get(name)
            .copied()
            .or(self.default_time_limit)
    }
}

/// Rate limiter stores.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimiterSettings {
    /// The Redis store, used by routes whose limiter says `store: redis` (or Spring's
    /// `redis-rate-limiter.*` arguments).
    pub redis: RedisSettings,
    /// Refuse requests whose key cannot be determined (Spring's `deny-empty-key`). Default true.
    pub deny_empty_key: bool,
    /// Status for such requests. Default 403.
    pub empty_key_status: u16,
}

impl Default for RateLimiterSettings {
    fn default() -> Self {
        Self {
            redis: RedisSettings::default(),
            deny_empty_key: true,
            empty_key_status: 403,
        }
    }
}

/// The Redis store.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisSettings {
    /// `redis://host:port/db`. Default `redis://127.0.0.1:6379` (Spring's default).
    pub url: String,
    /// When Redis cannot be reached: let requests through (true) or refuse them with 503
    /// (false).
    pub fail_open: bool,
    /// Whether `fail_open` was written in the file (a warning is logged when a Redis limiter
    /// is used without it).
    pub fail_open_explicit: bool,
    /// Longest wait for Redis per request before it counts as unreachable. Default 100 ms.
    pub timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            fail_open: true,
            fail_open_explicit: false,
            timeout: Duration::from_millis(100),
        }
    }
}

/// Forwarding headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwardedSettings {
    /// `X-Forwarded-For`, `-Proto`, `-Host`, `-Port`, `-Prefix`. Default true.
    pub x_forwarded: bool,
    /// RFC 7239 `Forwarded`. Default true.
    pub forwarded: bool,
}

impl Default for ForwardedSettings {
    fn default() -> Self {
        Self {
            x_forwarded: true,
            forwarded: true,
        }
    }
}

/// Hot reload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReloadSettings {
    /// Watch the file and reload when it changes. Default true.
    pub watch: bool,
    /// How often to look. Default 1 s.
    pub interval: Duration,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        Self {
            watch: true,
            interval: Duration::from_secs(1),
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            file: None,
            server: ServerSettings::default(),
            admin: AdminSettings::default(),
            routes: Vec::new(),
            default_filters: Vec::new(),
            cors: Vec::new(),
            locator: LocatorSettings {
                order: 10_000,
                ..LocatorSettings::default()
            },
            discovery: None,
            http_client: HttpClientSettings::default(),
            breakers: BreakerSettings::default(),
            rate_limiter: RateLimiterSettings::default(),
            jwt: None,
            forwarded: ForwardedSettings::default(),
            access_log: true,
            reload: ReloadSettings::default(),
            otlp_endpoint: None,
            warnings: Vec::new(),
        }
    }
}

/// A problem found in the file, before the file name is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) route: Option<String>,
    pub(crate) field: String,
    pub(crate) message: String,
}

impl Problem {
    pub(crate) fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            route: None,
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn in_route(mut self, id: &str) -> Self {
        self.route = Some(id.to_owned());
        self
    }

    pub(crate) fn into_load_error(self, file: Option<&Path>) -> LoadError {
        LoadError::Invalid {
            file: file.map(Path::to_path_buf),
            route: self.route,
            field: self.field,
            problem: self.message,
        }
    }
}

impl GatewayConfig {
    /// Reads `path`, keeping the documents of `profiles`.
    pub fn load(path: &Path, profiles: &[String]) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, Some(path), profiles)
    }

    /// Parses a route file's text (`file` is used in messages).
    pub fn parse(text: &str, file: Option<&Path>, profiles: &[String]) -> Result<Self, LoadError> {
        let tree = tree::parse_documents(text, profiles).map_err(|message| LoadError::Invalid {
            file: file.map(Path::to_path_buf),
            route: None,
            field: String::new(),
            problem: message,
        })?;
        let mut config = from_tree(&tree).map_err(|p| p.into_load_error(file))?;
        config.file = file.map(Path::to_path_buf);
        Ok(config)
    }
}

/// The merged gateway section.
fn gateway_section(tree: &Value) -> Value {
    let mut section = Value::Object(Map::new());
    for path in [
        "spring.cloud.gateway",
        "spring.cloud.gateway.server.webflux",
        "gateway",
    ] {
        if let Some(v) = lookup(tree, path)
            && v.is_object()
        {
            let mut v = v.clone();
            // `server.webflux` lives inside `spring.cloud.gateway`; don't merge it twice.
            if let Some(m) = v.as_object_mut() {
                m.retain(|k, _| relax(k) != "server");
            }
            merge(&mut section, v);
        }
    }
    section
}

fn from_tree(tree: &Value) -> Result<GatewayConfig, Problem> {
    let mut c = GatewayConfig::default();
    let gw = gateway_section(tree);
    let get = |path: &str| lookup(&gw, path).filter(|v| !v.is_null());

    server(tree, &mut c)?;
    admin(tree, &gw, &mut c)?;

    // Routes.
    if let Some(routes) = get("routes") {
        let list = routes
            .as_array()
            .ok_or_else(|| Problem::at("routes", "must be a list of routes"))?;
        for (n, r) in list.iter().enumerate() {
            c.routes.push(route(r, n)?);
        }
    }
    let mut seen = std::collections::HashSet::new();
    for r in &c.routes {
        if !seen.insert(r.id.clone()) {
            return Err(Problem::at("id", "the id is used by another route").in_route(&r.id));
        }
    }
    if let Some(df) = get("default_filters") {
        c.default_filters = specs(df, "default_filters")?;
    }

    // CORS.
    if let Some(configs) = get("globalcors.cors_configurations") {
        let map = configs.as_object().ok_or_else(|| {
            Problem::at(
                "globalcors.cors_configurations",
                "must map path patterns to settings",
            )
        })?;
        for (pattern, v) in map {
            let pattern = pattern
                .strip_prefix('[')
                .and_then(|p| p.strip_suffix(']'))
                .unwrap_or(pattern);
            c.cors.push((pattern.to_owned(), v.clone()));
        }
    }

    // Discovery.
    if let Some(loc) = get("discovery.locator") {
        let field = |f: &str| format!("discovery.locator.{f}");
        c.locator.enabled = opt(loc, "enabled", spec::boolean, &field("enabled"))?.unwrap_or(false);
        c.locator.lower_case_service_id = opt(
            loc,
            "lower_case_service_id",
            spec::boolean,
            &field("lower_case_service_id"),
        )?
        .unwrap_or(false);
        if let Some(f) = lookup(loc, "filters").filter(|v| !v.is_null()) {
            c.locator.filters = specs(f, &field("filters"))?;
        }
        if let Some(o) = opt(loc, "order", signed, &field("order"))? {
            c.locator.order = o;
        }
        for unsupported in ["predicates", "url_expression", "include_expression"] {
            if lookup(loc, unsupported).is_some() {
                c.warnings.push(format!(
                    "discovery.locator.{unsupported} (a SpEL expression) is not supported; \
                     located routes use Path=/{{service}}/** and strip the prefix"
                ));
            }
        }
    }
    c.discovery = discovery(tree, &gw)?;

    http_client(&gw, &mut c)?;
    breakers(tree, &gw, &mut c)?;
    rate_limiter(tree, &gw, &mut c)?;
    c.jwt = jwt(tree, &gw);

    if let Some(v) = get("x_forwarded.enabled") {
        c.forwarded.x_forwarded =
            spec::boolean(v).map_err(|e| Problem::at("x_forwarded.enabled", e))?;
    }
    if let Some(v) = get("forwarded.enabled") {
        c.forwarded.forwarded =
            spec::boolean(v).map_err(|e| Problem::at("forwarded.enabled", e))?;
    }
    if let Some(v) = get("access_log") {
        c.access_log = spec::boolean(v).map_err(|e| Problem::at("access_log", e))?;
    }
    if let Some(r) = get("reload") {
        if let Some(w) = opt(r, "enabled", spec::boolean, "reload.enabled")? {
            c.reload.watch = w;
        }
        if let Some(i) = opt(r, "interval", spec::duration, "reload.interval")? {
            if i.is_zero() {
                return Err(Problem::at("reload.interval", "must be greater than 0"));
            }
            c.reload.interval = i;
        }
    }
    c.otlp_endpoint = lookup(tree, "telemetry.otlp_endpoint").and_then(scalar_string);

    for ignored in ["httpclient.wiretap", "httpserver.wiretap", "metrics.tags"] {
        if get(ignored).is_some() {
            c.warnings
                .push(format!("{ignored} is not supported and is ignored"));
        }
    }
    Ok(c)
}

/// An optional value at `key` of `node`, converted.
fn opt<T>(
    node: &Value,
    key: &str,
    conv: impl Fn(&Value) -> Result<T, String>,
    field: &str,
) -> Result<Option<T>, Problem> {
    match lookup(node, key).filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => conv(v).map(Some).map_err(|e| Problem::at(field, e)),
    }
}

fn signed(v: &Value) -> Result<i32, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .ok_or_else(|| format!("{n} is not a 32-bit integer")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an integer")),
        other => Err(format!("{other} is not an integer")),
    }
}

fn string(v: &Value) -> Result<String, String> {
    scalar_string(v).ok_or_else(|| format!("{v} is not a single value"))
}

fn specs(v: &Value, field: &str) -> Result<Vec<Spec>, Problem> {
    let list = v
        .as_array()
        .ok_or_else(|| Problem::at(field, "must be a list"))?;
    list.iter()
        .enumerate()
        .map(|(n, item)| Spec::parse(item).map_err(|e| Problem::at(format!("{field}[{n}]"), e)))
        .collect()
}

fn route(v: &Value, n: usize) -> Result<RouteDef, Problem> {
    let map = v
        .as_object()
        .ok_or_else(|| Problem::at(format!("routes[{n}]"), "a route must be a map"))?;
    let id = map
        .iter()
        .find(|(k, _)| relax(k) == "id")
        .and_then(|(_, v)| scalar_string(v))
        .unwrap_or_else(|| format!("route-{n}"));
    if id.trim().is_empty() {
        return Err(Problem::at(format!("routes[{n}].id"), "must not be empty"));
    }
    let mut r = RouteDef {
        id: id.clone(),
        uri: None,
        predicates: Vec::new(),
        filters: Vec::new(),
        order: 0,
        metadata: Map::new(),
        compose: None,
    };
    let in_route = |p: Problem| p.in_route(&id);
    for (k, v) in map {
        match relax(k).as_str() {
            "id" => {}
            "uri" => r.uri = Some(string(v).map_err(|e| in_route(Problem::at("uri", e)))?),
            "predicates" => r.predicates = specs(v, "predicates").map_err(in_route)?,
            "filters" => r.filters = specs(v, "filters").map_err(in_route)?,
            "order" => r.order = signed(v).map_err(|e| in_route(Problem::at("order", e)))?,
            "metadata" => {
                r.metadata = v
                    .as_object()
                    .cloned()
                    .ok_or_else(|| in_route(Problem::at("metadata", "must be a map")))?;
            }
            "compose" => r.compose = Some(v.clone()),
            "enabled" => {}
            other => {
                return Err(in_route(Problem::at(
                    other,
                    "unknown route key (a route has id, uri, predicates, filters, order, metadata, compose)",
                )));
            }
        }
    }
    let disabled = map
        .iter()
        .find(|(k, _)| relax(k) == "enabled")
        .map(|(_, v)| spec::boolean(v))
        .transpose()
        .map_err(|e| in_route(Problem::at("enabled", e)))?
        == Some(false);
    if disabled {
        // A disabled route keeps no predicates, so it never matches; it still shows.
        r.predicates.clear();
        r.predicates.push(
            Spec::parse(&Value::String("Never".into()))
                .map_err(|e| in_route(Problem::at("enabled", e)))?,
        );
    }
    match (&r.uri, &r.compose) {
        (None, None) => {
            return Err(in_route(Problem::at(
                "uri",
                "missing (every route needs a uri, or `compose`)",
            )));
        }
        (Some(_), Some(_)) => {
            return Err(in_route(Problem::at(
                "compose",
                "a composition route has no uri",
            )));
        }
        _ => {}
    }
    Ok(r)
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(port) = text.trim_start_matches(':').parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not an address (host:port)"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{text:?} has an invalid port"))?;
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("cannot resolve {host:?}"))
}

/// Parses a `--listen` value (`127.0.0.1:8080`, `0.0.0.0:80`, `localhost:8080`, `:8080`).
pub fn listen_address(text: &str) -> Result<SocketAddr, String> {
    parse_listen(text)
}

fn server(tree: &Value, c: &mut GatewayConfig) -> Result<(), Problem> {
    let Some(s) = lookup(tree, "server").filter(|v| v.is_object()) else {
        return Ok(());
    };
    if let Some(l) = opt(s, "listen", string, "server.listen")? {
        c.server.listen = parse_listen(&l).map_err(|e| Problem::at("server.listen", e))?;
    } else {
        let port = opt(s, "port", spec::integer, "server.port")?;
        let address = opt(s, "address", string, "server.address")?;
        if port.is_some() || address.is_some() {
            let port = port.unwrap_or(8080);
            let port = u16::try_from(port)
                .map_err(|_| Problem::at("server.port", format!("{port} is not a port")))?;
            let host = address.unwrap_or_else(|| "127.0.0.1".to_owned());
            c.server.listen = parse_listen(&format!("{host}:{port}"))
                .or_else(|_| parse_listen(&format!("[{host}]:{port}")))
                .map_err(|e| Problem::at("server.address", e))?;
        }
    }
    if let Some(h) = opt(s, "http2.enabled", spec::boolean, "server.http2.enabled")? {
        c.server.http2 = h;
    } else if let Some(h) = opt(s, "http2", spec::boolean, "server.http2")? {
        c.server.http2 = h;
    }
    for key in [
        "max_header_bytes",
        "max_http_request_header_size",
        "max_http_header_size",
    ] {
        if let Some(v) = opt(s, key, spec::size, &format!("server.{key}"))? {
            if v < 256 {
                return Err(Problem::at(
                    format!("server.{key}"),
                    "must be at least 256 bytes",
                ));
            }
            c.server.max_header_bytes = usize::try_from(v).unwrap_or(usize::MAX).min(1 << 20);
        }
    }
    if let Some(v) = opt(s, "max_headers", spec::integer, "server.max_headers")? {
        c.server.max_headers = usize::try_from(v).unwrap_or(usize::MAX).clamp(8, 10_000);
    }
    if let Some(v) = opt(s, "max_body_bytes", spec::size, "server.max_body_bytes")? {
        c.server.max_body_bytes = Some(v);
    }
    if let Some(v) = opt(s, "drain_delay", spec::duration, "server.drain_delay")? {
        c.server.drain_delay = v;
    }
    if let Some(v) = opt(s, "shutdown_grace", spec::duration, "server.shutdown_grace")? {
        if v.is_zero() {
            return Err(Problem::at(
                "server.shutdown_grace",
                "must be greater than 0",
            ));
        }
        c.server.shutdown_grace = v;
    } else if let Some(v) = lookup(tree, "spring.lifecycle.timeout_per_shutdown_phase") {
        c.server.shutdown_grace = spec::duration(v)
            .map_err(|e| Problem::at("spring.lifecycle.timeout-per-shutdown-phase", e))?;
    }
    if let Some(v) = opt(
        s,
        "header_read_timeout",
        spec::duration,
        "server.header_read_timeout",
    )? {
        c.server.header_read_timeout = v.max(Duration::from_millis(1));
    }
    if let Some(v) = opt(
        s,
        "body_read_timeout",
        spec::duration,
        "server.body_read_timeout",
    )? {
        c.server.body_read_timeout = v.max(Duration::from_millis(1));
    }
    // TLS: Keel's `server.tls` or Spring Boot's PEM `server.ssl`.
    let tls = lookup(s, "tls")
        .filter(|v| v.is_object())
        .map(|t| ("server.tls", t));
    let ssl = lookup(s, "ssl")
        .filter(|v| v.is_object())
        .map(|t| ("server.ssl", t));
    if let Some((field, t)) = tls.or(ssl) {
        let enabled =
            opt(t, "enabled", spec::boolean, &format!("{field}.enabled"))?.unwrap_or(true);
        if enabled {
            if lookup(t, "key_store").is_some() {
                return Err(Problem::at(
                    format!("{field}.key-store"),
                    "Java key stores are not supported; use PEM files (certificate, certificate-private-key)",
                ));
            }
            let cert = opt(t, "certificate", string, &format!("{field}.certificate"))?.ok_or_else(
                || Problem::at(format!("{field}.certificate"), "missing (a PEM file)"),
            )?;
            let key = opt(t, "private_key", string, &format!("{field}.private_key"))?
                .or(opt(
                    t,
                    "certificate_private_key",
                    string,
                    &format!("{field}.certificate-private-key"),
                )?)
                .ok_or_else(|| {
                    Problem::at(format!("{field}.private_key"), "missing (a PEM file)")
                })?;
            let file = |s: String| PathBuf::from(s.trim_start_matches("file:"));
            c.server.tls = Some(TlsSettings {
                certificate: file(cert),
                private_key: file(key),
            });
        }
    }
    Ok(())
}

fn admin(tree: &Value, gw: &Value, c: &mut GatewayConfig) -> Result<(), Problem> {
    if let Some(port) = opt(
        tree,
        "management.server.port",
        spec::integer,
        "management.server.port",
    )? {
        let port = u16::try_from(port)
            .map_err(|_| Problem::at("management.server.port", format!("{port} is not a port")))?;
        let host = lookup(tree, "management.server.address")
            .and_then(scalar_string)
            .unwrap_or_else(|| c.server.listen.ip().to_string());
        c.admin.listen = Some(
            parse_listen(&format!("{host}:{port}"))
                .or_else(|_| parse_listen(&format!("[{host}]:{port}")))
                .map_err(|e| Problem::at("management.server.address", e))?,
        );
    }
    if let Some(l) = opt(tree, "management.listen", string, "management.listen")? {
        c.admin.listen = Some(parse_listen(&l).map_err(|e| Problem::at("management.listen", e))?);
    }
    let token = lookup(tree, "management.token")
        .or_else(|| lookup(gw, "admin_token"))
        .and_then(scalar_string);
    if let Some(t) = &token
        && t.trim().is_empty()
    {
        return Err(Problem::at(
            "management.token",
            "must not be empty when set",
        ));
    }
    c.admin.token = token;
    Ok(())
}

fn discovery(tree: &Value, gw: &Value) -> Result<Option<DiscoveryConfig>, Problem> {
    let d = lookup(gw, "discovery");
    let mut config = DiscoveryConfig::default();
    let mut any = false;
    if let Some(d) = d.filter(|v| v.is_object()) {
        if let Some(s) = opt(d, "source", string, "discovery.source")? {
            config.source = match s.to_ascii_lowercase().as_str() {
                "registry" => SourceKind::Registry,
                "eureka" => SourceKind::Eureka,
                "static" => SourceKind::Static,
                "dns" => SourceKind::Dns,
                other => {
                    return Err(Problem::at(
                        "discovery.source",
                        format!("{other:?} is not one of registry, eureka, static, dns"),
                    ));
                }
            };
            any = true;
        }
        if let Some(r) = lookup(d, "registry").filter(|v| !v.is_null()) {
            config.registry = string_list(r);
            any = true;
        }
        if let Some(ms) = opt(
            d,
            "poll_interval",
            spec::duration,
            "discovery.poll_interval",
        )? {
            config.poll_interval_ms = u64::try_from(ms.as_millis()).unwrap_or(u64::MAX).max(1);
        }
        if let Some(s) = lookup(d, "services").and_then(Value::as_object) {
            for (svc, urls) in s {
                config
                    .services
                    .insert(svc.to_ascii_lowercase(), string_list(urls));
            }
            if !s.is_empty() && lookup(d, "source").is_none() {
                config.source = SourceKind::Static;
            }
            any = true;
        }
        if let Some(s) = lookup(d, "dns").and_then(Value::as_object) {
            for (svc, target) in s {
                if let Some(t) = scalar_string(target) {
                    config.dns.insert(svc.to_ascii_lowercase(), t);
                }
            }
            any = true;
        }
    }
    // Spring Cloud Netflix: eureka.client.service-url.defaultZone.
    if !any && let Some(zone) = lookup(tree, "eureka.client.service_url.default_zone") {
        let enabled = lookup(tree, "eureka.client.enabled")
            .map(spec::boolean)
            .transpose()
            .map_err(|e| Problem::at("eureka.client.enabled", e))?
            .unwrap_or(true);
        if enabled {
            config.source = SourceKind::Eureka;
            config.registry = string_list(zone);
            any = true;
        }
    }
    if !any {
        return Ok(None);
    }
    config
        .validate()
        .map_err(|(field, message)| Problem::at(format!("discovery.{field}"), message))?;
    Ok(Some(config))
}

fn http_client(gw: &Value, c: &mut GatewayConfig) -> Result<(), Problem> {
    let Some(h) = lookup(gw, "httpclient").filter(|v| v.is_object()) else {
        return Ok(());
    };
    if let Some(v) = opt(
        h,
        "connect_timeout",
        spec::duration,
        "httpclient.connect-timeout",
    )? {
        if v.is_zero() {
            return Err(Problem::at(
                "httpclient.connect-timeout",
                "must be greater than 0",
            ));
        }
        c.http_client.connect_timeout = v;
    }
    if let Some(v) = opt(
        h,
        "response_timeout",
        spec::duration,
        "httpclient.response-timeout",
    )? {
        c.http_client.response_timeout = (!v.is_zero()).then_some(v);
    }
    if let Some(v) = opt(
        h,
        "pool.max_idle_time",
        spec::duration,
        "httpclient.pool.max-idle-time",
    )? {
        c.http_client.pool_idle_timeout = v;
    }
    if let Some(v) = opt(
        h,
        "pool.max_idle_per_host",
        spec::integer,
        "httpclient.pool.max-idle-per-host",
    )? {
        c.http_client.pool_max_idle_per_host = usize::try_from(v).unwrap_or(usize::MAX);
    }
    if let Some(v) = opt(
        h,
        "ssl.use_insecure_trust_manager",
        spec::boolean,
        "httpclient.ssl.use-insecure-trust-manager",
    )? {
        c.http_client.insecure = v;
    }
    if let Some(v) = lookup(h, "ssl.trusted_x509_certificates").filter(|v| !v.is_null()) {
        c.http_client.trusted_certificates = string_list(v)
            .into_iter()
            .map(|s| PathBuf::from(s.trim_start_matches("file:")))
            .collect();
    }
    Ok(())
}

/// Reads Resilience4j's settings (camelCase or snake_case keys; durations as numbers of
/// milliseconds or `5s`) over `base`.
fn breaker_config(
    base: &CircuitBreakerConfig,
    v: &Value,
    field: &str,
) -> Result<CircuitBreakerConfig, Problem> {
    use keel_resilience::SlidingWindowType;
    let obj = v
        .as_object()
        .ok_or_else(|| Problem::at(field, "must be a map of circuit breaker settings"))?;
    let mut c = base.clone();
    for (k, val) in obj {
        let at = |e: String| Problem::at(format!("{field}.{k}"), e);
        let percent = |v: &Value| -> Result<f32, String> {
            let n = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            };
            n.map(|n| n as f32)
                .ok_or_else(|| format!("{v} is not a number"))
        };
        let count = |v: &Value| -> Result<u32, String> {
            spec::integer(v).and_then(|n| u32::try_from(n).map_err(|_| format!("{n} is too large")))
        };
        // Accept `..._ms` spellings too.
        let key = relax(k);
        match key.trim_end_matches("_ms") {
            "failure_rate_threshold" => c.failure_rate_threshold = percent(val).map_err(at)?,
            "slow_call_rate_threshold" => c.slow_call_rate_threshold = percent(val).map_err(at)?,
            "slow_call_duration_threshold" => {
                c.slow_call_duration_threshold = spec::duration(val).map_err(at)?;
            }
            "permitted_number_of_calls_in_half_open_state" => {
                c.permitted_number_of_calls_in_half_open_state = count(val).map_err(at)?;
            }
            "max_wait_duration_in_half_open_state" => {
                c.max_wait_duration_in_half_open_state = spec::duration(val).map_err(at)?;
            }
            "sliding_window_type" => {
                c.sliding_window_type = match string(val).map_err(at)?.to_ascii_uppercase().as_str()
                {
                    "COUNT_BASED" => SlidingWindowType::CountBased,
                    "TIME_BASED" => SlidingWindowType::TimeBased,
                    other => return Err(at(format!("{other:?} is not COUNT_BASED or TIME_BASED"))),
                };
            }
            "sliding_window_size" => c.sliding_window_size = count(val).map_err(at)?,
            "minimum_number_of_calls" => c.minimum_number_of_calls = count(val).map_err(at)?,
            "wait_duration_in_open_state" => {
                c.wait_duration_in_open_state = spec::duration(val).map_err(at)?;
            }
            "automatic_transition_from_open_to_half_open_enabled" => {
                c.automatic_transition_from_open_to_half_open_enabled =
                    spec::boolean(val).map_err(at)?;
            }
            // Java-only settings with no meaning here.
            "base_config"
            | "register_health_indicator"
            | "event_consumer_buffer_size"
            | "record_exceptions"
            | "ignore_exceptions"
            | "writable_stack_trace_enabled"
            | "record_failure_predicate"
            | "ignore_exception_predicate" => {}
            other => return Err(at(format!("unknown circuit breaker setting `{other}`"))),
        }
    }
    c.validate().map_err(|e| {
        Problem::at(
            format!("{field}.{}", e.parameter().trim_end_matches("_ms")),
            e.reason().to_owned(),
        )
    })?;
    Ok(c)
}

fn breakers(tree: &Value, gw: &Value, c: &mut GatewayConfig) -> Result<(), Problem> {
    for (root, field) in [
        (
            lookup(tree, "resilience4j.circuitbreaker"),
            "resilience4j.circuitbreaker",
        ),
        (lookup(gw, "circuit_breaker"), "gateway.circuit_breaker"),
    ] {
        let Some(root) = root.filter(|v| v.is_object()) else {
            continue;
        };
        let default = lookup(root, "configs.default").or_else(|| lookup(root, "default"));
        if let Some(d) = default {
            c.breakers.default =
                breaker_config(&c.breakers.default, d, &format!("{field}.configs.default"))?;
        }
        if let Some(instances) = lookup(root, "instances").and_then(Value::as_object) {
            for (name, v) in instances {
                let cfg =
                    breaker_config(&c.breakers.default, v, &format!("{field}.instances.{name}"))?;
                c.breakers.instances.insert(name.clone(), cfg);
            }
        }
    }
    if let Some(tl) = lookup(tree, "resilience4j.timelimiter").filter(|v| v.is_object()) {
        let field = "resilience4j.timelimiter";
        let default = lookup(tl, "configs.default.timeout_duration");
        if let Some(d) = default {
            c.breakers.default_time_limit = Some(spec::duration(d).map_err(|e| {
                Problem::at(format!("{field}.configs.default.timeout-duration"), e)
            })?);
        }
        if let Some(instances) = lookup(tl, "instances").and_then(Value::as_object) {
            for (name, v) in instances {
                if let Some(d) = lookup(v, "timeout_duration") {
                    let d = spec::duration(d).map_err(|e| {
                        Problem::at(format!("{field}.instances.{name}.timeout-duration"), e)
                    })?;
                    c.breakers.time_limits.insert(name.clone(), d);
                }
            }
        }
    }
    Ok(())
}

fn rate_limiter(tree: &Value, gw: &Value, c: &mut GatewayConfig) -> Result<(), Problem> {
    // Spring Boot's Redis connection.
    for root in ["spring.data.redis", "spring.redis"] {
        if let Some(r) = lookup(tree, root).filter(|v| v.is_object()) {
            if let Some(url) = lookup(r, "url").and_then(scalar_string) {
                c.rate_limiter.redis.url = url;
            } else {
                let host = lookup(r, "host")
                    .and_then(scalar_string)
                    .unwrap_or_else(|| "127.0.0.1".into());
                let port = lookup(r, "port")
                    .and_then(scalar_string)
                    .unwrap_or_else(|| "6379".into());
                let db = lookup(r, "database")
                    .and_then(scalar_string)
                    .unwrap_or_else(|| "0".into());
                let auth = match lookup(r, "password").and_then(scalar_string) {
                    Some(p) => format!(":{p}@"),
                    None => String::new(),
                };
                c.rate_limiter.redis.url = format!("redis://{auth}{host}:{port}/{db}");
            }
            break;
        }
    }
    if let Some(f) = lookup(gw, "filter.request_rate_limiter").filter(|v| v.is_object()) {
        let field = "filter.request-rate-limiter";
        if let Some(v) = opt(
            f,
            "deny_empty_key",
            spec::boolean,
            &format!("{field}.deny-empty-key"),
        )? {
            c.rate_limiter.deny_empty_key = v;
        }
        if let Some(v) = opt(
            f,
            "empty_key_status_code",
            string,
            &format!("{field}.empty-key-status-code"),
        )? {
            c.rate_limiter.empty_key_status = spec::status(&v)
                .map_err(|e| Problem::at(format!("{field}.empty-key-status-code"), e))?
                .as_u16();
        }
    }
    if let Some(r) = lookup(gw, "rate_limiter").filter(|v| v.is_object()) {
        if let Some(v) = opt(r, "redis.url", string, "rate_limiter.redis.url")? {
            c.rate_limiter.redis.url = v;
        }
        if let Some(v) = opt(
            r,
            "redis.fail_open",
            spec::boolean,
            "rate_limiter.redis.fail_open",
        )? {
            c.rate_limiter.redis.fail_open = v;
            c.rate_limiter.redis.fail_open_explicit = true;
        }
        if let Some(v) = opt(
            r,
            "redis.timeout",
            spec::duration,
            "rate_limiter.redis.timeout",
        )? {
            if v.is_zero() {
                return Err(Problem::at(
                    "rate_limiter.redis.timeout",
                    "must be greater than 0",
                ));
            }
            c.rate_limiter.redis.timeout = v;
        }
        if let Some(v) = opt(
            r,
            "deny_empty_key",
            spec::boolean,
            "rate_limiter.deny_empty_key",
        )? {
            c.rate_limiter.deny_empty_key = v;
        }
        if let Some(v) = opt(
            r,
            "empty_key_status",
            string,
            "rate_limiter.empty_key_status",
        )? {
            c.rate_limiter.empty_key_status = spec::status(&v)
                .map_err(|e| Problem::at("rate_limiter.empty_key_status", e))?
                .as_u16();
        }
    }
    if !c.rate_limiter.redis.url.starts_with("redis://")
        && !c.rate_limiter.redis.url.starts_with("rediss://")
    {
        return Err(Problem::at(
            "rate_limiter.redis.url",
            format!("{:?} is not a redis:// URL", c.rate_limiter.redis.url),
        ));
    }
    Ok(())
}

/// Keel's `gateway.jwt`, or Spring Security's resource-server settings.
fn jwt(tree: &Value, gw: &Value) -> Option<Value> {
    if let Some(j) = lookup(gw, "jwt").filter(|v| v.is_object()) {
        return Some(j.clone());
    }
    let spring =
        lookup(tree, "spring.security.oauth2.resourceserver.jwt").filter(|v| v.is_object())?;
    let mut out = Map::new();
    if let Some(u) = lookup(spring, "jwk_set_uri").and_then(scalar_string) {
        out.insert("jwks_uri".into(), Value::String(u));
    }
    if let Some(u) = lookup(spring, "issuer_uri").and_then(scalar_string) {
        out.insert("issuer".into(), Value::String(u));
    }
    if let Some(a) = lookup(spring, "audiences") {
        out.insert("audiences".into(), a.clone());
    }
    if let Some(p) = lookup(spring, "public_key_location").and_then(scalar_string) {
        out.insert(
            "keys".into(),
            serde_json::json!([{ "pem_file": p.trim_start_matches("file:").trim_start_matches("classpath:"), "alg": "RS256" }]),
        );
    }
    Some(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GatewayConfig, LoadError> {
        GatewayConfig::parse(text, Some(Path::new("routes.yaml")), &[])
    }

    #[test]
    fn keel_layout() {
        let c = parse(
            r#"
server:
  listen: 127.0.0.1:9000
gateway:
  routes:
    - id: orders
      uri: http://127.0.0.1:8081
      order: 2
      predicates: [Path=/orders/**]
      filters: [StripPrefix=1]
      metadata: { response-timeout: 200 }
  default-filters: [AddResponseHeader=X-Gw, keel]
"#,
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 9000);
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].id, "orders");
        assert_eq!(c.routes[0].order, 2);
        assert_eq!(c.routes[0].predicates[0].name, "Path");
        assert_eq!(c.routes[0].metadata["response-timeout"], 200);
        assert_eq!(c.default_filters[0].name, "AddResponseHeader");
    }

    #[test]
    fn spring_layout() {
        let c = parse(
            r#"
server:
  port: 8085
spring:
  application:
    name: gateway
  cloud:
    gateway:
      default-filters:
        - DedupeResponseHeader=Access-Control-Allow-Origin
      globalcors:
        cors-configurations:
          '[/**]':
            allowedOrigins: "https://docs.spring.io"
            allowedMethods: [GET]
      routes:
        - id: cookie_route
          uri: https://example.org
          predicates:
            - name: Cookie
              args:
                name: mycookie
                regexp: mycookievalue
      discovery:
        locator:
          enabled: true
          lower-case-service-id: true
      httpclient:
        connect-timeout: 1000
        response-timeout: 5s
resilience4j:
  circuitbreaker:
    instances:
      myCircuitBreaker:
        slidingWindowSize: 4
        minimumNumberOfCalls: 2
        waitDurationInOpenState: 5000
  timelimiter:
    instances:
      myCircuitBreaker:
        timeoutDuration: 2s
eureka:
  client:
    service-url:
      defaultZone: http://127.0.0.1:8761/eureka/
"#,
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 8085);
        assert_eq!(c.routes[0].id, "cookie_route");
        assert_eq!(c.cors[0].0, "/**");
        assert!(c.locator.enabled && c.locator.lower_case_service_id);
        assert_eq!(c.http_client.connect_timeout, Duration::from_secs(1));
        assert_eq!(c.http_client.response_timeout, Some(Duration::from_secs(5)));
        let b = c.breakers.config("myCircuitBreaker");
        assert_eq!(b.sliding_window_size, 4);
        assert_eq!(b.wait_duration_in_open_state, Duration::from_secs(5));
        assert_eq!(
            c.breakers.time_limit("myCircuitBreaker"),
            Some(Duration::from_secs(2))
        );
        let d = c.discovery.unwrap();
        assert_eq!(d.source, SourceKind::Eureka);
    }

    #[test]
    fn newer_spring_section_name() {
        let c =
            parse("spring.cloud.gateway.server.webflux.routes:\n  - id: a\n    uri: http://x\n")
                .unwrap();
        assert_eq!(c.routes[0].id, "a");
    }

    #[test]
    fn errors_name_file_route_and_field() {
        let e = parse("gateway:\n  routes:\n    - id: a\n      predicates: [Path=/x]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("routes.yaml") && e.contains("\"a\"") && e.contains("uri"),
            "{e}"
        );
        let e = parse("gateway:\n  routes:\n    - id: a\n      uri: http://x\n      filterz: []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("filterz"), "{e}");
        let e = parse(
            "gateway:\n  routes:\n    - {id: a, uri: 'http://x'}\n    - {id: a, uri: 'http://y'}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("another route"), "{e}");
        let e = parse("server:\n  port: 99999\n").unwrap_err().to_string();
        assert!(e.contains("server.port"), "{e}");
        let e = parse("resilience4j.circuitbreaker.instances.b.failureRateThreshold: 300\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("failure_rate_threshold"), "{e}");
    }

    #[test]
    fn read_timeouts_take_durations_and_name_the_key_when_bad() {
        let c = parse("server:\n  header-read-timeout: 250ms\n  bodyReadTimeout: 2s\n").unwrap();
        assert_eq!(c.server.header_read_timeout, Duration::from_millis(250));
        assert_eq!(c.server.body_read_timeout, Duration::from_secs(2));
        for key in ["header-read-timeout", "body-read-timeout"] {
            let e = parse(&format!("server:\n  {key}: soon\n"))
                .unwrap_err()
                .to_string();
            let field = format!("server.{}", key.replace('-', "_"));
            assert!(e.contains("routes.yaml") && e.contains(&field), "{e}");
        }
    }

    #[test]
    fn tls_from_spring_boot_pem_settings() {
        let c = parse("server:\n  ssl:\n    certificate: file:/tmp/c.pem\n    certificate-private-key: /tmp/k.pem\n").unwrap();
        let t = c.server.tls.unwrap();
        assert_eq!(t.certificate, PathBuf::from("/tmp/c.pem"));
        assert_eq!(t.private_key, PathBuf::from("/tmp/k.pem"));
        let e = parse("server:\n  ssl:\n    key-store: classpath:ks.p12\n").unwrap_err();
        assert!(e.to_string().contains("key stores"));
    }

    #[test]
    fn redis_from_spring_data() {
        let c = parse("spring.data.redis:\n  host: 10.0.0.1\n  port: 6380\n").unwrap();
        assert_eq!(c.rate_limiter.redis.url, "redis://10.0.0.1:6380/0");
        assert!(!c.rate_limiter.redis.fail_open_explicit);
    }
}
