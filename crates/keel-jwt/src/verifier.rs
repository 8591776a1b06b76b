//! [`Verifier`]: a token in, verified claims out.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::Claims;
use crate::claims::{self, Checks, Requirements};
use crate::config::JwtConfig;
use crate::error::{ConfigError, Forbidden, JwtError};
use crate::jwks::{HttpFetcher, Jwks, JwksFetcher, JwksStatus, Source};
use crate::key::VerifyingKey;
use crate::token::{self, Parsed};

/// Verifies compact JWS tokens against configured keys and a cached JWKS, then checks
/// `exp`, `nbf`, `iss` and `aud`.
///
/// Cheap to clone (one `Arc`); share one per configuration. Keys are parsed once, at
/// construction (static keys) or when a JWKS is fetched.
#[derive(Debug, Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keys: Vec<VerifyingKey>,
    jwks: Option<Arc<Jwks>>,
    checks: Checks,
    roles_claim: Vec<String>,
}

/// The result of trying one key set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Miss {
    /// No key has the token's `kid` (and no key without a `kid` fits).
    UnknownKey,
    /// Keys matched by `kid`, but none may verify the token's algorithm.
    AlgorithmNotAllowed,
    /// At least one fitting key was tried; the signature did not verify.
    BadSignature,
}

fn try_keys(keys: &[VerifyingKey], t: &Parsed<'_>) -> Result<(), Miss> {
    let mut miss = Miss::UnknownKey;
    for key in keys {
        let named = match (&t.kid, &key.kid) {
            (Some(want), Some(have)) => want == have,
            (None, Some(_)) | (_, None) => true,
        };
        if !named {
            continue;
        }
        if !key.accepts(t.alg) {
            miss = miss.max(Miss::AlgorithmNotAllowed);
            continue;
        }
        if key.verify(t.alg, t.signing_input, &t.signature) {
            return Ok(());
        }
        miss = Miss::BadSignature;
    }
    Err(miss)
}

fn has_kid(keys: &[VerifyingKey], kid: &str) -> bool {
    keys.iter().any(|k| k.kid.as_deref() == Some(kid))
}

impl Verifier {
    /// Builds a verifier: validates the configuration and loads every static key (reading
    /// `pem_file`s). The JWKS, if any, is fetched on first use (or by
    /// [`prefetch`](Self::prefetch)). The error names the field at fault.
    pub fn new(config: JwtConfig) -> Result<Self, ConfigError> {
        let timeout = config.jwks_timeout;
        Self::build(config, move || {
            HttpFetcher::new(timeout)
                .map(|f| Arc::new(f) as Arc<dyn JwksFetcher>)
                .map_err(|e| {
                    ConfigError::new("jwks_uri", format!("cannot build an HTTP client: {e}"))
                })
        })
    }

    /// Like [`new`](Self::new), fetching the JWKS (and discovery document) with `fetcher`.
    pub fn with_fetcher(
        config: JwtConfig,
        fetcher: Arc<dyn JwksFetcher>,
    ) -> Result<Self, ConfigError> {
        Self::build(config, move || Ok(fetcher))
    }

    /// Validates `config`, loads the static keys, and makes a fetcher only if a JWKS is
    /// configured.
    fn build(
        config: JwtConfig,
        fetcher: impl FnOnce() -> Result<Arc<dyn JwksFetcher>, ConfigError>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let keys = config.load_keys()?;
        let source = match (&config.jwks_uri, &config.issuer) {
            (Some(uri), _) => Some(Source::Uri(uri.clone())),
            (None, Some(issuer)) if keys.is_empty() => Some(Source::Discovery {
                issuer: issuer.clone(),
                resolved: Mutex::new(None),
            }),
            _ => None,
        };
        let jwks = match source {
            Some(s) => Some(Arc::new(Jwks::new(
                s,
                fetcher()?,
                config.jwks_refresh,
                config.jwks_min_refetch,
            ))),
            None => None,
        };
        Ok(Verifier {
            inner: Arc::new(Inner {
                keys,
                jwks,
                checks: Checks {
                    issuer: config.issuer,
                    audiences: config.audiences,
                    leeway_secs: config.leeway.as_secs_f64(),
                    require_exp: config.require_exp,
                },
                roles_claim: config.roles_claim,
            }),
        })
    }

    /// Deserializes a [`JwtConfig`] from `value` and builds a verifier from it.
    pub fn from_value(value: &Value) -> Result<Self, ConfigError> {
        Self::new(JwtConfig::from_value(value)?)
    }

