//! The route table: the file's routes compiled once (predicates, filters, target, resilience),
//! sorted by `order`, and matched per request. A new table replaces the old one atomically on
//! reload; breakers live outside the table so their state survives reloads.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Method, uri::Authority};
use keel_resilience::{CircuitBreaker, classify::StatusSet};
use rustc_hash::FxHashMap;
use serde_json::Value;

use crate::{
    auth::JwtPolicy,
    compose::Composition,
    config::{GatewayConfig, RouteDef, Spec, spec},
    cors::{CorsConfig, GlobalCors},
    error::LoadError,
    filter::{Filter, Phase},
    limit::{Limiters, RateLimitPolicy},
    pattern::Captures,
    predicate::{Draws, Predicate, RequestView, WeightGroups},
    route_metrics::RouteMetrics,
};

/// Where a route sends requests.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A fixed upstream: `http://host:port` (the route URI's path is not used, as in Spring).
    Http {
        /// HTTP/2 with prior knowledge (`h2c://`).
        h2c: bool,
        /// TLS (`https://`, `wss://`).
        tls: bool,
        /// `host:port`.
        authority: Authority,
        /// The same as the `Host` value sent upstream (made once, not per request).
        host: http::HeaderValue,
    },
    /// `lb://service`: an instance chosen by the balancer.
    Lb {
        /// The service id (lower case).
        service: String,
    },
    /// `forward:/path`: handled again by the route table with this path.
    Forward(String),
    /// `no://op`: answered by the gateway itself (filters set the response).
    NoOp,
    /// API composition (`compose`).
    Compose(Arc<Composition>),
}

impl Target {
    pub(crate) fn parse(uri: &str) -> Result<Self, String> {
        if let Some(path) = uri.strip_prefix("forward:") {
            if !path.starts_with('/') {
                return Err(format!("`forward:` needs an absolute path, got {uri:?}"));
            }
            return Ok(Target::Forward(path.to_owned()));
        }
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| format!("{uri:?} is not a URI (expected http://, lb://, …)"))?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        match scheme.to_ascii_lowercase().as_str() {
            "no" => Ok(Target::NoOp),
            "lb" => {
                if host.is_empty() {
                    return Err(format!("{uri:?} names no service"));
                }
                Ok(Target::Lb {
                    service: host.to_ascii_lowercase(),
                })
            }
            s @ ("http" | "https" | "ws" | "wss" | "h2c") => {
                let tls = matches!(s, "https" | "wss");
                let default_port = if tls { 443 } else { 80 };
                let with_port = if host
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                {
                    host.to_owned()
                } else {
                    format!("{host}:{default_port}")
                };
                let authority: Authority = with_port
                    .parse()
                    .map_err(|_| format!("{uri:?} has an invalid host"))?;
                if authority.host().is_empty() {
                    return Err(format!("{uri:?} names no host"));
                }
                let host = http::HeaderValue::from_str(authority.as_str()).map_err(|e| {
                    format!("{uri:?}: the authority is not a valid Host value: {e}")
                })?;
                Ok(Target::Http {
                    h2c: s == "h2c",
                    tls,
                    authority,
                    host,
                })
            }
            other => Err(format!(
                "unsupported URI scheme {other:?} in {uri:?} (http, https, ws, wss, h2c, lb, forward, no)"
            )),
        }
    }
}

/// Spring's Retry filter.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    /// Retries after the first attempt (Spring's `retries`, default 3).
    pub(crate) retries: u32,
    /// Statuses that cause a retry (`statuses` and `series`; default: 5xx).
    pub(crate) statuses: StatusSet,
    /// Methods that may be retried (default GET).
    pub(crate) methods: Vec<Method>,
    /// Retry when the upstream could not be reached or timed out (Spring's `exceptions`:
    /// IOException and TimeoutException by default).
    pub(crate) on_errors: bool,
    /// First backoff; `None`: retry at once.
    pub(crate) first_backoff: Option<Duration>,
    /// Longest backoff.
    pub(crate) max_backoff: Duration,
    /// Backoff multiplier.
    pub(crate) factor: u32,
}

