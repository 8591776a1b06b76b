//! Eureka mode: a full fetch, then `GET /eureka/apps/delta` every interval. The delta is
//! applied locally and the result's hash code compared with the server's; a mismatch
//! triggers a full fetch (Eureka's own reconciliation).

use std::{collections::HashMap, time::Duration};

use keel_eureka::{ActionType, Applications, ApplicationsEnvelope};
use tokio_util::sync::CancellationToken;

use crate::{catalog::Catalog, instance::ServiceInstance};

pub(super) async fn run(
    urls: &[String],
    interval: Duration,
    catalog: &Catalog,
    client: &reqwest::Client,
    stop: &CancellationToken,
) {
    let mut synced = false;
    let mut n = 0usize;
    loop {
        let base = super::registry::eureka_base(&urls[n % urls.len()]);
        let ok = if synced {
            delta(&base, catalog, client).await
        } else {
            full(&base, catalog, client).await
        };
        match ok {
            Ok(true) => {
                synced = true;
                catalog.mark_contact();
            }
            Ok(false) => synced = false, // hash mismatch: full fetch next
            Err(e) => {
                tracing::debug!(registry = %base, error = %e, "discovery poll failed; keeping last known instances");
                n += 1;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

async fn fetch(url: &str, client: &reqwest::Client) -> Result<Applications, String> {
    let res = client
        .get(url)
        .header("accept", "application/json")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("{url} answered {}", res.status()));
    }
    res.json::<ApplicationsEnvelope>()
        .await
        .map(|e| e.applications)
        .map_err(|e| e.to_string())
}

pub(super) async fn full(
    base: &str,
    catalog: &Catalog,
    client: &reqwest::Client,
) -> Result<bool, String> {
    let apps = fetch(&format!("{base}/apps"), client).await?;
    let mut all: HashMap<String, Vec<ServiceInstance>> = HashMap::new();
    for app in &apps.application {
        let list = app
            .instance
            .iter()
            .map(ServiceInstance::from_eureka)
            .collect();
        all.insert(app.name.to_ascii_lowercase(), list);
    }
    catalog.replace_all(all);
    Ok(true)
}

async fn delta(base: &str, catalog: &Catalog, client: &reqwest::Client) -> Result<bool, String> {
    let d = fetch(&format!("{base}/apps/delta"), client).await?;
    for app in &d.application {
        for i in &app.instance {
            match i.action_type {
                Some(ActionType::Deleted) => catalog.remove(&app.name, &i.instance_id),
                _ => catalog.upsert(ServiceInstance::from_eureka(i)),
            }
        }
    }
    let local = keel_eureka::hashcode(
        catalog
            .services()
            .iter()
            .flat_map(|s| catalog.instances(s).to_vec())
            .map(|i| i.status),
    );
    if local != d.apps_hashcode {
        tracing::debug!(%local, remote = %d.apps_hashcode, "hash codes differ; full fetch");
        return Ok(false);
    }
    Ok(true)
}
