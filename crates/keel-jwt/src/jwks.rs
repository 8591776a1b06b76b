//! The JWKS cache: fetched on first use, refreshed in the background when stale,
//! refetched (rate-limited) when a token names an unknown `kid`, and kept when a
//! refresh fails.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::key::VerifyingKey;

/// A boxed future, as [`JwksFetcher::get`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Largest JWKS or discovery document accepted.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// Fetches a document (a JWKS, or an OpenID discovery document) by URL.
///
/// [`HttpFetcher`] (reqwest) is the default. Supply your own to
/// [`Verifier::with_fetcher`](crate::Verifier::with_fetcher) to use another HTTP client
/// (for instance one with TLS settings of your own) or, in tests, no network at all.
pub trait JwksFetcher: Send + Sync + fmt::Debug + 'static {
    /// GETs `url` and returns the body of a successful (2xx) response, or a short
    /// description of what went wrong.
    fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Vec<u8>, String>>;
}

/// The default [`JwksFetcher`]: a reqwest client with a timeout and no connection reuse
/// (fetches are minutes apart).
///
/// `https://` URLs need reqwest built with a TLS feature; Keel's workspace builds
/// reqwest without one, so for an `https://` JWKS either enable one (e.g. reqwest's
/// `rustls-no-provider`) or pass a fetcher built on the caller's TLS client.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
}