impl RetryPolicy {
    fn build(a: &crate::config::Args) -> Result<Self, String> {
        let retries = match a.string(0, "retries")? {
            Some(s) => s
                .parse()
                .map_err(|_| format!("`retries` must be a whole number, got {s:?}"))?,
            None => 3,
        };
        // Spring's shortcut: Retry=retries, statuses, methods, firstBackoff, maxBackoff, factor.
        let one_or_list = |idx: usize, name: &str| -> Result<Vec<String>, String> {
            match a.get(usize::MAX, name) {
                Some(_) => Ok(a.list(usize::MAX, name)),
                None => Ok(a.string(idx, name)?.into_iter().collect()),
            }
        };
        let mut statuses = spec::status_set(&one_or_list(1, "statuses")?)?;
        // As in Spring, the `series` default (SERVER_ERROR) applies unless `series` is set.
        let series_set = match a.get(usize::MAX, "series") {
            None => StatusSet::range(500, 599),
            Some(_) => spec::status_set(&a.list(usize::MAX, "series"))?,
        };
        for code in 100..=999u16 {
            if series_set.contains(code) {
                statuses.insert(code);
            }
        }
        let methods = match one_or_list(2, "methods")? {
            m if m.is_empty() => vec![Method::GET],
            m => m
                .iter()
                .map(|s| spec::method(s))
                .collect::<Result<_, _>>()?,
        };
        let exceptions = a.list(usize::MAX, "exceptions");
        let on_errors = exceptions.is_empty()
            || exceptions
                .iter()
                .any(|e| e.contains("IOException") || e.contains("Timeout"));
        let (first_backoff, max_backoff, factor) = match a.get(usize::MAX, "backoff") {
            Some(b) if b.is_object() => {
                let d = |k: &str| -> Result<Option<Duration>, String> {
                    crate::config::tree::lookup(b, k)
                        .filter(|v| !v.is_null())
                        .map(spec::duration)
                        .transpose()
                        .map_err(|e| format!("`backoff.{k}`: {e}"))
                };
                let first = d("first_backoff")?.unwrap_or(Duration::from_millis(5));
                let max = d("max_backoff")?.unwrap_or(first * 10).max(first);
                let factor = crate::config::tree::lookup(b, "factor")
                    .filter(|v| !v.is_null())
                    .map(spec::integer)
                    .transpose()
                    .map_err(|e| format!("`backoff.factor`: {e}"))?
                    .unwrap_or(2);
                (
                    Some(first),
                    max,
                    u32::try_from(factor).unwrap_or(u32::MAX).max(1),
                )
            }
            _ => match a.string(3, "first_backoff")? {
                None => (None, Duration::ZERO, 1),
                Some(first) => {
                    let first = spec::parse_duration(&first)?;
                    let max = a
                        .string(4, "max_backoff")?
                        .map(|m| spec::parse_duration(&m))
                        .transpose()?
                        .unwrap_or(first * 10)
                        .max(first);
                    let factor = a
                        .string(5, "factor")?
                        .map(|f| {
                            f.parse::<u32>()
                                .map_err(|_| format!("`factor` must be a whole number, got {f:?}"))
                        })
                        .transpose()?
                        .unwrap_or(2);
                    (Some(first), max, factor.max(1))
                }
            },
        };
        Ok(Self {
            retries,
            statuses,
            methods,
            on_errors,
            first_backoff,
            max_backoff,
            factor,
        })
    }

    /// The wait before retry number `n` (1-based).
    pub(crate) fn backoff(&self, n: u32) -> Duration {
        match self.first_backoff {
            None => Duration::ZERO,
            Some(first) => {
                let mult = self.factor.saturating_pow(n.saturating_sub(1).min(16));
                first.saturating_mul(mult).min(self.max_backoff)
            }
        }
    }

