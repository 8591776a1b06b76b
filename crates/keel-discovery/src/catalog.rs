//! The local instance cache: service → instances, fed by a source, read lock-free by
//! balancers. It keeps the last known instances when the source is unreachable and says
//! how stale they are.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;

use crate::instance::ServiceInstance;

/// Instances of one service, shared.
pub type Instances = Arc<[ServiceInstance]>;

/// The cache. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    services: RwLock<HashMap<String, watch::Sender<Instances>>>,
    /// Epoch ms of the last successful contact with the source (0: never).
    last_contact_ms: AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    fn sender(&self, service: &str) -> watch::Sender<Instances> {
        let key = service.to_ascii_lowercase();
        if let Some(tx) = self
            .inner
            .services
            .read()
            .ok()
            .and_then(|m| m.get(&key).cloned())
        {
            return tx;
        }
        let mut m = self
            .inner
            .services
            .write()
            .unwrap_or_else(|p| p.into_inner());
        m.entry(key)
            .or_insert_with(|| watch::channel(Arc::from(Vec::new())).0)
            .clone()
    }

    /// The known instances of `service` (all statuses).
    pub fn instances(&self, service: &str) -> Instances {
        self.sender(service).borrow().clone()
    }

    /// Subscribes to changes of `service`'s instances.
    pub fn subscribe(&self, service: &str) -> watch::Receiver<Instances> {
        self.sender(service).subscribe()
    }

    /// Names of all services with at least one instance.
    pub fn services(&self) -> Vec<String> {
        let m = self
            .inner
            .services
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<String> = m
            .iter()
            .filter(|(_, tx)| !tx.borrow().is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    /// Replaces the whole catalog (a snapshot or full fetch).
    pub fn replace_all(&self, services: HashMap<String, Vec<ServiceInstance>>) {
        let mut services: HashMap<String, Vec<ServiceInstance>> = services
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let known: Vec<String> = self
            .inner
            .services
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for name in known {
            let list = services.remove(&name).unwrap_or_default();
            self.set(&name, list);
        }
        for (name, list) in services {
            self.set(&name, list);
        }
    }

    /// Sets one service's instances.
    pub fn set(&self, service: &str, mut list: Vec<ServiceInstance>) {
        list.sort_by(|a, b| a.id.cmp(&b.id));
        let tx = self.sender(service);
        tx.send_if_modified(|cur| {
            if cur.as_ref() == list.as_slice() {
                false
            } else {
                *cur = Arc::from(list);
                true
            }
        });
        metrics::gauge!("keel_discovery_instances", "service" => service.to_ascii_lowercase())
            .set(self.instances(service).len() as f64);
    }

    /// Adds or replaces one instance.
    pub fn upsert(&self, instance: ServiceInstance) {
        let mut list: Vec<ServiceInstance> = self.instances(&instance.service).to_vec();
        list.retain(|i| i.id != instance.id);
        let service = instance.service.clone();
        list.push(instance);
        self.set(&service, list);
    }

    /// Removes one instance.
    pub fn remove(&self, service: &str, id: &str) {
        let mut list: Vec<ServiceInstance> = self.instances(service).to_vec();
        let before = list.len();
        list.retain(|i| i.id != id);
        if list.len() != before {
            self.set(service, list);
        }
    }

    /// Records a successful contact with the source.
    pub fn mark_contact(&self) {
        self.inner
            .last_contact_ms
            .store(now_ms(), Ordering::Relaxed);
    }

    /// How long since the source was last reached (`None`: never).
    pub fn staleness(&self) -> Option<Duration> {
        match self.inner.last_contact_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(now_ms().saturating_sub(t))),
        }
    }

    /// Waits until `service` has at least one UP instance, up to `timeout`.
    pub async fn wait_for(&self, service: &str, timeout: Duration) -> Option<Instances> {
        let mut rx = self.subscribe(service);
        let fut = async {
            loop {
                {
                    let cur = rx.borrow_and_update().clone();
                    if cur.iter().any(ServiceInstance::is_up) {
                        return Some(cur);
                    }
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, fut).await.ok().flatten()
    }
}
