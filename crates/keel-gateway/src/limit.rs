//! Spring's `RequestRateLimiter` filter on `keel-ratelimit`: a token bucket per key, in this
//! process (`store: local`) or in Redis shared by every gateway instance (`store: redis`, the
//! default when the arguments use Spring's `redis-rate-limiter.*` names). Denials are 429
//! problem+json with `X-RateLimit-*` headers; when Redis is down the configured fail mode
//! decides (fail closed answers 503).
//!
//! Keys (`key-resolver`): `client-address`, `header:<Name>`, or `jwt-subject` (the route's JWT
//! filter must run). Default: `jwt-subject` on routes with a JWT filter, else `client-address`.

use http::{HeaderName, HeaderValue, Response, StatusCode};
use keel_ratelimit::{Decision, Rate, RateLimiter};

use crate::{
    body::Body,
    config::{Args, RateLimiterSettings},
    exchange::Exchange,
    problem::{GatewayProblem, types},
};

/// The limiters a route table can use.
#[derive(Debug, Clone)]
pub(crate) struct Limiters {
    pub(crate) local: RateLimiter,
    /// `None` until a route needs Redis (or when only checking a file).
    pub(crate) redis: Option<RateLimiter>,
}

/// How a request's key is found.
#[derive(Debug, Clone)]
pub(crate) enum KeyResolver {
    ClientAddress,
    Header(HeaderName),
    JwtSubject,
}

/// A route's rate limit.
#[derive(Debug, Clone)]
pub(crate) struct RateLimitPolicy {
    limiter: RateLimiter,
    rate: Rate,
    key: KeyResolver,
    deny_empty_key: bool,
    empty_key_status: StatusCode,
}

/// Whether a filter definition wants the Redis store.
pub(crate) fn wants_redis(args: &Args) -> Result<bool, String> {
    match args.string(usize::MAX, "store")? {
        Some(s) if s.eq_ignore_ascii_case("redis") => Ok(true),
        Some(s) if s.eq_ignore_ascii_case("local") => Ok(false),
        Some(s) => Err(format!("`store` must be local or redis, got {s:?}")),
        None => Ok(args.get(usize::MAX, "redis_rate_limiter").is_some()),
    }
}

impl RateLimitPolicy {
    pub(crate) fn build(
        args: &Args,
        limiters: &Limiters,
        settings: &RateLimiterSettings,
        has_jwt: bool,
    ) -> Result<Self, String> {
        let redis = wants_redis(args)?;
        let num = |name: &str, spring: &str| -> Result<Option<u32>, String> {
            let v = args
                .string(usize::MAX, spring)?
                .or(args.string(usize::MAX, name)?);
            v.map(|s| {
                s.parse::<u32>()
                    .map_err(|_| format!("`{name}` must be a whole number, got {s:?}"))
            })
            .transpose()
        };
        let replenish = num("replenish_rate", "redis_rate_limiter.replenish_rate")?
            .ok_or("missing argument `replenishRate` (tokens per second)")?;
        let burst =
            num("burst_capacity", "redis_rate_limiter.burst_capacity")?.unwrap_or(replenish);
        let requested =
            num("requested_tokens", "redis_rate_limiter.requested_tokens")?.unwrap_or(1);
        let rate = Rate::new(replenish, burst, requested).map_err(|e| e.to_string())?;
        let key = match args.string(usize::MAX, "key_resolver")? {
            None => {
                if has_jwt {
                    KeyResolver::JwtSubject
                } else {
                    KeyResolver::ClientAddress
                }
            }
            Some(k) => parse_key(&k)?,
        };
        if matches!(key, KeyResolver::JwtSubject) && !has_jwt {
            return Err("`key-resolver: jwt-subject` needs a JWT filter on the route".to_owned());
        }
        let limiter = if redis {
            // Only `check` builds a table without Redis; it validates, it never serves.
            limiters
                .redis
                .clone()
                .unwrap_or_else(|| limiters.local.clone())
        } else {
            limiters.local.clone()
        };
        let deny_empty_key = match args.get(usize::MAX, "deny_empty_key") {
            Some(v) => {
                crate::config::spec::boolean(v).map_err(|e| format!("`deny-empty-key`: {e}"))?
            }
            None => settings.deny_empty_key,
        };
        let empty_key_status = match args.string(usize::MAX, "empty_key_status")? {
            Some(s) => crate::config::spec::status(&s)?,
            None => {
                StatusCode::from_u16(settings.empty_key_status).unwrap_or(StatusCode::FORBIDDEN)
            }
        };
        Ok(Self {
            limiter,
            rate,
            key,
            deny_empty_key,
            empty_key_status,
        })
    }