    /// Whether requests with `method` are retried.
    pub(crate) fn allows(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }
}

/// Spring's CircuitBreaker filter.
#[derive(Debug, Clone)]
pub(crate) struct BreakerPolicy {
    /// The breaker (shared by every route naming it; survives reloads).
    pub(crate) breaker: CircuitBreaker,
    /// Where to go when the breaker is open or the call fails: `forward:/path`.
    pub(crate) fallback: Option<String>,
    /// Upstream statuses that count as failures (and go to the fallback). Default: none.
    pub(crate) failure_statuses: StatusSet,
    /// The breaker's time limit (resilience4j's `timelimiter`), if configured.
    pub(crate) time_limit: Option<Duration>,
}

/// A compiled route.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) id: Arc<str>,
    pub(crate) order: i32,
    pub(crate) target: Target,
    pub(crate) predicates: Vec<Predicate>,
    /// Request filters, in order.
    pub(crate) request_filters: Vec<Filter>,
    /// Response filters, in the file's order (so `AddResponseHeader` then
    /// `DedupeResponseHeader` dedupes what was added).
    pub(crate) response_filters: Vec<Filter>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) breaker: Option<BreakerPolicy>,
    /// Per-route connect timeout (`metadata.connect-timeout`).
    pub(crate) connect_timeout: Option<Duration>,
    /// Per-route time to the response head (`metadata.response-timeout`); a negative value
    /// in the file disables the global one.
    pub(crate) response_timeout: Option<Duration>,
    /// The `JWT` filter (runs before the other filters).
    pub(crate) jwt: Option<JwtPolicy>,
    /// The `RequestRateLimiter` filter (runs after JWT, before the other filters).
    pub(crate) rate_limit: Option<RateLimitPolicy>,
    /// Route-level CORS (`metadata.cors`), which wins over the global configuration.
    pub(crate) cors: Option<Arc<CorsConfig>>,
    /// The definition as written, for the actuator.
    pub(crate) def: RouteDef,
    /// Its request metrics.
    pub(crate) metrics: RouteMetrics,
}

/// Breakers by name, kept across route table reloads.
#[derive(Debug, Clone, Default)]
pub(crate) struct Breakers(Arc<Mutex<HashMap<String, CircuitBreaker>>>);

