//! Authorization through payment networks with breaker-driven failover: the
//! [`NetworkAuthorizer`].
//!
//! Per order, on every (re)delivery of `AuthorizeCard`:
//!
//! 1. Attempts left unresolved by a crash or an earlier error (journal: `PENDING`,
//!    `UNKNOWN`) are voided first with a network-cancel to their network; if a void cannot
//!    be confirmed, the command is retried later — nothing else is tried meanwhile.
//! 2. An attempt already `APPROVED` is the answer (never a second authorization).
//! 3. Otherwise networks are tried in order of preference, each only while its circuit
//!    breaker lets calls through. Each attempt gets a fresh key (`<orderId>:<seq>`) and is
//!    journalled before the call. Approved or declined: that is the decision (a decline is
//!    not failed over). Refused (connection refused, 503): the next network. Unknown
//!    (timeout, lost connection): network-cancel the key at that network and, once the void
//!    is confirmed, the next network.
//!
//! A network-cancel that arrives before the late authorization makes the network refuse
//! it, so a voided key can never become an approval afterwards. Hence at most one network
//! ever holds an approval for an order. See `docs/payment-networks.md`.

mod client;
mod config;
mod journal;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use keel_discovery::{Discovery, DiscoveryConfig, ServiceInstance};
use keel_resilience::{CircuitBreaker, ConfigError, Outcome, State};
use keel_store::Store;
use serde::Serialize;

pub use config::{BreakerSettings, PaymentsConfig, Selection};

use crate::authorizer::{
    Approval, AuthorizationRequest, Authorizer, AuthorizerError, CARD_DECLINED, CardRule, Decision,
    ReversalRequest,
};
use client::CallError;
use journal::Attempt;

/// `keel_payment_network_requests_total{network,outcome}`.
const REQUESTS: &str = "keel_payment_network_requests_total";
/// `keel_payment_network_breaker_state{network}` (the breaker's state code: 0 CLOSED,
/// 1 OPEN, 2 HALF_OPEN, …).
const BREAKER_STATE: &str = "keel_payment_network_breaker_state";
/// `keel_payment_failovers_total{from,to}`.
const FAILOVERS: &str = "keel_payment_failovers_total";

/// One configured network.
#[derive(Debug)]
struct Network {
    name: String,
    url: Option<String>,
    breaker: CircuitBreaker,
    /// Basis points; `u32::MAX` while unknown.
    fee_bps: AtomicU32,
    fee_fixed: bool,
    last_error: Mutex<Option<String>>,
}

impl Network {
    fn count(&self, outcome: &'static str) {
        metrics::counter!(REQUESTS, "network" => self.name.clone(), "outcome" => outcome)
            .increment(1);
        self.gauge();
    }

    fn gauge(&self) {
        metrics::gauge!(BREAKER_STATE, "network" => self.name.clone())
            .set(self.breaker.state().gauge_value());
    }

    fn failed(&self, e: &CallError) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }

    fn fee(&self) -> Option<u32> {
        match self.fee_bps.load(Ordering::Relaxed) {
            u32::MAX => None,
            f => Some(f),
        }
    }

    fn learn_fee(&self, fee: Option<u32>) {
        if let Some(f) = fee.filter(|_| !self.fee_fixed) {
            self.fee_bps.store(f, Ordering::Relaxed);
        }
    }
}

/// The payment networks and their failover state (`GET /payment-networks`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PaymentNetworks {
    /// `ordered`, `fee_weighted`, or `card-rule` (no networks).
    pub selection: String,
    /// The network the next authorization goes to first (`None`: none available).
    pub preferred: Option<String>,
    /// Each network, in configured order.
    pub networks: Vec<NetworkStatus>,
}

