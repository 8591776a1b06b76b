//! Peer replication: every change a *client* makes is sent to every peer, marked with
//! Eureka's `x-netflix-discovery-replication: true` header. A replicated request is
//! applied but never replicated again, so a loop between peers is impossible. A starting
//! node pulls the full registry from the first peer that answers. Conflicts resolve by
//! `lastDirtyTimestamp`: a renewal the peer answers with 404 is followed by a full
//! registration; one answered with 409 carries the peer's newer record, which we adopt.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use keel_eureka::{ApplicationsEnvelope, Instance, InstanceEnvelope, Status};

use crate::registry::Registry;

pub use keel_eureka::REPLICATION_HEADER;

/// One change to pass on.
#[derive(Debug, Clone)]
pub enum Task {
    /// A registration (the full record).
    Register(Box<Instance>),
    /// A heartbeat.
    Renew {
        /// Application.
        app: String,
        /// Instance id.
        id: String,
        /// Reported status.
        status: Option<Status>,
        /// The instance's last-dirty timestamp.
        last_dirty: u64,
        /// Current override.
        overridden: Status,
    },
    /// A cancellation.
    Cancel {
        /// Application.
        app: String,
        /// Instance id.
        id: String,
    },
    /// A status override.
    Override {
        /// Application.
        app: String,
        /// Instance id.
        id: String,
        /// The override.
        status: Status,
    },
    /// Removal of a status override.
    DeleteOverride {
        /// Application.
        app: String,
        /// Instance id.
        id: String,
    },
    /// Metadata update.
    Metadata {
        /// Application.
        app: String,
        /// Instance id.
        id: String,
        /// Entries to set.
        entries: BTreeMap<String, String>,
    },
}

/// What the dashboard shows about a peer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// The peer's Eureka base URL.
    pub url: String,
    /// Epoch ms of the last successful replication (0: never).
    pub last_success_ms: u64,
    /// Replication requests that failed after retries.
    pub failures: u64,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Peer {
    url: String,
    tx: mpsc::Sender<Task>,
    last_success_ms: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// The set of peers and their replication workers.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    peers: Arc<Vec<Arc<Peer>>>,
}

/// Queue length per peer; beyond it tasks are dropped and counted (the peer resyncs
/// what it missed through 404-driven re-registration and its own start-up sync).
const QUEUE: usize = 100_000;

/// Normalizes a peer URL to its Eureka base (`http://host:port/eureka`).
pub fn eureka_base(url: &str) -> String {
    let u = url.trim_end_matches('/');
    if u.ends_with("/eureka") {
        u.to_owned()
    } else {
        format!("{u}/eureka")
    }
}

impl Peers {
    /// Starts one replication worker per peer URL.
    pub fn start(
        urls: &[String],
        registry: Arc<Registry>,
        client: reqwest::Client,
        stop: CancellationToken,
    ) -> Self {
        let mut peers = Vec::new();
        for url in urls {
            let (tx, rx) = mpsc::channel(QUEUE);
            let peer = Arc::new(Peer {
                url: eureka_base(url),
                tx,
                last_success_ms: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                last_error: Mutex::new(None),
            });
            tokio::spawn(worker(
                peer.clone(),
                rx,
                registry.clone(),
                client.clone(),
                stop.clone(),
            ));
            peers.push(peer);
        }
        Self {
            peers: Arc::new(peers),
        }
    }

    /// Whether there are peers.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Queues `task` for every peer.
    pub fn replicate(&self, task: Task) {
        for p in self.peers.iter() {
            if p.tx.try_send(task.clone()).is_err() {
                p.failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("keel_registry_replication_dropped_total", "peer" => p.url.clone())
                    .increment(1);
            }
        }
    }