    fn key(&self, ex: &Exchange) -> Option<String> {
        match &self.key {
            KeyResolver::ClientAddress => Some(ex.client.ip().to_string()),
            KeyResolver::Header(h) => ex
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
            KeyResolver::JwtSubject => ex
                .claims
                .as_ref()
                .and_then(|c| c.get("sub"))
                .and_then(|s| s.as_str())
                .map(str::to_owned),
        }
    }

    /// Takes tokens for the request. `Ok` carries the headers to add to the response.
    pub(crate) async fn apply(
        &self,
        ex: &Exchange,
        route: &str,
    ) -> Result<Decision, Box<Response<Body>>> {
        let Some(key) = self.key(ex) else {
            if self.deny_empty_key {
                return Err(Box::new(
                    GatewayProblem::new(
                        self.empty_key_status,
                        types::RATE_LIMITED,
                        "the request has no rate-limit key",
                    )
                    .route(route)
                    .instance(&ex.path)
                    .into_response(),
                ));
            }
            return Ok(Decision::degraded(self.rate, true));
        };
        let d = self.limiter.check(route, &key, &self.rate).await;
        if d.allowed {
            return Ok(d);
        }
        let mut res = if d.degraded {
            GatewayProblem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                types::RATE_LIMITER_UNAVAILABLE,
                "the rate limiter's store is unavailable and this route fails closed",
            )
        } else {
            GatewayProblem::new(
                StatusCode::TOO_MANY_REQUESTS,
                types::RATE_LIMITED,
                format!(
                    "rate limit of {} requests per second (burst {}) exceeded",
                    self.rate.replenish_rate(),
                    self.rate.burst_capacity()
                ),
            )
        }
        .route(route)
        .instance(&ex.path)
        .into_response();
        add_headers(&d, &mut res);
        Err(Box::new(res))
    }
}

/// Adds the decision's `X-RateLimit-*` headers to a response.
pub(crate) fn add_headers(d: &Decision, res: &mut Response<Body>) {
    for (name, value) in d.headers() {
        if let Ok(v) = HeaderValue::from_str(&value) {
            res.headers_mut().insert(name, v);
        }
    }
}

fn parse_key(k: &str) -> Result<KeyResolver, String> {
    let t = k.trim();
    let lower = t.to_ascii_lowercase();
    if let Some(h) = t
        .strip_prefix("header:")
        .or_else(|| t.strip_prefix("Header:"))
    {
        return HeaderName::from_bytes(h.trim().as_bytes())
            .map(KeyResolver::Header)
            .map_err(|_| format!("`key-resolver`: {h:?} is not a header name"));
    }
    match lower.as_str() {
        "client-address" | "client_address" | "remote-address" | "ip" => {
            Ok(KeyResolver::ClientAddress)
        }
        "jwt-subject" | "jwt_subject" | "principal" => Ok(KeyResolver::JwtSubject),
        _ if t.starts_with("#{") => Err(format!(
            "`key-resolver` {t:?} is a Spring bean reference; Keel resolves keys with client-address, header:<Name> or jwt-subject"
        )),
        _ => Err(format!(
            "`key-resolver` {t:?} is not one of client-address, header:<Name>, jwt-subject"
        )),
    }
}