/// One network's state.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    /// The network's name.
    pub name: String,
    /// Its base URL (fixed, or as last discovered; `None`: not found yet).
    pub url: Option<String>,
    /// Its breaker's state: `CLOSED`, `OPEN`, `HALF_OPEN`, …
    pub breaker: String,
    /// Failure rate in the breaker's window, in percent (-1: too few calls).
    pub failure_rate: f32,
    /// Calls in the breaker's window.
    pub recent_calls: u64,
    /// Failed calls in the breaker's window.
    pub recent_failures: u64,
    /// Calls the breaker turned away since start.
    pub not_permitted_calls: u64,
    /// Fee in basis points (`None`: not known yet).
    pub fee_bps: Option<u32>,
    /// Whether it is the preferred network now.
    pub preferred: bool,
    /// The last failure seen.
    pub last_error: Option<String>,
}

/// Why the authorizer could not be built.
#[derive(Debug, thiserror::Error)]
#[error("payments.breaker: {0}")]
pub struct BuildError(#[from] ConfigError);

/// An [`Authorizer`] over an ordered list of payment networks (see the [module](self) docs).
pub struct NetworkAuthorizer {
    networks: Vec<Arc<Network>>,
    store: Store,
    http: reqwest::Client,
    timeout: Duration,
    void_attempts: u32,
    selection: Selection,
    discovery: Option<Discovery>,
}

impl std::fmt::Debug for NetworkAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkAuthorizer")
            .field("networks", &self.networks)
            .field("selection", &self.selection)
            .finish_non_exhaustive()
    }
}

impl NetworkAuthorizer {
    /// Networks from `config`, journalled in `store` (accounting's database, migrated).
    /// Networks without a fixed URL are discovered with `discovery` (started here).
    pub fn new(
        config: &PaymentsConfig,
        store: Store,
        discovery: DiscoveryConfig,
    ) -> Result<Self, BuildError> {
        let mut networks = Vec::with_capacity(config.networks.len());
        for name in &config.networks {
            let breaker = CircuitBreaker::new(
                format!("payment-network.{name}"),
                config.breaker.circuit_breaker(),
            )?;
            let fixed = config.fee_bps.get(name).copied();
            let network = Arc::new(Network {
                name: name.clone(),
                url: config
                    .urls
                    .get(name)
                    .map(|u| u.trim_end_matches('/').to_owned()),
                breaker,
                fee_bps: AtomicU32::new(fixed.unwrap_or(u32::MAX)),
                fee_fixed: fixed.is_some(),
                last_error: Mutex::new(None),
            });
            network.gauge();
            watch_breaker(&network);
            networks.push(network);
        }
        let needs_discovery = networks.iter().any(|n| n.url.is_none());
        Ok(Self {
            networks,
            store,
            http: reqwest::Client::new(),
            timeout: config.timeout(),
            void_attempts: config.void_attempts,
            selection: config.selection,
            discovery: needs_discovery.then(|| Discovery::start(discovery, reqwest::Client::new())),
        })
    }

    /// The base URL of `n`: fixed, or the first UP instance discovered.
    async fn url(&self, n: &Network) -> Option<String> {
        if let Some(u) = &n.url {
            return Some(u.clone());
        }
        let catalog = self.discovery.as_ref()?.catalog();
        let pick = |list: &[ServiceInstance]| {
            list.iter()
                .find(|i| i.is_up())
                .map(ServiceInstance::base_url)
        };
        if let Some(u) = pick(&catalog.instances(&n.name)) {
            return Some(u);
        }
        let found = catalog
            .wait_for(&n.name, Duration::from_millis(500))
            .await?;
        pick(&found)
    }

    /// The networks in the order to try them now.
    fn candidates(&self) -> Vec<Arc<Network>> {
        let mut order: Vec<Arc<Network>> = self.networks.clone();
        if self.selection == Selection::FeeWeighted {
            let closed: Vec<usize> = (0..order.len())
                .filter(|&i| order[i].breaker.state() == State::Closed)
                .collect();
            if let Some(i) = weighted_pick(&closed, |i| order[i].fee()) {
                let first = order.remove(i);
                order.insert(0, first);
            }
        }
        order
    }

