//! Client-side load balancing over the catalog: `lb://service/path` requests go to one
//! UP instance, chosen by a strategy (power of two choices on outstanding requests by
//! default, round robin, random, weighted, zone-preferring), with passive health — each
//! instance has a `keel-resilience` circuit breaker; an instance whose breaker is open is
//! ejected until the breaker lets a trial call through — and a retry on another instance.
//!
//! When every UP instance is ejected, the balancer ignores ejection (Envoy's "panic mode")
//! rather than fail every call.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use futures::future::BoxFuture;
use http::{Method, Request, Response, Uri};
use keel_resilience::{
    CircuitBreaker, CircuitBreakerConfig, Outcome, State, circuit_breaker::OwnedPermit,
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tower::{Service, ServiceExt};

use crate::{catalog::Catalog, instance::ServiceInstance};

/// Error type of the balanced service.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How an instance is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Two random instances; the one with fewer outstanding requests wins.
    #[default]
    PowerOfTwoChoices,
    /// In turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// At random, in proportion to each instance's `weight` metadata.
    Weighted,
    /// Instances in the local zone when there are any, else all; power of two choices within.
    ZonePreferring,
}

/// Balancer settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BalancerConfig {
    /// The strategy.
    pub strategy: Strategy,
    /// This client's zone, for `zone_preferring`.
    pub zone: Option<String>,
    /// How many other instances to try after a failure (idempotent requests, or any
    /// request that never reached the instance). Default 1.
    pub retries: u32,
    /// The per-instance breaker that implements passive health.
    pub passive_health: CircuitBreakerConfig,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        let passive_health = CircuitBreakerConfig {
            sliding_window_size: 10,
            minimum_number_of_calls: 3,
            failure_rate_threshold: 50.0,
            wait_duration_in_open_state: std::time::Duration::from_secs(5),
            permitted_number_of_calls_in_half_open_state: 1,
            ..CircuitBreakerConfig::default()
        };
        Self {
            strategy: Strategy::PowerOfTwoChoices,
            zone: None,
            retries: 1,
            passive_health,
        }
    }
}

/// No instance could take the request.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no available instance of service `{service}`")]
pub struct NoInstance {
    /// The service.
    pub service: String,
}

#[derive(Debug)]
struct Endpoint {
    outstanding: AtomicUsize,
    breaker: CircuitBreaker,
}

#[derive(Debug, Default)]
struct ServiceState {
    next: AtomicUsize,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
}

/// Chooses instances. Cheap to clone; share one per client.
#[derive(Debug, Clone)]
pub struct Balancer {
    catalog: Catalog,
    config: Arc<BalancerConfig>,
    services: Arc<Mutex<HashMap<String, Arc<ServiceState>>>>,
}

/// A chosen instance. Report the call's outcome with [`Pick::record`]; until the pick is
/// dropped it counts as an outstanding request.
#[derive(Debug)]
pub struct Pick {
    /// The instance.
    pub instance: ServiceInstance,
    endpoint: Arc<Endpoint>,
    permit: Option<OwnedPermit>,
}

