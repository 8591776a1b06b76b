//! Keel registry mode: `GET /keel/v1/watch` (server-sent events) applies every change the
//! moment it happens. When the watch is unavailable (an older or plain Eureka server
//! answers 404), it falls back to Eureka delta polling. When the registry is unreachable,
//! the last known instances stay and the connection is retried with backoff.

use std::{collections::HashMap, time::Duration};

use keel_eureka::{ActionType, Application, Instance};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{catalog::Catalog, instance::ServiceInstance};

/// `http://host:port` → `http://host:port/eureka`.
pub(crate) fn eureka_base(url: &str) -> String {
    let u = url.trim_end_matches('/');
    if u.ends_with("/eureka") {
        u.to_owned()
    } else {
        format!("{u}/eureka")
    }
}

fn keel_base(url: &str) -> String {
    url.trim_end_matches('/')
        .trim_end_matches("/eureka")
        .to_owned()
}

#[derive(Debug, Deserialize)]
struct Snapshot {
    applications: Vec<Application>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Change {
    action: ActionType,
    app: String,
    instance_id: String,
    instance: Instance,
}

enum WatchEnd {
    /// The server has no watch endpoint: poll instead.
    Unsupported,
    /// Connection failed or dropped.
    Failed(String),
    /// Asked to stop.
    Stopped,
}

pub(super) async fn run(
    urls: &[String],
    poll: Duration,
    catalog: &Catalog,
    client: &reqwest::Client,
    stop: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    let mut n = 0usize;
    loop {
        let url = &urls[n % urls.len()];
        match watch(url, catalog, client, stop, &mut backoff).await {
            WatchEnd::Stopped => return,
            WatchEnd::Unsupported => {
                tracing::info!(registry = %url, "no watch endpoint; polling deltas instead");
                super::eureka::run(urls, poll, catalog, client, stop).await;
                return;
            }
            WatchEnd::Failed(e) => {
                tracing::debug!(registry = %url, error = %e, "registry watch failed; keeping last known instances");
                metrics::counter!("keel_discovery_watch_failures_total").increment(1);
                n += 1;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn watch(
    url: &str,
    catalog: &Catalog,
    client: &reqwest::Client,
    stop: &CancellationToken,
    backoff: &mut Duration,
) -> WatchEnd {
    let res = tokio::select! {
        _ = stop.cancelled() => return WatchEnd::Stopped,
        r = client.get(format!("{}/keel/v1/watch", keel_base(url)))
            .header("accept", "text/event-stream")
            .send() => r,
    };
    let mut res = match res {
        Ok(r) if r.status().is_success() => r,
        Ok(r) if r.status() == 404 || r.status() == 405 => return WatchEnd::Unsupported,
        Ok(r) => return WatchEnd::Failed(format!("watch answered {}", r.status())),
        Err(e) => return WatchEnd::Failed(e.to_string()),
    };
    let mut buf = String::new();
    // The server sends a keep-alive every 15 s; silence for 45 s means a dead connection.
    let idle = Duration::from_secs(45);
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => return WatchEnd::Stopped,
            c = tokio::time::timeout(idle, res.chunk()) => c,
        };
        let chunk = match chunk {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => return WatchEnd::Failed("watch stream ended".into()),
            Ok(Err(e)) => return WatchEnd::Failed(e.to_string()),
            Err(_) => return WatchEnd::Failed("watch stream idle for 45 s".into()),
        };
        catalog.mark_contact();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = "";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = if e.trim() == "snapshot" {
                        "snapshot"
                    } else if e.trim() == "change" {
                        "change"
                    } else {
                        ""
                    };
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            match event {
                "snapshot" => match serde_json::from_str::<Snapshot>(&data) {
                    Ok(s) => {
                        let mut all: HashMap<String, Vec<ServiceInstance>> = HashMap::new();
                        for app in s.applications {
                            let list = app
                                .instance
                                .iter()
                                .map(ServiceInstance::from_eureka)
                                .collect();
                            all.insert(app.name.to_ascii_lowercase(), list);
                        }
                        catalog.replace_all(all);
                        *backoff = Duration::from_millis(50);
                    }
                    Err(e) => return WatchEnd::Failed(format!("bad snapshot: {e}")),
                },
                "change" => match serde_json::from_str::<Change>(&data) {
                    Ok(c) => match c.action {
                        ActionType::Deleted => catalog.remove(&c.app, &c.instance_id),
                        _ => catalog.upsert(ServiceInstance::from_eureka(&c.instance)),
                    },
                    Err(e) => return WatchEnd::Failed(format!("bad change: {e}")),
                },
                _ => {}
            }
        }
    }
}
