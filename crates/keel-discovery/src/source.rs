//! Where the catalog's instances come from: the Keel registry (push), any Eureka server
//! (delta polling), a static list, or DNS (A records, or SRV as Kubernetes headless
//! services publish them).

mod dns;
mod eureka;
mod registry;

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{catalog::Catalog, instance::ServiceInstance};

pub use dns::{DnsTarget, resolve_srv};

/// Which source feeds the catalog.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The Keel registry: a server-sent-event watch, falling back to delta polling.
    #[default]
    Registry,
    /// Any Eureka server: full fetch, then delta polling with hash-code reconciliation.
    Eureka,
    /// A fixed list from configuration.
    Static,
    /// DNS: `host:port` (A/AAAA records) or `_service._proto.name` (SRV records).
    Dns,
}

/// Discovery settings (a `[discovery]`-style section).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// The source.
    pub source: SourceKind,
    /// Registry (or Eureka server) base URLs, tried in order, e.g. `http://127.0.0.1:8761`.
    pub registry: Vec<String>,
    /// Polling interval for Eureka mode and for DNS, in milliseconds.
    pub poll_interval_ms: u64,
    /// For `static`: service → instance URLs.
    pub services: BTreeMap<String, Vec<String>>,
    /// For `dns`: service → `host:port` or an SRV name (`_http._tcp.orders.ns.svc.cluster.local`).
    pub dns: BTreeMap<String, String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            source: SourceKind::Registry,
            registry: vec!["http://127.0.0.1:8761".to_owned()],
            poll_interval_ms: 1_000,
            services: BTreeMap::new(),
            dns: BTreeMap::new(),
        }
    }
}

impl DiscoveryConfig {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.poll_interval_ms == 0 {
            return Err(("poll_interval_ms".into(), "must be greater than 0".into()));
        }
        if matches!(self.source, SourceKind::Registry | SourceKind::Eureka) {
            if self.registry.is_empty() {
                return Err(("registry".into(), "at least one URL is required".into()));
            }
            for (n, u) in self.registry.iter().enumerate() {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err((
                        format!("registry[{n}]"),
                        format!("not an http(s) URL: {u:?}"),
                    ));
                }
            }
        }
        for (svc, urls) in &self.services {
            for (n, u) in urls.iter().enumerate() {
                ServiceInstance::from_url(svc, u)
                    .map_err(|e| (format!("services.{svc}[{n}]"), e))?;
            }
        }
        for (svc, target) in &self.dns {
            DnsTarget::parse(target).map_err(|e| (format!("dns.{svc}"), e))?;
        }
        Ok(())
    }
}

/// Runs the configured source, feeding `catalog`, until `stop` is cancelled.
pub async fn run(
    config: DiscoveryConfig,
    catalog: Catalog,
    client: reqwest::Client,
    stop: CancellationToken,
) {
    let interval = Duration::from_millis(config.poll_interval_ms);
    let staleness = {
        let catalog = catalog.clone();
        let stop = stop.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let s = catalog
                    .staleness()
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(f64::INFINITY);
                metrics::gauge!("keel_discovery_cache_staleness_seconds").set(s);
            }
        }
    };
    let source = async {
        match config.source {
            SourceKind::Registry => {
                registry::run(&config.registry, interval, &catalog, &client, &stop).await
            }
            SourceKind::Eureka => {
                eureka::run(&config.registry, interval, &catalog, &client, &stop).await
            }
            SourceKind::Static => {
                let mut all = std::collections::HashMap::new();
                for (svc, urls) in &config.services {
                    let list: Vec<ServiceInstance> = urls
                        .iter()
                        .filter_map(|u| ServiceInstance::from_url(svc, u).ok())
                        .collect();
                    all.insert(svc.clone(), list);
                }
                catalog.replace_all(all);
                catalog.mark_contact();
                stop.cancelled().await;
            }
            SourceKind::Dns => dns::run(&config.dns, interval, &catalog, &stop).await,
        }
    };
    tokio::join!(staleness, source);
}