impl Breakers {
    fn get(&self, name: &str, config: &GatewayConfig) -> Result<CircuitBreaker, String> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let wanted = config.breakers.config(name);
        if let Some(b) = m.get(name)
            && *b.config() == wanted
        {
            return Ok(b.clone());
        }
        let b = CircuitBreaker::new(format!("gateway:{name}"), wanted)
            .map_err(|e| format!("circuit breaker {name:?}: {e}"))?;
        m.insert(name.to_owned(), b.clone());
        Ok(b)
    }

    /// Every breaker, by name.
    pub(crate) fn all(&self) -> Vec<(String, CircuitBreaker)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = m.iter().map(|(k, b)| (k.clone(), b.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// The discovery locator: a route `/{service}/**` → `lb://service` (prefix stripped) for every
/// registered service, consulted when no route of the file matches.
#[derive(Debug)]
pub(crate) struct Locator {
    lower_case: bool,
    order: i32,
    request_filters: Vec<Filter>,
    response_filters: Vec<Filter>,
    cache: Mutex<HashMap<String, Arc<Route>>>,
}

impl Locator {
    fn build(config: &GatewayConfig) -> Result<Option<Self>, Problem> {
        let l = &config.locator;
        if !l.enabled {
            return Ok(None);
        }
        if config.discovery.is_none() {
            return Err(Problem::at(
                "discovery.locator.enabled",
                "the locator needs discovery settings (`gateway.discovery` or `eureka.client`)",
            ));
        }
        let mut request_filters = vec![Filter::StripPrefix(1)];
        let mut response_filters = Vec::new();
        for (i, s) in l.filters.iter().enumerate() {
            let field = format!("discovery.locator.filters[{i}]");
            let f = Filter::build_basic(s)
                .ok_or_else(|| Problem::at(field.clone(), unknown_filter(&s.name)))?
                .map_err(|e| Problem::at(field, e))?;
            match f.phase() {
                Phase::Response => response_filters.push(f),
                Phase::Request => request_filters.push(f),
            }
        }
        Ok(Some(Self {
            lower_case: l.lower_case_service_id,
            order: l.order,
            request_filters,
            response_filters,
            cache: Mutex::default(),
        }))
    }

    /// The located route for `path`, when its first segment names a registered service.
    pub(crate) fn route_for(&self, path: &str, services: &[String]) -> Option<Arc<Route>> {
        let first = path.strip_prefix('/')?.split('/').next()?;
        let name = if self.lower_case {
            first.to_ascii_lowercase()
        } else {
            first.to_owned()
        };
        if name.is_empty() || !services.iter().any(|s| s.eq_ignore_ascii_case(&name)) {
            return None;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = cache.get(&name) {
            return Some(r.clone());
        }
        let id = format!("locator:{name}");
        let id_arc: Arc<str> = Arc::from(id.as_str());
        let route = Arc::new(Route {
            metrics: RouteMetrics::new(id_arc.clone()),
            id: id_arc,
            order: self.order,
            target: Target::Lb {
                service: name.to_ascii_lowercase(),
            },
            predicates: Vec::new(),
            request_filters: self.request_filters.clone(),
            response_filters: self.response_filters.clone(),
            retry: None,
            breaker: None,
            connect_timeout: None,
            response_timeout: None,
            jwt: None,
            rate_limit: None,
            cors: None,
            def: RouteDef {
                id,
                uri: Some(format!("lb://{name}")),
                predicates: Vec::new(),
                filters: Vec::new(),
                order: self.order,
                metadata: serde_json::Map::new(),
                compose: None,
            },
        });
        // Bounded by the number of registered services.
        cache.insert(name, route.clone());
        Some(route)
    }
}

/// What compiled routes share beyond one table: breakers (kept across reloads), rate
/// limiters and the JWT verifier.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) breakers: Breakers,
    pub(crate) limiters: Limiters,
}

impl Shared {
    /// For compiling a file without serving it: Redis routes use a local limiter.
    pub(crate) fn for_check() -> Self {
        Self {
            breakers: Breakers::default(),
            limiters: Limiters {
                local: keel_ratelimit::RateLimiter::new(
                    keel_ratelimit::LocalStore::new(),
                    keel_ratelimit::FailMode::Open,
                ),
                redis: None,
            },
        }
    }
}

/// Whether any route of `config` rate-limits in Redis.
pub(crate) fn needs_redis(config: &GatewayConfig) -> bool {
    config
        .routes
        .iter()
        .flat_map(|r| r.filters.iter())
        .chain(config.default_filters.iter())
        .any(|s| {
            s.key() == "request_rate_limiter" && crate::limit::wants_redis(&s.args).unwrap_or(false)
        })
}

/// The compiled, ordered routes.
#[derive(Debug, Default)]
pub(crate) struct RouteTable {
    pub(crate) routes: Vec<Arc<Route>>,
    /// The routes a request may match, by the request path's first segment: routes whose
    /// Path predicate requires that literal first segment, and every route that does not
    /// constrain it, in table order. A first segment not in the map gets `unkeyed`.
    by_first_segment: FxHashMap<Box<str>, Vec<usize>>,
    /// The routes that do not require a literal first path segment, in table order.
    unkeyed: Vec<usize>,
    groups: WeightGroups,
    /// Global CORS by path pattern.
    pub(crate) cors: GlobalCors,
    /// The discovery locator, when enabled.
    pub(crate) locator: Option<Locator>,
}

/// A matched route and what its predicates captured.
#[derive(Debug)]
pub(crate) struct Matched {
    pub(crate) route: Arc<Route>,
    pub(crate) vars: Captures,
}

impl RouteTable {
    /// Compiles `config`'s routes. Errors name the file, the route and the field.
    pub(crate) fn build(config: &GatewayConfig, shared: &Shared) -> Result<Self, LoadError> {
        let verifier = match &config.jwt {
            None => None,
            Some(v) => Some(Arc::new(keel_jwt::Verifier::from_value(v).map_err(
                |e| {
                    Problem::at(format!("jwt.{}", e.field), e.message)
                        .into_load_error(config.file.as_deref())
                },
            )?)),
        };
        let mut routes = Vec::with_capacity(config.routes.len());
        for def in &config.routes {
            let route = compile(def, config, shared, verifier.as_ref())
                .map_err(|p| p.into_load_error(config.file.as_deref()))?;
            routes.push(Arc::new(route));
        }
        let cors = GlobalCors::build(&config.cors).map_err(|(field, message)| {
            Problem::at(field, message).into_load_error(config.file.as_deref())
        })?;
        let mut table = Self::from_routes(routes, cors);
        table.locator =
            Locator::build(config).map_err(|p| p.into_load_error(config.file.as_deref()))?;
        Ok(table)
    }

    pub(crate) fn from_routes(mut routes: Vec<Arc<Route>>, cors: GlobalCors) -> Self {
        // Stable: equal orders keep file order.
        routes.sort_by_key(|r| r.order);
        let mut groups = WeightGroups::new();
        for r in &routes {
            for p in &r.predicates {
                if let Predicate::Weight(g, w) = p {
                    groups
                        .entry(g.clone())
                        .or_default()
                        .push((r.id.clone(), *w));
                }
            }
        }
        let (by_first_segment, unkeyed) = index_by_first_segment(&routes);
        Self {
            routes,
            by_first_segment,
            unkeyed,
            groups,
            cors,
            locator: None,
        }
    }

    /// The first route whose predicates all hold.
    pub(crate) fn find(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &http::HeaderMap,
        client: IpAddr,
        preflight: bool,
    ) -> Option<Matched> {
        let view = RequestView {
            method,
            path,
            query,
            headers,
            client,
        };
        let mut draws = Draws::default();
        let mut vars = Captures::new();
        let first = path
            .strip_prefix('/')
            .map(|p| p.split_once('/').map_or(p, |(first, _)| first));
        let candidates = first
            .and_then(|f| self.by_first_segment.get(f))
            .unwrap_or(&self.unkeyed);
        for route in candidates.iter().filter_map(|&i| self.routes.get(i)) {
            vars.clear();
            if route.predicates.iter().all(|p| {
                (preflight && p.is_method())
                    || p.test(&view, &mut vars, &route.id, &self.groups, &mut draws)
            }) {
                return Some(Matched {
                    route: route.clone(),
                    vars,
                });
            }
        }
        None
    }
}

use crate::config::Problem;

/// The first path segments a route requires: those of its Path predicate when every pattern
/// of it starts with a literal segment (a route matches only when all its predicates do).
fn required_first_segments(route: &Route) -> Option<Vec<&str>> {
    route.predicates.iter().find_map(|p| match p {
        Predicate::Path(patterns) => patterns.iter().map(|p| p.first_literal()).collect(),
        _ => None,
    })
}

/// Builds [`RouteTable`]'s first-segment index.
fn index_by_first_segment(routes: &[Arc<Route>]) -> (FxHashMap<Box<str>, Vec<usize>>, Vec<usize>) {
    let required: Vec<Option<Vec<&str>>> =
        routes.iter().map(|r| required_first_segments(r)).collect();
    let unkeyed: Vec<usize> = (0..routes.len())
        .filter(|&i| required[i].is_none())
        .collect();
    let mut by_first: FxHashMap<Box<str>, Vec<usize>> = FxHashMap::default();
    for (i, segs) in required.iter().enumerate() {
        for seg in segs.iter().flatten() {
            let list = by_first.entry(Box::from(*seg)).or_default();
            if list.last() != Some(&i) {
                list.push(i);
            }
        }
    }
    for list in by_first.values_mut() {
        list.extend(&unkeyed);
        list.sort_unstable();
    }
    (by_first, unkeyed)
}

fn compile(
    def: &RouteDef,
    config: &GatewayConfig,
    shared: &Shared,
    verifier: Option<&Arc<keel_jwt::Verifier>>,
) -> Result<Route, Problem> {
    let at = |field: String, msg: String| Problem::at(field, msg).in_route(&def.id);
    let target = match (&def.compose, def.uri.as_deref()) {
        (Some(c), _) => Target::Compose(Arc::new(
            Composition::build(c, config.discovery.is_some()).map_err(|(f, e)| at(f, e))?,
        )),
        (None, Some(uri)) => Target::parse(uri).map_err(|e| at("uri".into(), e))?,
        (None, None) => return Err(at("uri".into(), "missing".into())),
    };
    let uri = def.uri.as_deref().unwrap_or_default();
    if matches!(target, Target::Lb { .. }) && config.discovery.is_none() {
        return Err(at(
            "uri".into(),
            format!(
                "{uri:?} needs discovery: set `gateway.discovery.registry` (Keel registry or Eureka URL) or `gateway.discovery.services`"
            ),
        ));
    }
    let mut predicates = Vec::with_capacity(def.predicates.len());
    for (i, p) in def.predicates.iter().enumerate() {
        predicates.push(Predicate::build(p).map_err(|e| at(format!("predicates[{i}]"), e))?);
    }
    let mut request_filters = Vec::new();
    let mut response_filters = Vec::new();
    let mut retry = None;
    let mut breaker = None;
    let mut jwt = None;
    let mut rate_limit_spec = None;
    let all: Vec<(String, &Spec)> = config
        .default_filters
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("default-filters[{i}]"), s))
        .chain(
            def.filters
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("filters[{i}]"), s)),
        )
        .collect();
    for (field, s) in all {
        let key = s.key();
        match key.as_str() {
            "retry" => retry = Some(RetryPolicy::build(&s.args).map_err(|e| at(field, e))?),
            "circuit_breaker" | "spring_cloud_circuit_breaker" | "hystrix" => {
                breaker = Some(
                    breaker_policy(s, &def.id, config, &shared.breakers)
                        .map_err(|e| at(field, e))?,
                );
            }
            "jwt" => jwt = Some(JwtPolicy::build(&s.args, verifier).map_err(|e| at(field, e))?),
            "request_rate_limiter" => rate_limit_spec = Some((field, s)),
            _ => {
                let f = match Filter::build_basic(s) {
                    Some(r) => r.map_err(|e| at(field.clone(), e))?,
                    None => {
                        return Err(at(field, unknown_filter(&s.name)));
                    }
                };
                match f.phase() {
                    Phase::Response => response_filters.push(f),
                    _ => request_filters.push(f),
                }
            }
        }
    }
    let md = |k: &str| -> Result<Option<Duration>, Problem> {
        let v = def
            .metadata
            .iter()
            .find(|(name, _)| crate::config::tree::relax(name) == crate::config::tree::relax(k))
            .map(|(_, v)| v);
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(v) if v.as_i64().is_some_and(|n| n < 0) => Ok(Some(Duration::MAX)),
            Some(v) => spec::duration(v)
                .map(Some)
                .map_err(|e| at(format!("metadata.{k}"), e)),
        }
    };
    let rate_limit = match rate_limit_spec {
        None => None,
        Some((field, s)) => Some(
            RateLimitPolicy::build(
                &s.args,
                &shared.limiters,
                &config.rate_limiter,
                jwt.is_some(),
            )
            .map_err(|e| at(field, e))?,
        ),
    };
    let connect_timeout = md("connect-timeout")?;
    let response_timeout = md("response-timeout")?;
    let cors = def
        .metadata
        .iter()
        .find(|(k, _)| crate::config::tree::relax(k) == "cors")
        .map(|(_, v)| CorsConfig::build(v).map(Arc::new))
        .transpose()
        .map_err(|e| at("metadata.cors".into(), e))?;
    let id: Arc<str> = Arc::from(def.id.as_str());
    Ok(Route {
        metrics: RouteMetrics::new(id.clone()),
        id,
        order: def.order,
        target,
        predicates,
        request_filters,
        response_filters,
        retry,
        breaker,
        connect_timeout,
        response_timeout,
        jwt,
        rate_limit,
        cors,
        def: def.clone(),
    })
}

