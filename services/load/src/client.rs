//! HTTP plumbing shared by load, chaos and the invariant check: the gateway, and the
//! services found through the registry's push watch (so a restarted instance on a new port
//! is found again).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use keel_discovery::{Discovery, DiscoveryConfig};
use serde_json::Value;

use crate::load::POLL;

/// The running system as seen by the drivers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Systems {
    /// HTTP client.
    pub http: reqwest::Client,
    /// The gateway's base URL.
    pub gateway: String,
    discovery: Arc<Discovery>,
}

impl Systems {
    /// Connects to the registry's watch and checks the gateway answers.
    pub async fn connect(gateway: &str, registry: &str) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|e| e.to_string())?;
        let config = DiscoveryConfig {
            registry: vec![registry.trim_end_matches('/').to_owned()],
            ..DiscoveryConfig::default()
        };
        let discovery = Arc::new(Discovery::start(config, http.clone()));
        let gateway = gateway.trim_end_matches('/').to_owned();
        http.get(format!("{gateway}/health/ready"))
            .send()
            .await
            .map_err(|e| format!("the gateway at {gateway} does not answer: {e}"))?;
        Ok(Self {
            http,
            gateway,
            discovery,
        })
    }

    /// A base URL of an up instance of `service`, waiting up to `within` for one.
    pub async fn service(&self, service: &str, within: Duration) -> Result<String, String> {
        let catalog = self.discovery.catalog();
        let deadline = Instant::now() + within;
        loop {
            let instances = catalog.instances(service);
            let up: Vec<_> = instances.iter().filter(|i| i.is_up()).collect();
            if !up.is_empty() {
                let i = rand::random_range(0..up.len());
                return Ok(up[i].base_url());
            }
            if Instant::now() >= deadline {
                return Err(format!("no instance of {service} is registered"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GET `path` of `service` as JSON: `Ok(None)` on 404; retried while the service is
    /// unreachable, up to `within`.
    pub async fn get(
        &self,
        service: &str,
        path: &str,
        within: Duration,
    ) -> Result<Option<Value>, String> {
        let deadline = Instant::now() + within;
        loop {
            let last = match self.service(service, within).await {
                Ok(base) => match self.http.get(format!("{base}{path}")).send().await {
                    Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => return Ok(None),
                    Ok(r) if r.status().is_success() => {
                        return r
                            .json::<Value>()
                            .await
                            .map(Some)
                            .map_err(|e| format!("GET {service}{path}: {e}"));
                    }
                    Ok(r) => format!("GET {service}{path}: {}", r.status()),
                    Err(e) => format!("GET {service}{path}: {e}"),
                },
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls the order service until order `id` is terminal (`APPROVED`, `REJECTED`,
    /// `CANCELLED`): its state and rejection reason; `Err(last state seen)` at `deadline`.
    pub async fn wait_terminal(
        &self,
        id: &str,
        deadline: Instant,
    ) -> Result<(String, Option<String>), String> {
        let mut last = String::from("UNSEEN");
        let began = Instant::now();
        loop {
            // Every POLL while an order is young (the latency that matters is resolved to
            // POLL), then a tenth of its age, at most 250 ms: a backlog of slow orders must
            // not flood the order service with reads.
            let age = began.elapsed();
            tokio::time::sleep((age / 10).clamp(POLL, Duration::from_millis(250))).await;
            if let Ok(base) = self.service("order", Duration::ZERO).await
                && let Ok(r) = self.http.get(format!("{base}/orders/{id}")).send().await
                && r.status().is_success()
                && let Ok(v) = r.json::<Value>().await
            {
                let state = v["state"].as_str().unwrap_or_default().to_owned();
                if matches!(state.as_str(), "APPROVED" | "REJECTED" | "CANCELLED") {
                    let reason = v["rejectionReason"].as_str().map(str::to_owned);
                    return Ok((state, reason));
                }
                last = state;
            }
            if Instant::now() >= deadline {
                return Err(last);
            }
        }
    }
}

/// POSTs `body` as JSON; retries a refused connection, a timeout-free transport error or a
/// 502/503/504 answer until `within` has passed. A 4xx is an error at once.
pub(crate) async fn retrying_post(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
    within: Duration,
) -> Result<Value, String> {
    let deadline = Instant::now() + within;
    let mut backoff = Duration::from_millis(50);
    loop {
        let last = match http.post(url).json(body).send().await {
            Ok(r) if r.status().is_success() => {
                return r
                    .json::<Value>()
                    .await
                    .map_err(|e| format!("POST {url}: {e}"));
            }
            Ok(r) if matches!(r.status().as_u16(), 502..=504) => {
                format!("POST {url}: {}", r.status())
            }
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                return Err(format!("POST {url}: {status}: {text}"));
            }
            // A timed-out request may have been applied: never sent twice.
            Err(e) if e.is_timeout() => return Err(format!("POST {url}: {e}")),
            Err(e) => format!("POST {url}: {e}"),
        };
        if Instant::now() + backoff >= deadline {
            return Err(last);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}
