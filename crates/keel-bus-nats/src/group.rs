//! Membership and partition leases of a consumer group, in the bus's key-value bucket.
//!
//! Each subscription is a *member* with a fresh id. It writes `<dest>.<group>.m.<member>`
//! five times per `member_timeout`, and watches every key under `<dest>.<group>.` — the
//! members' heartbeats and the partitions' leases. Liveness is judged on the server's clock:
//! a member is live when its last heartbeat's server timestamp is within `member_timeout` of
//! the newest timestamp seen (this member's own heartbeats keep that moving), so members'
//! clocks never need to agree.
//!
//! The live members sorted by id split the partitions like the embedded bus's (`p % n ==
//! index`). A partition's lease `<dest>.<group>.p.<partition>` holds its owner's id, or nothing
//! when released. A member takes a lease with a compare-and-set on the revision it saw: when
//! the key is absent, released, or names a member that is no longer live. It gives a lease
//! back (a compare-and-set to empty) after its worker for the partition stopped; a member
//! that cannot heartbeat for half the timeout stops its workers first, so it is gone before
//! the others presume it dead.
//!
//! Leases make one member the partition's only puller in the normal case; they are not what
//! keeps order. The worker's rule — handle a message only once every earlier one of the
//! partition is acknowledged — does, so a stale view or a slow member costs time, not order.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::kv::{self, Operation};
use futures::StreamExt;
use keel_messaging::{BusError, new_id};
use tokio::{sync::Notify, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::NatsBus;

/// What the watch has seen of one group.
#[derive(Debug, Default)]
struct View {
    /// Member id → server time (ns) of its last heartbeat.
    members: HashMap<String, i128>,
    /// Partition → (owner, empty when released; revision).
    leases: HashMap<u32, (String, u64)>,
    /// The newest server timestamp seen.
    now: i128,
    /// The highest revision seen. Once it reaches this member's first heartbeat, the watch has
    /// replayed what the bucket held when it began (it delivers in revision order): from then
    /// on an owner the view does not know has no member key (deleted, or expired long ago);
    /// before, its heartbeat may simply not have come yet.
    top: u64,
}

impl View {
    fn apply(&mut self, entry: &kv::Entry, prefix: &str) {
        let at = entry.created.unix_timestamp_nanos();
        self.now = self.now.max(at);
        self.top = self.top.max(entry.revision);
        let Some(rest) = entry.key.strip_prefix(prefix) else {
            return;
        };
        let put = matches!(entry.operation, Operation::Put);
        if let Some(member) = rest.strip_prefix("m.") {
            if put {
                self.members.insert(member.to_owned(), at);
            } else {
                self.members.remove(member);
            }
        } else if let Some(p) = rest.strip_prefix("p.").and_then(|p| p.parse().ok()) {
            if put {
                let owner = String::from_utf8_lossy(&entry.value).into_owned();
                self.leases.insert(p, (owner, entry.revision));
            } else {
                self.leases.remove(&p);
            }
        }
    }

    /// The live members, sorted, with `me` counted live.
    fn live(&self, me: &str, timeout: Duration) -> Vec<String> {
        let since = self.now - timeout.as_nanos() as i128;
        let mut live: BTreeSet<String> = self
            .members
            .iter()
            .filter(|(_, at)| **at >= since)
            .map(|(m, _)| m.clone())
            .collect();
        live.insert(me.to_owned());
        live.into_iter().collect()
    }
}

/// The partitions member `me` should own among `live` (sorted ids).
pub(crate) fn assignment(live: &[String], me: &str, partitions: u32) -> Vec<u32> {
    let Some(index) = live.iter().position(|m| m == me) else {
        return Vec::new();
    };
    let n = live.len() as u32;
    (0..partitions).filter(|p| p % n == index as u32).collect()
}

/// How often a held lease is rewritten (the bucket drops keys untouched for 24 h).
const LEASE_REWRITE: Duration = Duration::from_secs(3600);

/// Runs a partition until its token is cancelled.
pub(crate) type Spawn = Arc<dyn Fn(u32, CancellationToken) -> JoinHandle<()> + Send + Sync>;

struct Worker {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

pub(crate) struct Member {
    bus: NatsBus,
    store: kv::Store,
    me: String,
    /// `<dest token>.<group token>.`
    prefix: String,
    view: Arc<Mutex<View>>,
    spawn: Spawn,
    /// The revision of the first heartbeat.
    joined: u64,
    /// Signalled whenever the view changes.
    changed: Arc<Notify>,
}

impl Member {
    /// Joins the group: the first heartbeat is written before this returns.
    pub(crate) async fn join(
        bus: NatsBus,
        destination: &str,
        group: &str,
        spawn: Spawn,
    ) -> Result<Self, BusError> {
        let store = bus.groups().await?;
        let mut member = Self {
            prefix: bus.group_keys(destination, group),
            me: new_id(),
            store,
            bus,
            view: Arc::default(),
            spawn,
            joined: 0,
            changed: Arc::default(),
        };
        member.joined = member.heartbeat().await?;
        Ok(member)
    }

    fn member_key(&self) -> String {
        format!("{}m.{}", self.prefix, self.me)
    }

    fn lease_key(&self, partition: u32) -> String {
        format!("{}p.{partition}", self.prefix)
    }

    async fn heartbeat(&self) -> Result<u64, BusError> {
        self.store
            .put(self.member_key(), Vec::new().into())
            .await
            .map_err(|e| self.bus.unavailable(format!("heartbeat: {e}")))
    }

    /// Keeps the view current until `stop`, re-opening the watch after errors.
    async fn watch(
        store: kv::Store,
        prefix: String,
        view: Arc<Mutex<View>>,
        changed: Arc<Notify>,
        stop: CancellationToken,
    ) {
        let filter = format!("{prefix}>");
        loop {
            match store.watch_with_history(&filter).await {
                Ok(mut entries) => loop {
                    let next = tokio::select! {
                        _ = stop.cancelled() => return,
                        next = entries.next() => next,
                    };
                    match next {
                        Some(Ok(entry)) => {
                            view.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .apply(&entry, &prefix);
                            changed.notify_one();
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "group watch failed; re-opening");
                            break;
                        }
                        None => break,
                    }
                },
                Err(e) => tracing::debug!(error = %e, "cannot watch the group; retrying"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Takes the lease of `partition` when the view says it is free or its owner is dead (the
    /// view is current, see [`View::top`]); returns the lease's revision.
    async fn acquire(&self, partition: u32, live: &[String]) -> Option<u64> {
        let key = self.lease_key(partition);
        let seen = self
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .leases
            .get(&partition)
            .cloned();
        let me = || self.me.clone().into();
        let taken = match seen {
            None => self.store.create(&key, me()).await.ok(),
            Some((owner, revision)) if owner.is_empty() || !live.contains(&owner) => {
                // (`run` asks only once the view is current.)
                if !owner.is_empty() {
                    tracing::info!(destination_group = %self.prefix, partition, dead = %owner, "taking over a partition from a member presumed dead");
                }
                self.store.update(&key, me(), revision).await.ok()
            }
            Some((owner, revision)) if owner == self.me => Some(revision),
            Some(_) => None,
        };
        if let Some(revision) = taken {
            // Our own write, without waiting for the watch to bring it.
            self.view
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .leases
                .insert(partition, (self.me.clone(), revision));
        }
        taken
    }

    async fn release(&self, partition: u32, revision: u64) {
        let key = self.lease_key(partition);
        if let Err(e) = self.store.update(&key, Vec::new().into(), revision).await {
            tracing::debug!(partition, error = %e, "lease not released (another member holds it now)");
        }
    }

    /// Heartbeats, rebalances and runs the workers of the partitions this member holds, until
    /// `stop`; then stops them (each lets its message in hand finish), gives the leases back
    /// and leaves the group.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let watch_stop = stop.child_token();
        let watch = tokio::spawn(Self::watch(
            self.store.clone(),
            self.prefix.clone(),
            self.view.clone(),
            self.changed.clone(),
            watch_stop.clone(),
        ));
        let settings = self.bus.settings().clone();
        let timeout = settings.member_timeout;
        let mut tick = tokio::time::interval(timeout / 5);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Partition → (lease revision, worker).
        let mut held: HashMap<u32, (u64, Worker)> = HashMap::new();
        // Workers told to stop; their leases go back once they have.
        let mut stopping: Vec<(u32, Option<u64>, Worker)> = Vec::new();
        let mut beaten = Instant::now();
        let mut renewed = Instant::now();
        tick.tick().await; // the first tick is now, and join() has just heartbeaten
        loop {
            // Heartbeat on the tick; rebalance then and whenever the view changes (a member
            // joined or left, a lease was given back), so partitions move without waiting.
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.changed.notified() => {}
                _ = tick.tick() => {
                    let sent = Instant::now();
                    match self.heartbeat().await {
                        Ok(_) => beaten = sent,
                        Err(e) => tracing::warn!(error = %e, "group heartbeat failed"),
                    }
                }
            }
            // Leases are rewritten now and then, so the bucket's maximum age (24 h) never
            // removes one that is still held.
            if renewed.elapsed() > LEASE_REWRITE {
                renewed = Instant::now();
                for (p, (revision, _)) in held.iter_mut() {
                    let key = self.lease_key(*p);
                    if let Ok(r) = self
                        .store
                        .update(&key, self.me.clone().into(), *revision)
                        .await
                    {
                        *revision = r;
                    }
                    // On failure another member took it: the view shows it, see `moving`.
                }
            }
            // Give back what finished stopping.
            let mut i = 0;
            while i < stopping.len() {
                if stopping[i].2.task.is_finished() {
                    let (p, revision, _) = stopping.swap_remove(i);
                    if let Some(revision) = revision {
                        self.release(p, revision).await;
                    }
                } else {
                    i += 1;
                }
            }
            if beaten.elapsed() > timeout / 2 {
                // The others may soon presume us dead: stop consuming now (keeping the leases
                // would not keep them).
                for (p, (_, w)) in held.drain() {
                    w.stop.cancel();
                    stopping.push((p, None, w));
                }
                continue;
            }
            let (live, leases) = {
                let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
                if view.top < self.joined {
                    continue;
                }
                (view.live(&self.me, timeout), view.leases.clone())
            };
            let assigned = assignment(&live, &self.me, settings.partitions);
            // Partitions no longer ours, or whose lease another member took (a later revision
            // than ours: it presumed us dead).
            let moving: Vec<u32> = held
                .iter()
                .filter(|(p, (revision, _))| {
                    !assigned.contains(p)
                        || leases
                            .get(p)
                            .is_some_and(|(owner, r)| r > revision && *owner != self.me)
                })
                .map(|(p, _)| *p)
                .collect();
            for p in moving {
                if let Some((revision, w)) = held.remove(&p) {
                    w.stop.cancel();
                    // Given back by compare-and-set: a lease taken since is left alone.
                    stopping.push((p, Some(revision), w));
                }
            }
            for &p in &assigned {
                let restart = held.get(&p).is_some_and(|(_, w)| w.task.is_finished());
                if held.contains_key(&p) && !restart {
                    continue;
                }
                if stopping.iter().any(|(q, _, _)| *q == p) {
                    continue;
                }
                let revision = match held.remove(&p) {
                    Some((revision, _)) => Some(revision),
                    None => self.acquire(p, &live).await,
                };
                if let Some(revision) = revision {
                    let ws = stop.child_token();
                    let task = (self.spawn)(p, ws.clone());
                    held.insert(p, (revision, Worker { stop: ws, task }));
                }
            }
        }
        // Leaving: every worker finishes its message in hand, then the leases go back.
        for (_, (_, w)) in held.iter() {
            w.stop.cancel();
        }
        for (p, (revision, w)) in held {
            let _ = w.task.await;
            self.release(p, revision).await;
        }
        for (p, revision, w) in stopping {
            let _ = w.task.await;
            if let Some(revision) = revision {
                self.release(p, revision).await;
            }
        }
        let _ = self.store.delete(self.member_key()).await;
        watch_stop.cancel();
        let _ = watch.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_members_split_the_partitions() {
        let live: Vec<String> = ["a", "b", "c"].map(String::from).into();
        assert_eq!(assignment(&live, "a", 8), vec![0, 3, 6]);
        assert_eq!(assignment(&live, "c", 8), vec![2, 5]);
        assert!(assignment(&live, "z", 8).is_empty());
        let mut all: Vec<u32> = live.iter().flat_map(|m| assignment(&live, m, 8)).collect();
        all.sort();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn liveness_is_judged_on_the_servers_clock() {
        let mut view = View::default();
        let s = 1_000_000_000i128;
        view.members.insert("old".into(), 10 * s);
        view.members.insert("fresh".into(), 18 * s);
        view.now = 20 * s;
        let live = view.live("me", Duration::from_secs(5));
        assert_eq!(live, vec!["fresh".to_owned(), "me".to_owned()]);
    }
}
