//! The registry itself: instances and their leases, change index, delta queue, watch
//! events, eviction and self-preservation. No HTTP here; `api.rs` is the wire.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Serialize;
use tokio::sync::broadcast;

use keel_eureka::{ActionType, Application, Applications, Instance, Status};

/// Milliseconds since the Unix epoch, from a clock tests can control.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in epoch milliseconds.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock at `ms`.
    pub fn new(ms: u64) -> Self {
        Self(AtomicU64::new(ms))
    }
    /// Moves the clock forward.
    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Registry behaviour settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryConfig {
    /// Stop evicting when renewals fall below `renewal_percent_threshold` of those expected
    /// (Eureka's self-preservation). Off by default — right for development, where
    /// instances come and go; turn it on in production.
    pub self_preservation: bool,
    /// Fraction of expected renewals below which self-preservation engages (Eureka: 0.85).
    pub renewal_percent_threshold: f64,
    /// How long changes stay in the delta queue, in milliseconds (Eureka: 3 minutes).
    pub delta_retention_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            self_preservation: false,
            renewal_percent_threshold: 0.85,
            delta_retention_ms: 180_000,
        }
    }
}

/// A change pushed to watchers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Registry index after this change (strictly increasing).
    pub index: u64,
    /// What happened.
    pub action: ActionType,
    /// Application name.
    pub app: String,
    /// Instance id.
    pub instance_id: String,
    /// The instance after the change (for DELETED: its last state).
    pub instance: Arc<Instance>,
}

/// The result of a renewal.
#[derive(Debug, Clone, PartialEq)]
pub enum RenewOutcome {
    /// Lease extended.
    Renewed,
    /// Unknown instance, or the caller has newer data: it should register again.
    NotFound,
    /// The registry has newer data than the (replicating) caller; here it is.
    Conflict(Box<Instance>),
}

/// Optional renewal parameters (`?status=&lastDirtyTimestamp=&overriddenstatus=`).
#[derive(Debug, Clone, Default)]
pub struct Renewal {
    /// Status the instance reports.
    pub status: Option<Status>,
    /// The instance's last-dirty timestamp.
    pub last_dirty: Option<u64>,
    /// Status override the caller knows of (replication).
    pub overridden: Option<Status>,
}

/// Numbers shown on the dashboard and exported as metrics.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Registered instances.
    pub instances: usize,
    /// Applications with at least one instance.
    pub applications: usize,
    /// Current index.
    pub index: u64,
    /// Renewals received in the last 60 s.
    pub renews_last_minute: u64,
    /// Renewals expected per minute from the registered leases.
    pub expected_renews_per_minute: u64,
    /// Whether self-preservation is enabled.
    pub self_preservation_enabled: bool,
    /// Whether it is engaged now (evictions suspended).
    pub self_preservation_active: bool,
}

#[derive(Debug)]
struct Lease {
    /// Shared with the delta queue and watch events: a record is stored once.
    instance: Arc<Instance>,
    /// Kept outside the shared record so a heartbeat never copies it.
    last_renewal_ms: u64,
}

#[derive(Debug)]
struct State {
    apps: BTreeMap<String, BTreeMap<String, Lease>>,
    index: u64,
    recent: VecDeque<(u64, Arc<Event>)>,
    /// Renewals per second over the last 60 s: (second, count).
    renew_buckets: [(u64, u64); 60],
    /// When the first instance registered (self-preservation waits a minute after it).
    first_registration: Option<u64>,
}

/// The registry. Share it with `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Registry {
    state: RwLock<State>,
    events: broadcast::Sender<Arc<Event>>,
    clock: Arc<dyn Clock>,
    config: RwLock<RegistryConfig>,
}

/// Capacity of the watch channel; a watcher that falls further behind gets a new snapshot.
/// Events are shared (`Arc`), so a slot costs a pointer, not a copy of the instance.
const EVENT_CAPACITY: usize = 8_192;

impl Registry {
    /// An empty registry on the system clock.
    pub fn new(config: RegistryConfig) -> Self {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// An empty registry on the given clock.
    pub fn with_clock(config: RegistryConfig, clock: Arc<dyn Clock>) -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Self {
            state: RwLock::new(State {
                apps: BTreeMap::new(),
                index: 0,
                recent: VecDeque::new(),
                renew_buckets: [(0, 0); 60],
                first_registration: None,
            }),
            events,
            clock,
            config: RwLock::new(config),
        }
    }