    /// Voids `a` at its network (retrying), recording the result. `Ok(true)` when the
    /// network says the key was declined (the outcome is then known: a decline).
    async fn void(&self, a: &Attempt) -> Result<bool, AuthorizerError> {
        let Some(n) = self.networks.iter().find(|n| n.name == a.network) else {
            return Err(AuthorizerError(format!(
                "attempt {} of order {} is unresolved at {}, which is no longer configured",
                a.seq, a.order_id, a.network
            )));
        };
        let mut last = String::from("network not found");
        for i in 0..self.void_attempts {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(100 << i.min(4))).await;
            }
            let Some(url) = self.url(n).await else {
                continue;
            };
            match client::network_cancel(&self.http, &url, self.timeout, &a.key, &a.order_id).await
            {
                Ok(done) => {
                    let declined = done.authorization.status == client::status::DECLINED;
                    let status = if declined {
                        journal::status::DECLINED
                    } else {
                        journal::status::VOIDED
                    };
                    journal::settle(
                        &self.store,
                        &a.order_id,
                        a.seq,
                        status,
                        Some(&done.authorization.id),
                        Some(&done.action),
                    )
                    .await
                    .map_err(store_error)?;
                    n.count("voided");
                    tracing::warn!(order_id = %a.order_id, network = %n.name, key = %a.key, action = %done.action, "unknown outcome voided");
                    return Ok(declined);
                }
                Err(e) => {
                    n.failed(&e);
                    last = e.to_string();
                }
            }
        }
        n.count("void_failed");
        tracing::error!(order_id = %a.order_id, network = %n.name, key = %a.key, error = %last, "cannot void an unknown outcome yet; the command will be retried");
        Err(AuthorizerError(format!(
            "the outcome of {} at {} is unknown and could not be voided yet: {last}",
            a.key, n.name
        )))
    }

    async fn decide(&self, request: &AuthorizationRequest) -> Result<Decision, AuthorizerError> {
        // Cards that are no card numbers are declined before any network is asked.
        if let declined @ Decision::Declined { .. } = CardRule::decide(&request.card)
            && request.card != ftgo_contracts::DECLINED_CARD
        {
            return Ok(declined);
        }
        let order_id = &request.order_id;
        let attempts = journal::attempts(&self.store, order_id)
            .await
            .map_err(store_error)?;
        for a in attempts.iter().filter(|a| a.unresolved()) {
            if self.void(a).await? {
                return Ok(Decision::Declined {
                    reason: CARD_DECLINED.to_owned(),
                });
            }
        }
        if let Some(a) = attempts
            .iter()
            .find(|a| a.status == journal::status::APPROVED)
        {
            return Ok(Decision::Approved(Approval {
                network: a.network.clone(),
                reference: a.network_authorization_id.clone(),
            }));
        }
        let mut seq = attempts.iter().map(|a| a.seq).max().unwrap_or(0);
        let mut previous: Option<String> = None;
        let mut errors = Vec::new();
        for n in self.candidates() {
            let Ok(permit) = n.breaker.try_acquire() else {
                n.count("not_permitted");
                errors.push(format!("{}: breaker {}", n.name, n.breaker.state()));
                previous = Some(n.name.clone());
                continue;
            };
            if let Some(from) = previous.take() {
                metrics::counter!(FAILOVERS, "from" => from, "to" => n.name.clone()).increment(1);
            }
            previous = Some(n.name.clone());
            let Some(url) = self.url(&n).await else {
                permit.record(Outcome::Failure);
                let e = CallError::Refused("not found in the registry".to_owned());
                n.failed(&e);
                n.count("failed");
                errors.push(format!("{}: {e}", n.name));
                continue;
            };
            seq += 1;
            let attempt = Attempt {
                order_id: order_id.clone(),
                seq,
                network: n.name.clone(),
                key: format!("{order_id}:{seq}"),
                status: journal::status::PENDING.to_owned(),
                network_authorization_id: None,
            };
            journal::begin(&self.store, &attempt)
                .await
                .map_err(store_error)?;
            let answer = client::authorize(
                &self.http,
                &url,
                self.timeout,
                &attempt.key,
                order_id,
                request.amount,
                &request.card,
            )
            .await;
            match answer {
                Ok(a) if a.status == client::status::APPROVED => {
                    permit.record(Outcome::Success);
                    n.learn_fee(a.fee_bps);
                    journal::settle(
                        &self.store,
                        order_id,
                        seq,
                        journal::status::APPROVED,
                        Some(&a.id),
                        None,
                    )
                    .await
                    .map_err(store_error)?;
                    n.count("approved");
                    tracing::info!(%order_id, network = %n.name, key = %attempt.key, network_authorization_id = %a.id, "approved by payment network");
                    return Ok(Decision::Approved(Approval {
                        network: n.name.clone(),
                        reference: Some(a.id),
                    }));
                }
                Ok(a) if a.status == client::status::DECLINED => {
                    permit.record(Outcome::Success);
                    n.learn_fee(a.fee_bps);
                    let reason = a.reason.unwrap_or_else(|| CARD_DECLINED.to_owned());
                    journal::settle(
                        &self.store,
                        order_id,
                        seq,
                        journal::status::DECLINED,
                        Some(&a.id),
                        Some(&reason),
                    )
                    .await
                    .map_err(store_error)?;
                    n.count("declined");
                    return Ok(Decision::Declined { reason });
                }
                Err(e @ CallError::Refused(_)) => {
                    permit.record(Outcome::Failure);
                    n.failed(&e);
                    journal::settle(
                        &self.store,
                        order_id,
                        seq,
                        journal::status::FAILED,
                        None,
                        Some(&e.to_string()),
                    )
                    .await
                    .map_err(store_error)?;
                    n.count("failed");
                    tracing::warn!(%order_id, network = %n.name, error = %e, "payment network failed; failing over");
                    errors.push(format!("{}: {e}", n.name));
                }
                other => {
                    // Unknown (or an answer that makes no sense for a fresh key): void it
                    // at this network before anything else is tried.
                    let e = match other {
                        Err(e) => e,
                        Ok(a) => CallError::Unknown(format!("unexpected status {}", a.status)),
                    };
                    permit.record(if matches!(e, CallError::Rejected(_)) {
                        Outcome::Ignored
                    } else {
                        Outcome::Failure
                    });
                    n.failed(&e);
                    n.count("unknown");
                    tracing::warn!(%order_id, network = %n.name, key = %attempt.key, error = %e, "authorization outcome unknown; voiding it");
                    journal::settle(
                        &self.store,
                        order_id,
                        seq,
                        journal::status::UNKNOWN,
                        None,
                        Some(&e.to_string()),
                    )
                    .await
                    .map_err(store_error)?;
                    if self.void(&attempt).await? {
                        return Ok(Decision::Declined {
                            reason: CARD_DECLINED.to_owned(),
                        });
                    }
                    errors.push(format!("{}: {e} (voided)", n.name));
                }
            }
        }
        Err(AuthorizerError(format!(
            "no payment network could authorize order {order_id}: {}",
            errors.join("; ")
        )))
    }

    async fn release(&self, request: &ReversalRequest) -> Result<(), AuthorizerError> {
        let (Some(reference), Some(n)) = (
            request.approval.reference.as_deref(),
            self.networks
                .iter()
                .find(|n| n.name == request.approval.network),
        ) else {
            // Held nowhere we know of (the card rule, or a network no longer configured).
            return Ok(());
        };
        let mut last = String::from("network not found");
        for i in 0..self.void_attempts {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(100 << i.min(4))).await;
            }
            let Some(url) = self.url(n).await else {
                continue;
            };
            match client::cancel(&self.http, &url, self.timeout, reference).await {
                Ok(_) => {
                    n.count("reversed");
                    return Ok(());
                }
                Err(e) => {
                    n.failed(&e);
                    last = e.to_string();
                }
            }
        }
        n.count("reverse_failed");
        Err(AuthorizerError(format!(
            "cannot cancel {reference} at {} yet: {last}",
            n.name
        )))
    }

    /// The failover state.
    pub fn status(&self) -> PaymentNetworks {
        let preferred = match self.selection {
            Selection::Ordered => self
                .networks
                .iter()
                .find(|n| n.breaker.state().permits_calls()),
            Selection::FeeWeighted => self
                .networks
                .iter()
                .filter(|n| n.breaker.state() == State::Closed)
                .min_by_key(|n| n.fee().unwrap_or(u32::MAX)),
        }
        .map(|n| n.name.clone());
        let networks = self
            .networks
            .iter()
            .map(|n| {
                n.gauge();
                let s = n.breaker.snapshot();
                NetworkStatus {
                    name: n.name.clone(),
                    url: n.url.clone().or_else(|| {
                        self.discovery.as_ref().and_then(|d| {
                            d.catalog()
                                .instances(&n.name)
                                .iter()
                                .find(|i| i.is_up())
                                .map(ServiceInstance::base_url)
                        })
                    }),
                    breaker: s.state.as_str().to_owned(),
                    failure_rate: s.failure_rate,
                    recent_calls: s.buffered_calls,
                    recent_failures: s.failed_calls,
                    not_permitted_calls: s.not_permitted_calls,
                    fee_bps: n.fee(),
                    preferred: preferred.as_deref() == Some(n.name.as_str()),
                    last_error: n
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                }
            })
            .collect();
        PaymentNetworks {
            selection: self.selection.as_str().to_owned(),
            preferred,
            networks,
        }
    }
}