impl Pick {
    /// Records the outcome for passive health.
    pub fn record(mut self, outcome: Outcome) {
        if let Some(p) = self.permit.take() {
            p.record(outcome);
        }
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.endpoint.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Balancer {
    /// A balancer over `catalog`.
    pub fn new(
        catalog: Catalog,
        config: BalancerConfig,
    ) -> Result<Self, keel_resilience::ConfigError> {
        config.passive_health.validate()?;
        Ok(Self {
            catalog,
            config: Arc::new(config),
            services: Arc::default(),
        })
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn service(&self, name: &str) -> Arc<ServiceState> {
        let mut m = self.services.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(name.to_ascii_lowercase()).or_default().clone()
    }

    fn endpoint(&self, state: &ServiceState, service: &str, id: &str) -> Arc<Endpoint> {
        let mut m = state.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id.to_owned())
            .or_insert_with(|| {
                let breaker = CircuitBreaker::new(
                    format!("lb:{service}:{id}"),
                    self.config.passive_health.clone(),
                )
                .or_else(|_| {
                    CircuitBreaker::new(
                        format!("lb:{service}:{id}"),
                        CircuitBreakerConfig::default(),
                    )
                })
                .expect("default breaker config is valid");
                Arc::new(Endpoint {
                    outstanding: AtomicUsize::new(0),
                    breaker,
                })
            })
            .clone()
    }

    /// Whether an instance is currently ejected by passive health.
    pub fn is_ejected(&self, service: &str, id: &str) -> bool {
        let state = self.service(service);
        let ep = self.endpoint(&state, service, id);
        matches!(ep.breaker.state(), State::Open | State::ForcedOpen)
    }

    /// Chooses an UP instance of `service`, skipping the ids in `avoid`.
    pub fn pick(&self, service: &str, avoid: &[String]) -> Result<Pick, NoInstance> {
        let state = self.service(service);
        let all = self.catalog.instances(service);
        let up: Vec<&ServiceInstance> = all
            .iter()
            .filter(|i| i.is_up() && !avoid.contains(&i.id))
            .collect();
        let mut candidates: Vec<(&ServiceInstance, Arc<Endpoint>)> = up
            .iter()
            .map(|i| (*i, self.endpoint(&state, service, &i.id)))
            .collect();
        let healthy: Vec<_> = candidates
            .iter()
            .filter(|(_, e)| !matches!(e.breaker.state(), State::Open | State::ForcedOpen))
            .cloned()
            .collect();
        if !healthy.is_empty() {
            candidates = healthy;
        }
        if self.config.strategy == Strategy::ZonePreferring
            && let Some(zone) = &self.config.zone
        {
            let local: Vec<_> = candidates
                .iter()
                .filter(|(i, _)| i.zone.as_deref() == Some(zone.as_str()))
                .cloned()
                .collect();
            if !local.is_empty() {
                candidates = local;
            }
        }
        // Try in strategy order; an instance whose breaker refuses (HALF_OPEN trial slots
        // taken) is skipped in favour of the next.
        while !candidates.is_empty() {
            let idx = self.choose(&state, &candidates);
            let (inst, ep) = candidates.swap_remove(idx);
            match ep.breaker.try_acquire_owned() {
                Ok(permit) => {
                    ep.outstanding.fetch_add(1, Ordering::AcqRel);
                    return Ok(Pick {
                        instance: inst.clone(),
                        endpoint: ep,
                        permit: Some(permit),
                    });
                }
                Err(_) if candidates.is_empty() => {
                    // Panic mode: everything refuses; send it anyway, unrecorded.
                    ep.outstanding.fetch_add(1, Ordering::AcqRel);
                    return Ok(Pick {
                        instance: inst.clone(),
                        endpoint: ep,
                        permit: None,
                    });
                }
                Err(_) => continue,
            }
        }
        Err(NoInstance {
            service: service.to_ascii_lowercase(),
        })
    }

    fn choose(&self, state: &ServiceState, c: &[(&ServiceInstance, Arc<Endpoint>)]) -> usize {
        let n = c.len();
        if n == 1 {
            return 0;
        }
        let mut rng = rand::rng();
        match self.config.strategy {
            Strategy::RoundRobin => state.next.fetch_add(1, Ordering::Relaxed) % n,
            Strategy::Random => rng.random_range(0..n),
            Strategy::Weighted => {
                let total: u64 = c.iter().map(|(i, _)| u64::from(i.weight.max(1))).sum();
                let mut r = rng.random_range(0..total);
                for (idx, (i, _)) in c.iter().enumerate() {
                    let w = u64::from(i.weight.max(1));
                    if r < w {
                        return idx;
                    }
                    r -= w;
                }
                n - 1
            }
            Strategy::PowerOfTwoChoices | Strategy::ZonePreferring => {
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let load = |k: usize| c[k].1.outstanding.load(Ordering::Acquire);
                if load(b) < load(a) { b } else { a }
            }
        }
    }
}

/// A tower layer that resolves `lb://service/...` URIs through a [`Balancer`].
#[derive(Debug, Clone)]
pub struct LoadBalanceLayer {
    balancer: Balancer,
}

impl LoadBalanceLayer {
    /// A layer using `balancer`.
    pub fn new(balancer: Balancer) -> Self {
        Self { balancer }
    }
}

impl<S> tower::Layer<S> for LoadBalanceLayer {
    type Service = LoadBalanced<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LoadBalanced {
            inner,
            balancer: self.balancer.clone(),
        }
    }
}

/// The service built by [`LoadBalanceLayer`]. Requests whose URI scheme is not `lb` pass
/// through unchanged. The request body must be `Clone` so a failed attempt can be retried
/// on another instance.
#[derive(Debug, Clone)]
pub struct LoadBalanced<S> {
    inner: S,
    balancer: Balancer,
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn rewrite(uri: &Uri, instance: &ServiceInstance) -> Result<Uri, BoxError> {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Ok(format!("{}{pq}", instance.base_url()).parse()?)
}

/// Whether an error means the request never reached the instance (safe to retry).
fn not_sent(e: &BoxError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = cur {
        let s = err.to_string().to_ascii_lowercase();
        if s.contains("connect") || s.contains("connection refused") || s.contains("dns") {
            return true;
        }
        cur = err.source();
    }
    false
}

impl<S, B, RB> Service<Request<B>> for LoadBalanced<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Clone + Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<RB>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if req.uri().scheme_str() != Some("lb") {
            let fut = inner.call(req);
            return Box::pin(async move { fut.await.map_err(Into::into) });
        }
        let balancer = self.balancer.clone();
        Box::pin(async move {
            let service = req
                .uri()
                .host()
                .ok_or_else(|| -> BoxError { "lb:// URI without a service name".into() })?
                .to_owned();
            let (parts, body) = req.into_parts();
            let mut tried: Vec<String> = Vec::new();
            let max = 1 + balancer.config.retries as usize;
            let mut last_err: Option<BoxError> = None;
            for attempt in 0..max {
                let pick = match balancer.pick(&service, &tried) {
                    Ok(p) => p,
                    Err(e) if attempt == 0 => return Err(e.into()),
                    Err(_) => break,
                };
                let mut req = Request::from_parts(parts.clone(), body.clone());
                *req.uri_mut() = rewrite(&parts.uri, &pick.instance)?;
                let id = pick.instance.id.clone();
                let svc = inner.clone();
                let result = svc.oneshot(req).await.map_err(Into::into);
                let last = attempt + 1 == max;
                match result {
                    Ok(res) if res.status().is_server_error() => {
                        pick.record(Outcome::Failure);
                        if last || !idempotent(&parts.method) {
                            return Ok(res);
                        }
                        metrics::counter!("keel_discovery_lb_retries_total", "service" => service.clone()).increment(1);
                    }
                    Ok(res) => {
                        pick.record(Outcome::Success);
                        return Ok(res);
                    }
                    Err(e) => {
                        pick.record(Outcome::Failure);
                        let retryable = idempotent(&parts.method) || not_sent(&e);
                        if last || !retryable {
                            return Err(e);
                        }
                        metrics::counter!("keel_discovery_lb_retries_total", "service" => service.clone()).increment(1);
                        last_err = Some(e);
                    }
                }
                tried.push(id);
            }
            Err(last_err.unwrap_or_else(|| NoInstance { service }.into()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(n: usize) -> Catalog {
        let c = Catalog::new();
        c.set(
            "orders",
            (0..n)
                .map(|k| {
                    ServiceInstance::new("orders", &format!("o{k}"), "127.0.0.1", 9000 + k as u16)
                })
                .collect(),
        );
        c
    }

    fn balancer(c: Catalog, strategy: Strategy) -> Balancer {
        Balancer::new(
            c,
            BalancerConfig {
                strategy,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn counts(b: &Balancer, n: usize) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for _ in 0..n {
            let p = b.pick("orders", &[]).unwrap();
            *m.entry(p.instance.id.clone()).or_default() += 1;
            p.record(Outcome::Success);
        }
        m
    }

    #[test]
    fn round_robin_is_exactly_even() {
        let b = balancer(catalog(3), Strategy::RoundRobin);
        let m = counts(&b, 300);
        assert!(m.values().all(|&v| v == 100), "{m:?}");
    }

    #[test]
    fn random_and_p2c_spread_over_every_instance() {
        for s in [Strategy::Random, Strategy::PowerOfTwoChoices] {
            let b = balancer(catalog(4), s);
            let m = counts(&b, 4000);
            assert_eq!(m.len(), 4);
            assert!(m.values().all(|&v| v > 700), "{s:?}: {m:?}");
        }
    }

    #[test]
    fn p2c_avoids_the_busy_instance() {
        let b = balancer(catalog(2), Strategy::PowerOfTwoChoices);
        // Hold 10 requests outstanding on whichever instance gets them first.
        let held: Vec<Pick> = (0..1).map(|_| b.pick("orders", &[]).unwrap()).collect();
        let busy = held[0].instance.id.clone();
        let extra: Vec<Pick> = (0..9)
            .map(|_| b.pick("orders", &[]).unwrap())
            .filter(|p| p.instance.id == busy)
            .collect();
        assert!(
            extra.is_empty(),
            "with two instances p2c always compares both"
        );
        drop(held);
    }

    #[test]
    fn weighted_follows_weights() {
        let c = Catalog::new();
        let mut heavy = ServiceInstance::new("orders", "heavy", "127.0.0.1", 1);
        heavy.weight = 3;
        let light = ServiceInstance::new("orders", "light", "127.0.0.1", 2);
        c.set("orders", vec![heavy, light]);
        let b = balancer(c, Strategy::Weighted);
        let m = counts(&b, 8000);
        let ratio = m["heavy"] as f64 / m["light"] as f64;
        assert!((2.5..3.5).contains(&ratio), "{m:?}");
    }

    #[test]
    fn zone_preferring_stays_local_while_it_can() {
        let c = Catalog::new();
        let mut a = ServiceInstance::new("orders", "a", "127.0.0.1", 1);
        a.zone = Some("eu-1".into());
        let mut b2 = ServiceInstance::new("orders", "b", "127.0.0.1", 2);
        b2.zone = Some("us-1".into());
        c.set("orders", vec![a, b2]);
        let b = Balancer::new(
            c.clone(),
            BalancerConfig {
                strategy: Strategy::ZonePreferring,
                zone: Some("eu-1".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(counts(&b, 50).get("a"), Some(&50));
        c.remove("orders", "a");
        assert_eq!(
            counts(&b, 10).get("b"),
            Some(&10),
            "falls back to other zones"
        );
    }

    #[test]
    fn only_up_instances_and_not_avoided_ones() {
        let c = catalog(2);
        let mut down = ServiceInstance::new("orders", "down", "127.0.0.1", 3);
        down.status = keel_eureka::Status::Down;
        c.upsert(down);
        let b = balancer(c, Strategy::RoundRobin);
        assert!(!counts(&b, 20).contains_key("down"));
        let p = b.pick("orders", &["o0".into()]).unwrap();
        assert_eq!(p.instance.id, "o1");
        assert!(b.pick("orders", &["o0".into(), "o1".into()]).is_err());
        assert!(b.pick("nothing", &[]).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn failing_instance_is_ejected_then_retried_after_cool_down() {
        let b = balancer(catalog(2), Strategy::RoundRobin);
        // o0 fails every time; o1 succeeds.
        for _ in 0..20 {
            let p = b.pick("orders", &[]).unwrap();
            let outcome = if p.instance.id == "o0" {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            p.record(outcome);
        }
        assert!(b.is_ejected("orders", "o0"));
        assert_eq!(
            counts(&b, 10).get("o1"),
            Some(&10),
            "ejected instance gets nothing"
        );
        // After the cool-down one trial call goes to o0; a success brings it back.
        tokio::time::advance(std::time::Duration::from_secs(6)).await;
        tokio::task::yield_now().await;
        let mut saw_o0 = false;
        for _ in 0..4 {
            let p = b.pick("orders", &[]).unwrap();
            if p.instance.id == "o0" {
                saw_o0 = true;
            }
            p.record(Outcome::Success);
        }
        assert!(saw_o0, "a trial call reached the ejected instance");
        assert!(!b.is_ejected("orders", "o0"));
    }

    #[test]
    fn panic_mode_when_everything_is_ejected() {
        let b = balancer(catalog(1), Strategy::RoundRobin);
        for _ in 0..5 {
            b.pick("orders", &[]).unwrap().record(Outcome::Failure);
        }
        assert!(b.is_ejected("orders", "o0"));
        assert!(
            b.pick("orders", &[]).is_ok(),
            "better a try than a certain failure"
        );
    }
}