fn unknown_filter(name: &str) -> String {
    match crate::config::tree::relax(name).as_str() {
        "token_relay"
        | "save_session"
        | "modify_request_body"
        | "modify_response_body"
        | "cache_request_body"
        | "local_response_cache"
        | "json_to_grpc"
        | "fallback_headers" => {
            format!("the {name} filter is not supported by this version of keel gateway")
        }
        _ => format!("unknown filter {name:?}"),
    }
}

fn breaker_policy(
    s: &Spec,
    route: &str,
    config: &GatewayConfig,
    breakers: &Breakers,
) -> Result<BreakerPolicy, String> {
    let a = &s.args;
    let name = a.string(0, "name")?.unwrap_or_else(|| route.to_owned());
    let fallback = match a.string(1, "fallback_uri")? {
        None => None,
        Some(f) if f.starts_with("forward:/") => Some(f.trim_start_matches("forward:").to_owned()),
        Some(f) => {
            return Err(format!("`fallbackUri` must be `forward:/path`, got {f:?}"));
        }
    };
    // As in Spring, an answer (whatever its status) is a success unless `statusCodes` names
    // its status; errors and timeouts are failures.
    let failure_statuses = spec::status_set(&a.list(usize::MAX, "status_codes"))?;
    let breaker = breakers.get(&name, config)?;
    Ok(BreakerPolicy {
        breaker,
        fallback,
        failure_statuses,
        time_limit: config.breakers.time_limit(&name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let authority = |uri: &str| match Target::parse(uri).unwrap() {
            Target::Http { authority, .. } => authority.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(authority("http://127.0.0.1:8081/ignored"), "127.0.0.1:8081");
        assert_eq!(authority("http://example.org"), "example.org:80");
        assert_eq!(authority("http://[::1]"), "[::1]:80");
        assert!(matches!(
            Target::parse("h2c://a:1").unwrap(),
            Target::Http { h2c: true, .. }
        ));
        assert!(
            matches!(Target::parse("lb://Orders").unwrap(), Target::Lb { service } if service == "orders")
        );
        assert!(
            matches!(Target::parse("forward:/fallback").unwrap(), Target::Forward(p) if p == "/fallback")
        );
        assert!(matches!(
            Target::parse("https://x").unwrap(),
            Target::Http { tls: true, ref authority, .. } if authority.as_str() == "x:443"
        ));
        assert!(matches!(
            Target::parse("wss://x:8443/ws").unwrap(),
            Target::Http { tls: true, ref authority, .. } if authority.as_str() == "x:8443"
        ));
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("nonsense").is_err());
        assert!(Target::parse("lb://").is_err());
    }

    #[test]
    fn retry_backoff() {
        let p = RetryPolicy {
            retries: 3,
            statuses: StatusSet::range(500, 599),
            methods: vec![Method::GET],
            on_errors: true,
            first_backoff: Some(Duration::from_millis(10)),
            max_backoff: Duration::from_millis(50),
            factor: 2,
        };
        assert_eq!(p.backoff(1), Duration::from_millis(10));
        assert_eq!(p.backoff(2), Duration::from_millis(20));
        assert_eq!(p.backoff(4), Duration::from_millis(50));
    }

    fn table(yaml: &str) -> Result<RouteTable, LoadError> {
        let c = GatewayConfig::parse(yaml, Some(std::path::Path::new("r.yaml")), &[])?;
        RouteTable::build(&c, &Shared::for_check())
    }

    #[test]
    fn the_first_segment_index_finds_what_a_scan_finds() {
        let t = table(
            "gateway:\n  routes:\n    - {id: any-get, uri: 'http://x', order: -1, predicates: ['Method=POST']}\n    - {id: a, uri: 'http://x', predicates: ['Path=/a/**']}\n    - {id: ab, uri: 'http://x', predicates: ['Path=/a/b,/b/{x}']}\n    - {id: star, uri: 'http://x', predicates: ['Path=/*/c']}\n    - {id: root, uri: 'http://x', predicates: ['Path=/']}\n    - {id: b-late, uri: 'http://x', order: 9, predicates: ['Path=/b/**']}\n    - {id: rest, uri: 'http://x', order: 10, predicates: ['Path=/**']}\n",
        )
        .unwrap();
        let h = http::HeaderMap::new();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let scan = |method: &Method, path: &str| {
            let view = RequestView {
                method,
                path,
                query: None,
                headers: &h,
                client: ip,
            };
            t.routes.iter().find_map(|r| {
                let mut vars = Captures::new();
                let mut draws = Draws::default();
                r.predicates
                    .iter()
                    .all(|p| p.test(&view, &mut vars, &r.id, &t.groups, &mut draws))
                    .then(|| r.id.to_string())
            })
        };
        for path in [
            "/", "", "/a", "/a/", "/a/b", "/a/c", "/b/1", "/b/1/2", "/x/c", "/b/c", "/z", "//a",
            "a/b",
        ] {
            for method in [Method::GET, Method::POST] {
                let found = t
                    .find(&method, path, None, &h, ip, false)
                    .map(|m| m.route.id.to_string());
                assert_eq!(found, scan(&method, path), "{method} {path:?}");
            }
        }
        let found = |path: &str| {
            t.find(&Method::GET, path, None, &h, ip, false)
                .map(|m| m.route.id.to_string())
        };
        assert_eq!(found("/a/b").as_deref(), Some("a"));
        assert_eq!(found("/b/c").as_deref(), Some("ab"));
        assert_eq!(found("/x/c").as_deref(), Some("star"));
        assert_eq!(found("/").as_deref(), Some("root"));
        assert_eq!(found("/b/1/2").as_deref(), Some("b-late"));
        assert_eq!(found("/q").as_deref(), Some("rest"));
    }

    #[test]
    fn order_then_file_order() {
        let t = table(
            "gateway:\n  routes:\n    - {id: a, uri: 'http://x', order: 5, predicates: ['Path=/**']}\n    - {id: b, uri: 'http://x', predicates: ['Path=/a/**']}\n    - {id: c, uri: 'http://x', predicates: ['Path=/a/**']}\n",
        )
        .unwrap();
        let h = http::HeaderMap::new();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let m = t.find(&Method::GET, "/a/1", None, &h, ip, false).unwrap();
        assert_eq!(&*m.route.id, "b");
        let m = t.find(&Method::GET, "/z", None, &h, ip, false).unwrap();
        assert_eq!(&*m.route.id, "a");
    }

    #[test]
    fn errors_name_route_and_filter() {
        let e = table("gateway:\n  routes:\n    - {id: a, uri: 'http://x', filters: ['Nope=1']}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("r.yaml")
                && e.contains("\"a\"")
                && e.contains("filters[0]")
                && e.contains("Nope"),
            "{e}"
        );
        let e = table("gateway:\n  routes:\n    - {id: a, uri: 'lb://orders'}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("discovery"), "{e}");
        let e = table(
            "gateway:\n  routes:\n    - {id: a, uri: 'http://x', predicates: ['Path=/{a']}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("predicates[0]"), "{e}");
    }
}
