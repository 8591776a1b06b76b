//! Registering this process with the registry: register on start, heartbeat every
//! renewal interval (registering again when the registry answers 404 — e.g. after it
//! restarted), deregister when the service starts draining. Registry URLs are tried in
//! order, so a replicated registry survives one node's loss.

use std::{collections::BTreeMap, time::Duration};

use keel_eureka::{DataCenterInfo, Instance, InstanceEnvelope, LeaseInfo, Port, Status};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// How this process registers itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Register at all.
    pub enabled: bool,
    /// Registry base URLs, tried in order.
    pub registry: Vec<String>,
    /// Service name (defaults to the chassis service name).
    pub service: String,
    /// Instance id (default `service-host:port`).
    pub instance_id: Option<String>,
    /// Address other services use to reach this one.
    pub host: String,
    /// Port (default: the bound port).
    pub port: u16,
    /// Path of the health URL advertised to the registry.
    pub health_path: String,
    /// Metadata: `version`, `zone`, `weight`, anything.
    pub metadata: BTreeMap<String, String>,
    /// Heartbeat interval, in milliseconds (Eureka clients: 30 000; Keel: 1 000).
    pub renewal_interval_ms: u64,
    /// Lease duration without heartbeats, in milliseconds (Eureka: 90 000; Keel: 3 000).
    pub lease_duration_ms: u64,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            registry: vec!["http://127.0.0.1:8761".to_owned()],
            service: String::new(),
            instance_id: None,
            host: "127.0.0.1".to_owned(),
            port: 0,
            health_path: "/health/ready".to_owned(),
            metadata: BTreeMap::new(),
            renewal_interval_ms: 1_000,
            lease_duration_ms: 3_000,
        }
    }
}

/// Registers one instance and keeps its lease alive.
#[derive(Debug, Clone)]
pub struct Registrar {
    config: RegistrationConfig,
    client: reqwest::Client,
}

fn eureka_base(url: &str) -> String {
    let u = url.trim_end_matches('/');
    if u.ends_with("/eureka") {
        u.to_owned()
    } else {
        format!("{u}/eureka")
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Registrar {
    /// A registrar for `config` (its `service` and `port` must be set).
    pub fn new(config: RegistrationConfig, client: reqwest::Client) -> Self {
        Self { config, client }
    }

    /// The instance id this registrar uses.
    pub fn instance_id(&self) -> String {
        self.config.instance_id.clone().unwrap_or_else(|| {
            format!(
                "{}-{}:{}",
                self.config.service.to_ascii_lowercase(),
                self.config.host,
                self.config.port
            )
        })
    }

    fn app(&self) -> String {
        self.config.service.to_ascii_uppercase()
    }

    /// The Eureka record sent on registration.
    pub fn instance(&self, dirty: u64) -> Instance {
        let c = &self.config;
        let mut i = Instance::new(&c.service, &self.instance_id(), &c.host, c.port);
        i.host_name = c.host.clone();
        i.port = Some(Port {
            port: c.port,
            enabled: true,
        });
        i.data_center_info = Some(DataCenterInfo::default());
        i.lease_info = LeaseInfo {
            renewal_interval_in_secs: c.renewal_interval_ms.div_ceil(1000).max(1),
            duration_in_secs: c.lease_duration_ms.div_ceil(1000).max(1),
            ..LeaseInfo::default()
        };
        i.metadata = c.metadata.clone();
        let base = format!("http://{}:{}", c.host, c.port);
        i.home_page_url = Some(format!("{base}/"));
        i.status_page_url = Some(format!("{base}/health"));
        i.health_check_url = Some(format!("{base}{}", c.health_path));
        i.last_dirty_timestamp = dirty;
        i.status = Status::Up;
        i
    }

    async fn register(&self, base: &str, dirty: u64) -> Result<(), String> {
        let res = self
            .client
            .post(format!("{base}/apps/{}", self.app()))
            .json(&InstanceEnvelope {
                instance: self.instance(dirty),
            })
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(format!("registration answered {}", res.status()))
        }
    }

    /// One heartbeat; registers again when the registry does not know us.
    async fn renew(&self, base: &str, dirty: u64) -> Result<(), String> {
        let res = self
            .client
            .put(format!(
                "{base}/apps/{}/{}?status=UP&lastDirtyTimestamp={dirty}",
                self.app(),
                self.instance_id()
            ))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match res.status().as_u16() {
            200..=299 => Ok(()),
            404 => {
                tracing::info!(registry = %base, "registry does not know this instance; registering again");
                self.register(base, dirty).await
            }
            s => Err(format!("heartbeat answered {s}")),
        }
    }

    /// Registers, heartbeats until `draining` is cancelled, then deregisters.
    pub async fn run(self, draining: CancellationToken) {
        let dirty = now_ms();
        let urls: Vec<String> = self
            .config
            .registry
            .iter()
            .map(|u| eureka_base(u))
            .collect();
        if urls.is_empty() {
            return;
        }
        let every = Duration::from_millis(self.config.renewal_interval_ms.max(100));
        let mut n = 0usize;
        let mut registered = false;
        let mut warned = false;
        loop {
            let base = &urls[n % urls.len()];
            let result = if registered {
                self.renew(base, dirty).await
            } else {
                self.register(base, dirty).await
            };
            match result {
                Ok(()) => {
                    if !registered {
                        tracing::info!(registry = %base, instance = %self.instance_id(), "registered");
                    }
                    registered = true;
                    warned = false;
                }
                Err(e) => {
                    metrics::counter!("keel_discovery_registration_failures_total").increment(1);
                    if !warned {
                        tracing::warn!(registry = %base, error = %e, "cannot reach the registry; will keep trying");
                        warned = true;
                    }
                    registered = false;
                    n += 1;
                }
            }
            tokio::select! {
                _ = draining.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
        for base in &urls {
            let res = self
                .client
                .delete(format!("{base}/apps/{}/{}", self.app(), self.instance_id()))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if res.is_ok_and(|r| r.status().is_success()) {
                tracing::info!(registry = %base, "deregistered");
                break;
            }
        }
    }
}