impl HttpFetcher {
    /// A fetcher whose requests time out after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(0)
            .user_agent(concat!("keel-jwt/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpFetcher { client })
    }
}

impl JwksFetcher for HttpFetcher {
    fn get<'a>(&'a self, url: &'a str) -> BoxFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let mut resp = self
                .client
                .get(url)
                .header("accept", "application/json, application/jwk-set+json")
                .send()
                .await
                .map_err(|e| describe(&e))?;
            if !resp.status().is_success() {
                return Err(format!("{url} answered {}", resp.status()));
            }
            if resp
                .content_length()
                .is_some_and(|n| n > MAX_DOCUMENT as u64)
            {
                return Err(format!("{url} sent more than {MAX_DOCUMENT} bytes"));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
                if body.len() + chunk.len() > MAX_DOCUMENT {
                    return Err(format!("{url} sent more than {MAX_DOCUMENT} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        })
    }
}

/// reqwest's error with its causes (its `Display` alone hides the useful part).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The state of a verifier's JWKS cache, for health checks and admin endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksStatus {
    /// The JWKS URL (once known, with OpenID discovery).
    pub uri: Option<String>,
    /// How many usable keys the cached set holds.
    pub keys: usize,
    /// When the cached set was fetched; `None` if never.
    pub fetched_at: Option<SystemTime>,
    /// The last fetch's error, if the last fetch failed.
    pub last_error: Option<String>,
}

/// Where the JWKS URL comes from.
#[derive(Debug)]
pub(crate) enum Source {
    Uri(String),
    Discovery {
        issuer: String,
        resolved: Mutex<Option<String>>,
    },
}

#[derive(Debug)]
struct State {
    keys: Arc<Vec<VerifyingKey>>,
    /// Bumped by every successful fetch.
    generation: u64,
    fetched_at: Option<Instant>,
    fetched_wall: Option<SystemTime>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// A snapshot of the cached keys.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) keys: Arc<Vec<VerifyingKey>>,
    pub(crate) generation: u64,
}

/// The JWKS cache of one verifier.
#[derive(Debug)]
pub(crate) struct Jwks {
    source: Source,
    fetcher: Arc<dyn JwksFetcher>,
    refresh: Duration,
    min_refetch: Duration,
    state: RwLock<State>,
    /// Held while fetching, so fetches never overlap.
    fetching: tokio::sync::Mutex<()>,
    background: AtomicBool,
}

impl Jwks {
    pub(crate) fn new(
        source: Source,
        fetcher: Arc<dyn JwksFetcher>,
        refresh: Duration,
        min_refetch: Duration,
    ) -> Self {
        Jwks {
            source,
            fetcher,
            refresh,
            min_refetch,
            state: RwLock::new(State {
                keys: Arc::new(Vec::new()),
                generation: 0,
                fetched_at: None,
                fetched_wall: None,
                last_attempt: None,
                last_error: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
            background: AtomicBool::new(false),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn snapshot(&self) -> Snapshot {
        let st = self.read();
        Snapshot {
            keys: st.keys.clone(),
            generation: st.generation,
        }
    }

    /// How long to wait after a fetch attempt before another: `min_refetch`, but at most
    /// a second while there has never been a good set (so a gateway that started before
    /// its identity provider recovers quickly).
    fn backoff(&self, st: &State) -> Duration {
        if st.fetched_at.is_none() {
            self.min_refetch.min(Duration::from_secs(1))
        } else {
            self.min_refetch
        }
    }

    fn may_fetch(&self, st: &State) -> bool {
        st.last_attempt
            .is_none_or(|t| t.elapsed() >= self.backoff(st))
    }

    /// The cached keys. Fetches first if there are none yet; starts a background refresh
    /// if they are older than the refresh interval.
    pub(crate) async fn keys(self: &Arc<Self>) -> Result<Snapshot, String> {
        let (stale, have) = {
            let st = self.read();
            let stale =
                st.fetched_at.is_none_or(|t| t.elapsed() >= self.refresh) && self.may_fetch(&st);
            (stale, st.fetched_at.is_some())
        };
        if !have {
            return self.fetch_if_needed(0).await;
        }
        if stale && !self.background.swap(true, Ordering::AcqRel) {
            let this = Arc::clone(self);
            let job = async move {
                if let Ok(_guard) = this.fetching.try_lock() {
                    let _ = this.fetch_locked().await;
                }
                this.background.store(false, Ordering::Release);
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn(job)),
                Err(_) => job.await,
            }
        }
        Ok(self.snapshot())
    }

    /// Fetches unless a fetch finished since `seen` (then returns that set) or the last
    /// attempt is too recent (then returns the last error).
    async fn fetch_if_needed(&self, seen: u64) -> Result<Snapshot, String> {
        let _guard = self.fetching.lock().await;
        {
            let st = self.read();
            if st.generation != seen {
                return Ok(Snapshot {
                    keys: st.keys.clone(),
                    generation: st.generation,
                });
            }
            if !self.may_fetch(&st) {
                return Err(st
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "no keys fetched yet".to_owned()));
            }
        }
        self.fetch_locked().await
    }

    /// Refetches because a token named a key the set at `seen` lacks. `None` when the
    /// rate limit (`jwks_min_refetch`) forbids it or the fetch failed; the caller keeps
    /// the set it has.
    pub(crate) async fn refetch(&self, seen: u64) -> Option<Snapshot> {
        self.fetch_if_needed(seen).await.ok()
    }

    /// Fetches and installs a new set. Must be called with `fetching` held.
    async fn fetch_locked(&self) -> Result<Snapshot, String> {
        let started = Instant::now();
        let result = self.fetch_document().await;
        let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
        st.last_attempt = Some(Instant::now());
        match result {
            Ok((uri, keys)) => {
                tracing::debug!(
                    jwks_uri = %uri,
                    keys = keys.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "JWKS fetched"
                );
                st.keys = Arc::new(keys);
                st.generation += 1;
                st.fetched_at = st.last_attempt;
                st.fetched_wall = Some(SystemTime::now());
                st.last_error = None;
                Ok(Snapshot {
                    keys: st.keys.clone(),
                    generation: st.generation,
                })
            }
            Err(error) => {
                if st.fetched_at.is_some() {
                    tracing::warn!(%error, keys = st.keys.len(), "JWKS refresh failed; keeping the previous keys");
                } else {
                    tracing::warn!(%error, "JWKS fetch failed; no keys yet");
                }
                st.last_error = Some(error.clone());
                Err(error)
            }
        }
    }

    async fn fetch_document(&self) -> Result<(String, Vec<VerifyingKey>), String> {
        let uri = self.uri().await?;
        let body = self.fetcher.get(&uri).await?;
        Ok((
            uri.clone(),
            parse_set(&body).map_err(|e| format!("{uri}: {e}"))?,
        ))
    }

    /// The JWKS URL, resolving it by OpenID discovery the first time if needed.
    async fn uri(&self) -> Result<String, String> {
        let (issuer, resolved) = match &self.source {
            Source::Uri(u) => return Ok(u.clone()),
            Source::Discovery { issuer, resolved } => (issuer, resolved),
        };
        if let Some(u) = resolved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok(u);
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let body = self.fetcher.get(&url).await?;
        let doc: Value =
            serde_json::from_slice(&body).map_err(|_| format!("{url}: not a JSON document"))?;
        if let Some(named) = doc.get("issuer").and_then(Value::as_str)
            && named != issuer
        {
            return Err(format!("{url}: names issuer {named:?}, not {issuer:?}"));
        }
        let uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .ok_or_else(|| format!("{url}: no http(s) `jwks_uri`"))?
            .to_owned();
        tracing::info!(issuer = %issuer, jwks_uri = %uri, "JWKS URL found by OpenID discovery");
        *resolved.lock().unwrap_or_else(PoisonError::into_inner) = Some(uri.clone());
        Ok(uri)
    }

    pub(crate) fn status(&self) -> JwksStatus {
        let st = self.read();
        let uri = match &self.source {
            Source::Uri(u) => Some(u.clone()),
            Source::Discovery { resolved, .. } => resolved
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        };
        JwksStatus {
            uri,
            keys: st.keys.len(),
            fetched_at: st.fetched_wall,
            last_error: st.last_error.clone(),
        }
    }
}

/// Parses a JWK Set, skipping keys that are not usable signature keys (`use: enc`,
/// unsupported types); fails if none is left.
pub(crate) fn parse_set(body: &[u8]) -> Result<Vec<VerifyingKey>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| "not a JSON document".to_owned())?;
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("not a JWK Set (no `keys` array)")?;
    let mut keys = Vec::with_capacity(list.len());
    for (i, jwk) in list.iter().enumerate() {
        match VerifyingKey::from_jwk(jwk, None, None) {
            Ok(k) => keys.push(k),
            Err(reason) => tracing::debug!(index = i, %reason, "JWKS key skipped"),
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "JWK Set has no usable signature keys (of {})",
            list.len()
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn set_parsing_skips_unusable_keys() {
        let body = serde_json::json!({"keys": [
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "h", "k": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"},
            {"kty": "weird"}
        ]});
        let keys = parse_set(body.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("h"));
        assert!(
            parse_set(b"{\"keys\": []}")
                .unwrap_err()
                .contains("no usable")
        );
        assert!(parse_set(b"[]").unwrap_err().contains("no `keys`"));
        assert!(parse_set(b"<html>").unwrap_err().contains("JSON"));
    }

    /// Serves canned answers and counts calls.
    #[derive(Debug, Default)]
    struct Canned {
        calls: AtomicUsize,
        answers: Mutex<Vec<Result<Vec<u8>, String>>>,
    }

    impl JwksFetcher for Canned {
        fn get<'a>(&'a self, _url: &'a str) -> BoxFuture<'a, Result<Vec<u8>, String>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut a = self.answers.lock().unwrap();
            let next = if a.len() > 1 {
                a.remove(0)
            } else {
                a[0].clone()
            };
            Box::pin(async move { next })
        }
    }

    fn set(kid: &str) -> Vec<u8> {
        serde_json::json!({"keys": [{"kty": "oct", "kid": kid, "k": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"}]})
            .to_string()
            .into_bytes()
    }

    #[tokio::test]
    async fn refetch_is_rate_limited_and_failures_keep_keys() {
        let canned = Arc::new(Canned {
            answers: Mutex::new(vec![Ok(set("a")), Err("down".into())]),
            ..Canned::default()
        });
        let jwks = Arc::new(Jwks::new(
            Source::Uri("http://idp/jwks".into()),
            canned.clone(),
            Duration::from_secs(3600),
            Duration::from_secs(3),
        ));
        let s = jwks.keys().await.unwrap();
        assert_eq!(s.keys[0].kid.as_deref(), Some("a"));
        assert_eq!(canned.calls.load(Ordering::SeqCst), 1);
        // Too soon after the last fetch (3 s: a stalled machine still asks within it): no call.
        assert!(jwks.refetch(s.generation).await.is_none());
        assert_eq!(canned.calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(3050)).await;
        // Allowed now, but fails: the old set stays.
        assert!(jwks.refetch(s.generation).await.is_none());
        assert_eq!(canned.calls.load(Ordering::SeqCst), 2);
        let again = jwks.keys().await.unwrap();
        assert_eq!(again.generation, s.generation);
        assert_eq!(again.keys[0].kid.as_deref(), Some("a"));
        let status = jwks.status();
        assert_eq!(status.keys, 1);
        assert_eq!(status.last_error.as_deref(), Some("down"));
    }

    #[tokio::test]
    async fn first_fetch_failure_is_reported_and_backs_off() {
        let canned = Arc::new(Canned {
            answers: Mutex::new(vec![Err("refused".into())]),
            ..Canned::default()
        });
        let jwks = Arc::new(Jwks::new(
            Source::Uri("http://idp/jwks".into()),
            canned.clone(),
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        ));
        assert_eq!(jwks.keys().await.unwrap_err(), "refused");
        assert_eq!(jwks.keys().await.unwrap_err(), "refused");
        assert_eq!(
            canned.calls.load(Ordering::SeqCst),
            1,
            "second call within the backoff"
        );
    }

    #[tokio::test]
    async fn discovery_resolves_once() {
        let discovery =
            serde_json::json!({"issuer": "http://idp/realm", "jwks_uri": "http://idp/realm/certs"});
        let canned = Arc::new(Canned {
            answers: Mutex::new(vec![Ok(discovery.to_string().into_bytes()), Ok(set("d"))]),
            ..Canned::default()
        });
        let jwks = Arc::new(Jwks::new(
            Source::Discovery {
                issuer: "http://idp/realm".into(),
                resolved: Mutex::new(None),
            },
            canned.clone(),
            Duration::from_secs(3600),
            Duration::ZERO,
        ));
        let s = jwks.keys().await.unwrap();
        assert_eq!(s.keys[0].kid.as_deref(), Some("d"));
        assert_eq!(jwks.status().uri.as_deref(), Some("http://idp/realm/certs"));
        jwks.refetch(s.generation).await.unwrap();
        assert_eq!(
            canned.calls.load(Ordering::SeqCst),
            3,
            "discovery is not repeated"
        );
    }
}