    /// The clock's current time.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The current configuration.
    pub fn config(&self) -> RegistryConfig {
        self.config.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// Turns self-preservation on or off at run time.
    pub fn set_self_preservation(&self, enabled: bool) {
        if let Ok(mut c) = self.config.write() {
            c.self_preservation = enabled;
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers (or re-registers) an instance. When the registry already holds a newer
    /// version (larger `lastDirtyTimestamp`), the newer one is kept. Returns the action.
    pub fn register(&self, mut instance: Instance) -> ActionType {
        let now = self.clock.now_ms();
        instance.app = instance.app.to_ascii_uppercase();
        let mut st = self.write();
        st.first_registration.get_or_insert(now);
        let app = instance.app.clone();
        let id = instance.instance_id.clone();
        let existing = st.apps.get(&app).and_then(|a| a.get(&id));
        let action = if existing.is_some() {
            ActionType::Modified
        } else {
            ActionType::Added
        };
        if let Some(old) = existing {
            let old = &old.instance;
            if old.last_dirty_timestamp > instance.last_dirty_timestamp {
                // Ours is newer (Eureka's rule): keep it, but count this as a renewal.
                let mut kept = (**old).clone();
                kept.lease_info.last_renewal_timestamp = now;
                instance = kept;
            } else {
                instance.lease_info.registration_timestamp = old.lease_info.registration_timestamp;
                if instance.overridden_status == Status::Unknown {
                    instance.overridden_status = old.overridden_status;
                }
                if instance.lease_info.service_up_timestamp == 0 {
                    instance.lease_info.service_up_timestamp = old.lease_info.service_up_timestamp;
                }
            }
        } else {
            instance.lease_info.registration_timestamp = now;
        }
        if instance.lease_info.duration_in_secs == 0 {
            instance.lease_info.duration_in_secs = 90;
        }
        instance.lease_info.last_renewal_timestamp = now;
        instance.lease_info.eviction_timestamp = 0;
        if instance.status == Status::Up && instance.lease_info.service_up_timestamp == 0 {
            instance.lease_info.service_up_timestamp = now;
        }
        if instance.last_dirty_timestamp == 0 {
            instance.last_dirty_timestamp = now;
        }
        self.change(&mut st, instance, action, now);
        action
    }

    /// Records a change: stamps the instance, stores it (or removes it for DELETED),
    /// appends it to the delta queue and tells watchers. Called with the write lock held.
    fn change(&self, st: &mut State, mut instance: Instance, action: ActionType, now: u64) {
        instance.last_updated_timestamp = now;
        instance.action_type = Some(action);
        st.index += 1;
        let last_renewal_ms = instance.lease_info.last_renewal_timestamp;
        let instance = Arc::new(instance);
        let event = Event {
            index: st.index,
            action,
            app: instance.app.clone(),
            instance_id: instance.instance_id.clone(),
            instance: instance.clone(),
        };
        match action {
            ActionType::Deleted => {
                if let Some(a) = st.apps.get_mut(&instance.app) {
                    a.remove(&instance.instance_id);
                    if a.is_empty() {
                        st.apps.remove(&instance.app);
                    }
                }
            }
            _ => {
                st.apps.entry(instance.app.clone()).or_default().insert(
                    instance.instance_id.clone(),
                    Lease {
                        instance,
                        last_renewal_ms,
                    },
                );
            }
        }
        let retention = self.config().delta_retention_ms;
        while st
            .recent
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) > retention)
        {
            st.recent.pop_front();
        }
        let event = Arc::new(event);
        st.recent.push_back((now, event.clone()));
        let _ = self.events.send(event);
    }

    /// Renews a lease (Eureka's heartbeat).
    pub fn renew(&self, app: &str, id: &str, r: &Renewal, replication: bool) -> RenewOutcome {
        let now = self.clock.now_ms();
        let app = app.to_ascii_uppercase();
        let mut st = self.write();
        let sec = now / 1000;
        let slot = &mut st.renew_buckets[(sec % 60) as usize];
        if slot.0 != sec {
            *slot = (sec, 0);
        }
        slot.1 += 1;
        let Some(lease) = st.apps.get_mut(&app).and_then(|a| a.get_mut(id)) else {
            return RenewOutcome::NotFound;
        };
        if let Some(dirty) = r.last_dirty {
            let ours = lease.instance.last_dirty_timestamp;
            if dirty > ours {
                // The caller knows something newer: make it register again.
                return RenewOutcome::NotFound;
            }
            if dirty < ours && replication {
                return RenewOutcome::Conflict(Box::new(visible(lease)));
            }
        }
        lease.last_renewal_ms = now;
        let mut changed = None;
        if let Some(o) = r
            .overridden
            .filter(|o| *o != Status::Unknown && replication)
            && lease.instance.overridden_status != o
        {
            let mut i = visible_raw(lease);
            i.overridden_status = o;
            i.status = o;
            changed = Some(i);
        } else if let Some(s) = r.status
            && lease.instance.overridden_status == Status::Unknown
            && lease.instance.status != s
        {
            let mut i = visible_raw(lease);
            i.status = s;
            if s == Status::Up && i.lease_info.service_up_timestamp == 0 {
                i.lease_info.service_up_timestamp = now;
            }
            changed = Some(i);
        }
        if let Some(i) = changed {
            self.change(&mut st, i, ActionType::Modified, now);
        }
        RenewOutcome::Renewed
    }

    /// Removes an instance. Returns false when it was not registered.
    pub fn cancel(&self, app: &str, id: &str) -> bool {
        let now = self.clock.now_ms();
        let app = app.to_ascii_uppercase();
        let mut st = self.write();
        let Some(lease) = st.apps.get(&app).and_then(|a| a.get(id)) else {
            return false;
        };
        let mut i = visible_raw(lease);
        i.lease_info.eviction_timestamp = now;
        self.change(&mut st, i, ActionType::Deleted, now);
        true
    }

    /// Sets an operator status override (e.g. OUT_OF_SERVICE). False when unknown.
    pub fn override_status(
        &self,
        app: &str,
        id: &str,
        status: Status,
        last_dirty: Option<u64>,
    ) -> bool {
        self.modify(app, id, |i| {
            i.overridden_status = status;
            i.status = status;
            if let Some(d) = last_dirty {
                i.last_dirty_timestamp = i.last_dirty_timestamp.max(d);
            }
        })
    }

    /// Removes the status override; the status becomes `new_status` (default UNKNOWN)
    /// until the instance's next heartbeat reports its own.
    pub fn delete_status_override(&self, app: &str, id: &str, new_status: Option<Status>) -> bool {
        self.modify(app, id, |i| {
            i.overridden_status = Status::Unknown;
            i.status = new_status.unwrap_or(Status::Unknown);
        })
    }

    /// Adds or replaces metadata entries.
    pub fn update_metadata(&self, app: &str, id: &str, entries: &BTreeMap<String, String>) -> bool {
        self.modify(app, id, |i| {
            for (k, v) in entries {
                i.metadata.insert(k.clone(), v.clone());
            }
        })
    }

    fn modify(&self, app: &str, id: &str, f: impl FnOnce(&mut Instance)) -> bool {
        let now = self.clock.now_ms();
        let app = app.to_ascii_uppercase();
        let mut st = self.write();
        let Some(lease) = st.apps.get(&app).and_then(|a| a.get(id)) else {
            return false;
        };
        let mut i = visible_raw(lease);
        f(&mut i);
        self.change(&mut st, i, ActionType::Modified, now);
        true
    }

    /// Evicts expired leases (unless self-preservation forbids it). Returns how many.
    pub fn evict(&self) -> usize {
        let now = self.clock.now_ms();
        let config = self.config();
        let mut st = self.write();
        let stats = stats_of(&st, now, &config);
        if stats.self_preservation_active {
            return 0;
        }
        let mut expired: Vec<Instance> = st
            .apps
            .values()
            .flat_map(|a| a.values())
            .filter(|l| now > l.last_renewal_ms + l.instance.lease_info.duration_in_secs * 1000)
            .map(visible_raw)
            .collect();
        if config.self_preservation {
            // Never evict more than would push the registry below the threshold at once.
            let size = stats.instances as f64;
            let limit =
                (size - (size * config.renewal_percent_threshold).floor()).max(0.0) as usize;
            expired.truncate(limit);
        }
        let n = expired.len();
        for mut i in expired {
            tracing::info!(app = %i.app, instance = %i.instance_id, "lease expired; evicting");
            i.lease_info.eviction_timestamp = now;
            self.change(&mut st, i, ActionType::Deleted, now);
        }
        n
    }

    /// Current statistics.
    pub fn stats(&self) -> Stats {
        let now = self.clock.now_ms();
        let config = self.config();
        stats_of(&self.read(), now, &config)
    }

    /// The full registry.
    pub fn applications(&self) -> Applications {
        let st = self.read();
        Applications {
            versions_delta: st.index.to_string(),
            apps_hashcode: hashcode(&st),
            application: st
                .apps
                .iter()
                .map(|(name, a)| Application {
                    name: name.clone(),
                    instance: a.values().map(visible).collect(),
                })
                .collect(),
        }
    }

    /// Changes of the last `delta_retention_ms`, latest state per instance, with the hash
    /// code of the full registry for reconciliation.
    pub fn delta(&self) -> Applications {
        let now = self.clock.now_ms();
        let retention = self.config().delta_retention_ms;
        let st = self.read();
        let mut latest: BTreeMap<(String, String), Instance> = BTreeMap::new();
        for (t, e) in st.recent.iter() {
            if now.saturating_sub(*t) <= retention {
                let mut i = (*e.instance).clone();
                i.status = e.instance.effective_status();
                latest.insert((e.app.clone(), e.instance_id.clone()), i);
            }
        }
        let mut apps: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        for ((app, _), i) in latest {
            apps.entry(app).or_default().push(i);
        }
        Applications {
            versions_delta: st.index.to_string(),
            apps_hashcode: hashcode(&st),
            application: apps
                .into_iter()
                .map(|(name, instance)| Application { name, instance })
                .collect(),
        }
    }

    /// One application, if it has instances.
    pub fn application(&self, app: &str) -> Option<Application> {
        let st = self.read();
        let name = app.to_ascii_uppercase();
        st.apps.get(&name).map(|a| Application {
            name,
            instance: a.values().map(visible).collect(),
        })
    }

    /// One instance of an application.
    pub fn instance(&self, app: &str, id: &str) -> Option<Instance> {
        let st = self.read();
        st.apps
            .get(&app.to_ascii_uppercase())
            .and_then(|a| a.get(id))
            .map(visible)
    }

    /// An instance by id alone, whatever its application.
    pub fn instance_by_id(&self, id: &str) -> Option<Instance> {
        let st = self.read();
        st.apps.values().find_map(|a| a.get(id)).map(visible)
    }

    /// Instances whose (secure) VIP address list contains `vip`.
    pub fn vip(&self, vip: &str, secure: bool) -> Applications {
        let st = self.read();
        let matches = |i: &Instance| {
            let v = if secure {
                &i.secure_vip_address
            } else {
                &i.vip_address
            };
            v.as_deref()
                .is_some_and(|v| v.split(',').any(|x| x.trim().eq_ignore_ascii_case(vip)))
        };
        Applications {
            versions_delta: st.index.to_string(),
            apps_hashcode: hashcode(&st),
            application: st
                .apps
                .iter()
                .filter_map(|(name, a)| {
                    let instance: Vec<Instance> = a
                        .values()
                        .filter(|l| matches(&l.instance))
                        .map(visible)
                        .collect();
                    (!instance.is_empty()).then(|| Application {
                        name: name.clone(),
                        instance,
                    })
                })
                .collect(),
        }
    }

    /// A consistent snapshot and a subscription to every change after it.
    pub fn watch(&self) -> (Applications, broadcast::Receiver<Arc<Event>>) {
        // Subscribing under the read lock: no change can slip between snapshot and stream,
        // because changes are sent while the write lock is held.
        let st = self.read();
        let rx = self.events.subscribe();
        let apps = Applications {
            versions_delta: st.index.to_string(),
            apps_hashcode: hashcode(&st),
            application: st
                .apps
                .iter()
                .map(|(name, a)| Application {
                    name: name.clone(),
                    instance: a.values().map(visible).collect(),
                })
                .collect(),
        };
        (apps, rx)
    }

    /// Number of live watch subscriptions.
    pub fn watchers(&self) -> usize {
        self.events.receiver_count()
    }
}

/// The stored record with its current renewal time.
fn visible_raw(l: &Lease) -> Instance {
    let mut v = (*l.instance).clone();
    v.lease_info.last_renewal_timestamp = l.last_renewal_ms;
    v
}

/// The instance as clients see it: the override decides the status.
fn visible(l: &Lease) -> Instance {
    let mut v = visible_raw(l);
    v.status = l.instance.effective_status();
    v
}

/// Eureka's reconciliation hash: `STATUS_count_` for each status, sorted by status name.
fn hashcode(st: &State) -> String {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for a in st.apps.values() {
        for l in a.values() {
            *counts
                .entry(l.instance.effective_status().as_str())
                .or_default() += 1;
        }
    }
    counts.iter().map(|(s, n)| format!("{s}_{n}_")).collect()
}

fn stats_of(st: &State, now: u64, config: &RegistryConfig) -> Stats {
    let sec = now / 1000;
    let renews: u64 = st
        .renew_buckets
        .iter()
        .filter(|(s, _)| *s + 60 > sec && *s <= sec)
        .map(|(_, n)| *n)
        .sum();
    let mut expected = 0.0;
    let mut instances = 0;
    for a in st.apps.values() {
        for l in a.values() {
            instances += 1;
            expected += 60.0 / l.instance.lease_info.renewal_interval_in_secs.max(1) as f64;
        }
    }
    let warmed_up = st
        .first_registration
        .is_some_and(|t| now.saturating_sub(t) >= 60_000);
    let active = config.self_preservation
        && warmed_up
        && expected > 0.0
        && (renews as f64) < config.renewal_percent_threshold * expected;
    Stats {
        instances,
        applications: st.apps.len(),
        index: st.index,
        renews_last_minute: renews,
        expected_renews_per_minute: expected.ceil() as u64,
        self_preservation_enabled: config.self_preservation,
        self_preservation_active: active,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(config: RegistryConfig) -> (Registry, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        (Registry::with_clock(config, clock.clone()), clock)
    }

    fn inst(app: &str, id: &str) -> Instance {
        let mut i = Instance::new(app, id, "10.0.0.1", 8080);
        i.lease_info.renewal_interval_in_secs = 1;
        i.lease_info.duration_in_secs = 3;
        i
    }

    #[test]
    fn register_renew_cancel_and_hashcode() {
        let (r, _) = reg(RegistryConfig::default());
        assert_eq!(r.register(inst("orders", "o1")), ActionType::Added);
        assert_eq!(r.register(inst("orders", "o1")), ActionType::Modified);
        r.register(inst("orders", "o2"));
        let mut down = inst("kitchen", "k1");
        down.status = Status::Down;
        r.register(down);
        assert_eq!(r.applications().apps_hashcode, "DOWN_1_UP_2_");
        assert_eq!(r.application("ORDERS").unwrap().instance.len(), 2);
        assert_eq!(
            r.renew("orders", "o1", &Renewal::default(), false),
            RenewOutcome::Renewed
        );
        assert_eq!(
            r.renew("orders", "nope", &Renewal::default(), false),
            RenewOutcome::NotFound
        );
        assert!(r.cancel("orders", "o1"));
        assert!(!r.cancel("orders", "o1"));
        assert_eq!(r.applications().apps_hashcode, "DOWN_1_UP_1_");
    }

    #[test]
    fn leases_expire_and_are_evicted() {
        let (r, clock) = reg(RegistryConfig::default());
        r.register(inst("a", "1"));
        r.register(inst("a", "2"));
        clock.advance(2_000);
        r.renew("a", "1", &Renewal::default(), false);
        clock.advance(1_500);
        // "2" last renewed 3.5 s ago with a 3 s lease; "1" 1.5 s ago.
        assert_eq!(r.evict(), 1);
        assert!(r.instance("a", "2").is_none());
        assert!(r.instance("a", "1").is_some());
        let d = r.delta();
        let deleted: Vec<_> = d.application[0]
            .instance
            .iter()
            .filter(|i| i.action_type == Some(ActionType::Deleted))
            .collect();
        assert_eq!(deleted.len(), 1);
        assert_eq!(deleted[0].instance_id, "2");
    }

    #[test]
    fn self_preservation_suspends_eviction_when_renewals_collapse() {
        let (r, clock) = reg(RegistryConfig {
            self_preservation: true,
            ..Default::default()
        });
        for n in 0..10 {
            r.register(inst("a", &n.to_string()));
        }
        // Everyone renews every second for a minute and a bit.
        for _ in 0..61 {
            clock.advance(1_000);
            for n in 0..10 {
                r.renew("a", &n.to_string(), &Renewal::default(), false);
            }
        }
        assert!(!r.stats().self_preservation_active);
        // A network partition: nobody renews.
        clock.advance(10_000);
        let s = r.stats();
        assert!(s.self_preservation_active, "{s:?}");
        assert_eq!(r.evict(), 0, "nothing evicted while self-preserving");
        assert_eq!(r.stats().instances, 10);

        // Without self-preservation the same situation evicts everyone.
        r.set_self_preservation(false);
        assert_eq!(r.evict(), 10);
    }

    #[test]
    fn self_preservation_caps_a_single_eviction_pass() {
        let (r, clock) = reg(RegistryConfig {
            self_preservation: true,
            ..Default::default()
        });
        for n in 0..20 {
            r.register(inst("a", &n.to_string()));
        }
        for _ in 0..61 {
            clock.advance(1_000);
            for n in 0..20 {
                r.renew("a", &n.to_string(), &Renewal::default(), false);
            }
        }
        // Two instances die; the rest keep renewing.
        for _ in 0..5 {
            clock.advance(1_000);
            for n in 2..20 {
                r.renew("a", &n.to_string(), &Renewal::default(), false);
            }
        }
        assert!(!r.stats().self_preservation_active);
        assert_eq!(r.evict(), 2);
    }

    #[test]
    fn newer_dirty_timestamp_wins_on_register_and_renew() {
        let (r, _) = reg(RegistryConfig::default());
        let mut new = inst("a", "1");
        new.last_dirty_timestamp = 200;
        new.metadata.insert("v".into(), "new".into());
        r.register(new);
        let mut old = inst("a", "1");
        old.last_dirty_timestamp = 100;
        old.metadata.insert("v".into(), "old".into());
        r.register(old);
        assert_eq!(r.instance("a", "1").unwrap().metadata["v"], "new");

        let newer = Renewal {
            last_dirty: Some(300),
            ..Default::default()
        };
        assert_eq!(r.renew("a", "1", &newer, false), RenewOutcome::NotFound);
        let older = Renewal {
            last_dirty: Some(100),
            ..Default::default()
        };
        assert!(matches!(
            r.renew("a", "1", &older, true),
            RenewOutcome::Conflict(_)
        ));
        assert_eq!(r.renew("a", "1", &older, false), RenewOutcome::Renewed);
    }

    #[test]
    fn status_override_beats_heartbeats_until_removed() {
        let (r, _) = reg(RegistryConfig::default());
        r.register(inst("a", "1"));
        assert!(r.override_status("a", "1", Status::OutOfService, None));
        let up = Renewal {
            status: Some(Status::Up),
            ..Default::default()
        };
        r.renew("a", "1", &up, false);
        assert_eq!(r.instance("a", "1").unwrap().status, Status::OutOfService);
        assert!(r.delete_status_override("a", "1", None));
        assert_eq!(r.instance("a", "1").unwrap().status, Status::Unknown);
        r.renew("a", "1", &up, false);
        assert_eq!(r.instance("a", "1").unwrap().status, Status::Up);
    }

    #[test]
    fn watch_sees_every_change_after_its_snapshot() {
        let (r, _) = reg(RegistryConfig::default());
        r.register(inst("a", "1"));
        let (snap, mut rx) = r.watch();
        assert_eq!(snap.application[0].instance.len(), 1);
        r.register(inst("a", "2"));
        r.cancel("a", "1");
        let e1 = rx.try_recv().unwrap();
        let e2 = rx.try_recv().unwrap();
        assert_eq!(
            (e1.action, e1.instance_id.as_str()),
            (ActionType::Added, "2")
        );
        assert_eq!(
            (e2.action, e2.instance_id.as_str()),
            (ActionType::Deleted, "1")
        );
        assert!(e2.index > e1.index);
        assert_eq!(snap.versions_delta.parse::<u64>().unwrap() + 1, e1.index);
    }

    #[test]
    fn delta_forgets_old_changes() {
        let (r, clock) = reg(RegistryConfig::default());
        r.register(inst("a", "1"));
        clock.advance(181_000);
        r.renew("a", "1", &Renewal::default(), false);
        assert!(r.delta().application.is_empty());
        r.register(inst("b", "1"));
        assert_eq!(r.delta().application.len(), 1);
    }

    #[test]
    fn vip_lookup_matches_any_listed_address() {
        let (r, _) = reg(RegistryConfig::default());
        let mut i = inst("a", "1");
        i.vip_address = Some("orders, orders-v2".into());
        r.register(i);
        assert_eq!(r.vip("orders-v2", false).application.len(), 1);
        assert!(r.vip("kitchen", false).application.is_empty());
    }
}