    /// Verifies `token` (without the `Bearer ` prefix; see [`bearer`](crate::bearer)) and
    /// returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        self.verify_at(token, SystemTime::now()).await
    }

    /// [`verify`](Self::verify) as if the time were `now`.
    pub async fn verify_at(&self, token: &str, now: SystemTime) -> Result<Claims, JwtError> {
        let parsed = token::parse(token)?;
        self.check_signature(&parsed).await?;
        let claims = parsed.claims()?;
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.inner.checks.check(&claims, now)?;
        Ok(claims)
    }

    async fn check_signature(&self, t: &Parsed<'_>) -> Result<(), JwtError> {
        let inner = &*self.inner;
        let from_static = try_keys(&inner.keys, t);
        let Err(static_miss) = from_static else {
            return Ok(());
        };
        let Some(jwks) = &inner.jwks else {
            return Err(self.miss_error(static_miss, t));
        };
        let snapshot = jwks.keys().await.map_err(JwtError::JwksUnavailable)?;
        let jwks_miss = match try_keys(&snapshot.keys, t) {
            Ok(()) => return Ok(()),
            Err(m) => m,
        };
        // A key the cached set does not have may have been published since: refetch
        // (rate-limited) when the token names an unknown kid, or — for issuers that do not
        // use kids — when no cached key verified it.
        let rotated = match &t.kid {
            Some(kid) => !has_kid(&inner.keys, kid) && !has_kid(&snapshot.keys, kid),
            None => true,
        };
        let jwks_miss = if rotated && let Some(fresh) = jwks.refetch(snapshot.generation).await {
            match try_keys(&fresh.keys, t) {
                Ok(()) => return Ok(()),
                Err(m) => m,
            }
        } else {
            jwks_miss
        };
        Err(self.miss_error(static_miss.max(jwks_miss), t))
    }

    fn miss_error(&self, miss: Miss, t: &Parsed<'_>) -> JwtError {
        match miss {
            Miss::UnknownKey => JwtError::UnknownKey { kid: t.kid.clone() },
            Miss::AlgorithmNotAllowed => JwtError::AlgorithmNotAllowed { alg: t.alg },
            Miss::BadSignature => JwtError::BadSignature,
        }
    }

    /// The roles `claims` hold, read from the configured `roles_claim` paths.
    pub fn roles<'a>(&self, claims: &'a Claims) -> Vec<&'a str> {
        claims::roles(claims, &self.inner.roles_claim)
    }

    /// The configured `roles_claim` paths.
    pub fn roles_claim(&self) -> &[String] {
        &self.inner.roles_claim
    }

    /// Checks verified `claims` against a route's `requirements`, reading roles from the
    /// configured `roles_claim`.
    pub fn authorize(&self, claims: &Claims, requirements: &Requirements) -> Result<(), Forbidden> {
        requirements.check(claims, &self.inner.roles_claim)
    }

    /// Fetches the JWKS now (if one is configured), so the first request does not wait
    /// for it; a gateway calls this at start-up and may log the error. Returns the
    /// number of keys cached.
    pub async fn prefetch(&self) -> Result<usize, JwtError> {
        match &self.inner.jwks {
            Some(j) => j
                .keys()
                .await
                .map(|s| s.keys.len())
                .map_err(JwtError::JwksUnavailable),
            None => Ok(0),
        }
    }

    /// The JWKS cache's state, or `None` when no JWKS is configured.
    pub fn jwks_status(&self) -> Option<JwksStatus> {
        self.inner.jwks.as_ref().map(|j| j.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::hmac;
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn hs256(header: Value, claims: Value, secret: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    fn verifier(v: Value) -> Verifier {
        Verifier::from_value(&v).unwrap()
    }

    #[tokio::test]
    async fn kid_selection() {
        let v = verifier(json!({"keys": [
            {"kid": "a", "secret": "0123456789abcdef0123456789abcdef"},
            {"kid": "b", "secret": "ffffffffffffffffffffffffffffffff"},
        ]}));
        let exp = json!({"exp": 4_000_000_000u64});
        let t = hs256(json!({"alg": "HS256", "kid": "a"}), exp.clone(), SECRET);
        assert!(v.verify(&t).await.is_ok());
        // Right key, wrong kid: the token is checked only against key b.
        let t = hs256(json!({"alg": "HS256", "kid": "b"}), exp.clone(), SECRET);
        assert_eq!(v.verify(&t).await, Err(JwtError::BadSignature));
        let t = hs256(json!({"alg": "HS256", "kid": "zz"}), exp.clone(), SECRET);
        assert_eq!(
            v.verify(&t).await,
            Err(JwtError::UnknownKey {
                kid: Some("zz".into())
            })
        );
        // No kid: every fitting key is tried.
        let t = hs256(json!({"alg": "HS256"}), exp, SECRET);
        assert!(v.verify(&t).await.is_ok());
    }

    #[tokio::test]
    async fn pinned_alg_refuses_other_hmac_algs() {
        let v = verifier(
            json!({"keys": [{"alg": "HS512", "secret": "0123456789abcdef0123456789abcdef"}]}),
        );
        let t = hs256(
            json!({"alg": "HS256"}),
            json!({"exp": 4_000_000_000u64}),
            SECRET,
        );
        assert_eq!(
            v.verify(&t).await,
            Err(JwtError::AlgorithmNotAllowed {
                alg: crate::Algorithm::HS256
            })
        );
    }

    #[tokio::test]
    async fn verify_at_uses_the_given_clock() {
        let v = verifier(
            json!({"keys": [{"secret": "0123456789abcdef0123456789abcdef"}], "leeway": 0}),
        );
        let t = hs256(
            json!({"alg": "HS256"}),
            json!({"exp": 1000, "nbf": 900}),
            SECRET,
        );
        let at = |s: u64| UNIX_EPOCH + std::time::Duration::from_secs(s);
        assert!(v.verify_at(&t, at(950)).await.is_ok());
        assert_eq!(v.verify_at(&t, at(1000)).await, Err(JwtError::Expired));
        assert_eq!(v.verify_at(&t, at(899)).await, Err(JwtError::NotYetValid));
    }

    #[test]
    fn verifier_and_its_future_are_send_and_sync() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: T) {}
        let v = verifier(json!({"jwks_uri": "http://127.0.0.1:9/jwks"}));
        send_sync(&v);
        send(v.verify("a.b.c"));
        send(v.prefetch());
    }

    #[tokio::test]
    async fn no_jwks_means_no_status() {
        let v = verifier(json!({"keys": [{"secret": "0123456789abcdef0123456789abcdef"}]}));
        assert!(v.jwks_status().is_none());
        assert_eq!(v.prefetch().await, Ok(0));
    }
}
