//! `keel registry`: a Eureka-compatible service registry that pushes every change to
//! watchers in milliseconds — leases, eviction, self-preservation, peer replication and a
//! dashboard, on the Keel chassis.
//!
//! The wire is Eureka's REST API under `/eureka` (JSON or XML by `Accept`), so Spring
//! Cloud Netflix and py-eureka-client work unchanged; `/keel/v1/watch` streams changes as
//! server-sent events. See `docs/discovery.md`.

pub mod api;
mod dashboard;
pub mod registry;
pub mod replication;

use std::{sync::Arc, time::Duration};

use keel_chassis::{ChassisArgs, Invalid, KeelConfig, Service, Validate, axum};
use serde::{Deserialize, Serialize};

pub use keel_eureka::{Instance, Status};
pub use registry::{Registry, RegistryConfig};

/// Default listen address (Eureka's port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8761";

/// The registry's settings (`[app]` in its config file, `KEEL_APP__…` in the environment).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// Peer registries to replicate with (their base URLs, e.g. `http://10.0.0.2:8761`).
    pub peers: Vec<String>,
    /// Suspend eviction when renewals collapse (Eureka's self-preservation). Off by default
    /// (development); enable in production.
    pub self_preservation: bool,
    /// Fraction of expected renewals below which self-preservation engages.
    pub renewal_percent_threshold: f64,
    /// How often expired leases are evicted, in milliseconds (Eureka: 60 000).
    pub eviction_interval_ms: u64,
    /// How long changes stay in the delta, in milliseconds (Eureka: 180 000).
    pub delta_retention_ms: u64,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            self_preservation: false,
            renewal_percent_threshold: 0.85,
            eviction_interval_ms: 1_000,
            delta_retention_ms: 180_000,
        }
    }
}

impl Validate for RegistrySettings {
    fn validate(&self) -> Result<(), Invalid> {
        if !(self.renewal_percent_threshold > 0.0 && self.renewal_percent_threshold <= 1.0) {
            return Err(Invalid::new(
                "renewal_percent_threshold",
                "must be in (0, 1]",
            ));
        }
        if self.eviction_interval_ms == 0 {
            return Err(Invalid::new(
                "eviction_interval_ms",
                "must be greater than 0",
            ));
        }
        for (n, p) in self.peers.iter().enumerate() {
            if !(p.starts_with("http://") || p.starts_with("https://")) {
                return Err(Invalid::new(
                    format!("peers[{n}]"),
                    format!("must be an http:// or https:// URL, got {p:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// The configuration with the registry's own defaults (listen on 127.0.0.1:8761).
pub fn default_config() -> KeelConfig<RegistrySettings> {
    let mut c = KeelConfig::<RegistrySettings>::default();
    c.server.listen = DEFAULT_LISTEN.parse().expect("valid default address");
    c
}

/// Runs the registry until SIGTERM/SIGINT. `peers` from `--peer` flags are added to the
/// configured ones.
pub async fn run(args: &ChassisArgs, peers: &[String]) -> Result<(), keel_chassis::Error> {
    let mut args = args.clone();
    if !peers.is_empty() {
        args.set.push(format!("app.peers={}", peers.join(",")));
    }
    let service =
        Service::<RegistrySettings>::load_with_defaults("registry", &args, default_config())?;
    serve(service).await
}

/// Serves a registry built from `service`'s configuration until shutdown.
pub async fn serve(service: Service<RegistrySettings>) -> Result<(), keel_chassis::Error> {
    let router = app(&service);
    service.serve(router).await
}

/// Builds the registry's routes for `service` and starts its background work (eviction,
/// replication, start-up sync) as the service's tasks. Serve the router with the service.
pub fn app(service: &Service<RegistrySettings>) -> axum::Router {
    let settings = service.config().clone();
    let registry = Arc::new(Registry::new(RegistryConfig {
        self_preservation: settings.self_preservation,
        renewal_percent_threshold: settings.renewal_percent_threshold,
        delta_retention_ms: settings.delta_retention_ms,
    }));
    let stop = service.shutdown_token();
    let draining = service.draining_token();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .build()
        .unwrap_or_default();
    let peers = replication::Peers::start(
        &settings.peers,
        registry.clone(),
        client.clone(),
        stop.clone(),
    );
    if !peers.is_empty() {
        let (r, p, c) = (registry.clone(), peers.clone(), client.clone());
        service.spawn(async move {
            p.initial_sync(&r, &c, 10).await;
        });
    }
    {
        let r = registry.clone();
        // Eviction stops when draining begins: with the listener closing, no renewal can
        // arrive, and evicting everyone on the way out would push false deletions.
        let stop = draining.clone();
        let every = Duration::from_millis(settings.eviction_interval_ms);
        service.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let evicted = r.evict();
                if evicted > 0 {
                    metrics::counter!("keel_registry_evictions_total").increment(evicted as u64);
                }
                let s = r.stats();
                metrics::gauge!("keel_registry_instances").set(s.instances as f64);
                metrics::gauge!("keel_registry_applications").set(s.applications as f64);
                metrics::gauge!("keel_registry_renews_last_minute")
                    .set(s.renews_last_minute as f64);
                metrics::gauge!("keel_registry_self_preservation_active")
                    .set(if s.self_preservation_active { 1.0 } else { 0.0 });
                metrics::gauge!("keel_registry_watchers").set(r.watchers() as f64);
            }
        });
    }
    let state = api::AppState {
        registry,
        peers,
        admin_token: service.keel_config().server.admin_token.clone(),
        started_ms: registry::SystemClock.now_ms(),
        draining,
    };
    api::router(state)
}

use registry::Clock as _;