    /// Status of every peer.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|p| PeerStatus {
                url: p.url.clone(),
                last_success_ms: p.last_success_ms.load(Ordering::Relaxed),
                failures: p.failures.load(Ordering::Relaxed),
                last_error: p.last_error.lock().ok().and_then(|e| e.clone()),
            })
            .collect()
    }

    /// Pulls the full registry from the first peer that answers (retrying for a while,
    /// since peers often start together). Returns how many instances were loaded.
    pub async fn initial_sync(
        &self,
        registry: &Registry,
        client: &reqwest::Client,
        attempts: u32,
    ) -> Option<usize> {
        for attempt in 0..attempts {
            for p in self.peers.iter() {
                let res = client
                    .get(format!("{}/apps", p.url))
                    .header("accept", "application/json")
                    .header(REPLICATION_HEADER, "true")
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                let Ok(res) = res else { continue };
                if !res.status().is_success() {
                    continue;
                }
                let Ok(apps) = res.json::<ApplicationsEnvelope>().await else {
                    continue;
                };
                let mut n = 0;
                for app in apps.applications.application {
                    for i in app.instance {
                        registry.register(i);
                        n += 1;
                    }
                }
                tracing::info!(peer = %p.url, instances = n, "synced the registry from a peer");
                return Some(n);
            }
            if attempt + 1 < attempts {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        tracing::warn!("no peer answered the start-up sync; starting empty");
        None
    }
}

async fn worker(
    peer: Arc<Peer>,
    mut rx: mpsc::Receiver<Task>,
    registry: Arc<Registry>,
    client: reqwest::Client,
    stop: CancellationToken,
) {
    loop {
        let task = tokio::select! {
            _ = stop.cancelled() => return,
            t = rx.recv() => match t { Some(t) => t, None => return },
        };
        let mut delay = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            tries += 1;
            match send(&peer.url, &task, &registry, &client).await {
                Ok(()) => {
                    peer.last_success_ms
                        .store(registry.now_ms(), Ordering::Relaxed);
                    if let Ok(mut e) = peer.last_error.lock() {
                        *e = None;
                    }
                    break;
                }
                Err(error) => {
                    if let Ok(mut e) = peer.last_error.lock() {
                        *e = Some(error.clone());
                    }
                    if tries >= 3 {
                        peer.failures.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("keel_registry_replication_failures_total", "peer" => peer.url.clone())
                            .increment(1);
                        tracing::debug!(peer = %peer.url, %error, "replication failed; dropping task");
                        break;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {},
                    }
                    delay = (delay * 4).min(Duration::from_secs(2));
                }
            }
        }
    }
}

async fn send(
    base: &str,
    task: &Task,
    registry: &Registry,
    client: &reqwest::Client,
) -> Result<(), String> {
    let timeout = Duration::from_secs(3);
    let req = match task {
        Task::Register(i) => {
            client
                .post(format!("{base}/apps/{}", i.app))
                .json(&InstanceEnvelope {
                    instance: (**i).clone(),
                })
        }
        Task::Renew {
            app,
            id,
            status,
            last_dirty,
            overridden,
        } => {
            let mut url = format!(
                "{base}/apps/{app}/{id}?lastDirtyTimestamp={last_dirty}&overriddenstatus={overridden}"
            );
            if let Some(s) = status {
                url.push_str(&format!("&status={s}"));
            }
            client.put(url)
        }
        Task::Cancel { app, id } => client.delete(format!("{base}/apps/{app}/{id}")),
        Task::Override { app, id, status } => {
            client.put(format!("{base}/apps/{app}/{id}/status?value={status}"))
        }
        Task::DeleteOverride { app, id } => client.delete(format!("{base}/apps/{app}/{id}/status")),
        Task::Metadata { app, id, entries } => client
            .put(format!("{base}/apps/{app}/{id}/metadata"))
            .query(entries),
    };
    let res = req
        .header(REPLICATION_HEADER, "true")
        .header("accept", "application/json")
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status();
    match task {
        Task::Renew { app, id, .. } if status == 404 => {
            // The peer lacks the instance (or has older data): send the full record.
            match registry.instance(app, id) {
                Some(i) => {
                    Box::pin(send(base, &Task::Register(Box::new(i)), registry, client)).await
                }
                None => Ok(()),
            }
        }
        Task::Renew { .. } if status == 409 => {
            // The peer holds newer data: adopt it.
            if let Ok(i) = res.json::<Instance>().await {
                registry.register(i);
            }
            Ok(())
        }
        Task::Cancel { .. }
        | Task::Override { .. }
        | Task::DeleteOverride { .. }
        | Task::Metadata { .. }
            if status == 404 =>
        {
            Ok(())
        }
        _ if status.is_success() => Ok(()),
        _ => Err(format!("peer answered {status}")),
    }
}