impl Authorizer for NetworkAuthorizer {
    fn authorize<'a>(
        &'a self,
        request: &'a AuthorizationRequest,
    ) -> BoxFuture<'a, Result<Decision, AuthorizerError>> {
        Box::pin(self.decide(request))
    }

    fn reverse<'a>(
        &'a self,
        request: &'a ReversalRequest,
    ) -> BoxFuture<'a, Result<(), AuthorizerError>> {
        Box::pin(self.release(request))
    }

    fn networks(&self) -> Option<PaymentNetworks> {
        Some(self.status())
    }
}

fn store_error(e: keel_store::StoreError) -> AuthorizerError {
    AuthorizerError(format!("accounting database: {e}"))
}

/// Keeps the breaker-state gauge current as the breaker moves on its own (OPEN →
/// HALF_OPEN on its timer).
fn watch_breaker(n: &Arc<Network>) {
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    let mut events = n.breaker.subscribe();
    let weak = Arc::downgrade(n);
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(keel_resilience::BreakerEvent::StateTransition { .. })
                | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let Some(n) = weak.upgrade() else { return };
                    n.gauge();
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// Picks one of `items` at random, weighted by 1/fee (an unknown fee counts as the mean of
/// the known ones, or 1 % when none is known).
fn weighted_pick(items: &[usize], fee: impl Fn(usize) -> Option<u32>) -> Option<usize> {
    if items.len() < 2 {
        return items.first().copied();
    }
    let known: Vec<u32> = items.iter().filter_map(|&i| fee(i)).collect();
    let fallback = if known.is_empty() {
        100.0
    } else {
        known.iter().map(|&f| f64::from(f)).sum::<f64>() / known.len() as f64
    };
    let weights: Vec<f64> = items
        .iter()
        .map(|&i| 1.0 / fee(i).map_or(fallback, f64::from).max(1.0))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut x = rand::random::<f64>() * total;
    for (k, w) in weights.iter().enumerate() {
        if x < *w {
            return Some(items[k]);
        }
        x -= w;
    }
    items.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fee_weighting_prefers_the_cheaper_network() {
        let fees = [Some(100), Some(300)];
        let mut first = 0;
        for _ in 0..4000 {
            if weighted_pick(&[0, 1], |i| fees[i]) == Some(0) {
                first += 1;
            }
        }
        // Weights 1/100 : 1/300 → 75 % for the cheaper one.
        assert!((2700..3300).contains(&first), "{first}");
        assert_eq!(weighted_pick(&[1], |i| fees[i]), Some(1));
        assert_eq!(weighted_pick(&[], |i| fees[i]), None);
    }
}
