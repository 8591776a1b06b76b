//! The transactional outbox: `outbox.send(&mut tx, &message)` stores the message in the
//! same transaction as the state change it announces, so both commit or neither does. A
//! relay publishes stored messages in order (so per-key order holds), at least once, the
//! moment a transaction commits — woken in-process by an after-commit hook, and across
//! processes on PostgreSQL by `LISTEN/NOTIFY` — with a 1 s poll only as a safety net.
//!
//! # Leadership: one relay publishes an outbox at a time
//!
//! Several relays may run on one outbox (instances of a service, a standby). Per-key order
//! forbids splitting the rows between them naively: if relay A holds rows 1–500 and relay B
//! took the next rows (`FOR UPDATE SKIP LOCKED`), B could publish a later message of a key
//! before A published an earlier one. So exactly one relay — the leader — publishes; the
//! others stand by and retry every second.
//!
//! **PostgreSQL.** The leader holds a session advisory lock on a connection of its own, and
//! *every batch runs on that connection*, in one transaction: `SELECT … ORDER BY seq LIMIT
//! 500 FOR UPDATE NOWAIT`, publish, `DELETE` the published rows, `COMMIT`. A statement that
//! succeeds on the connection proves the session — hence the lock — is alive, so leadership
//! is re-verified with each batch; any error on it makes the relay step down (close the
//! connection, stand by). A standby can only take over once the old session is gone, and by
//! then that session's row locks are gone too. The row locks also mean two relays can never
//! publish the same committed row concurrently even without the advisory lock (e.g. a
//! caller of [`Outbox::publish_batch`]): `NOWAIT` makes the second give up at once rather
//! than skip rows (which would reorder a key) or wait.
//!
//! What remains is inherent to publishing outside the database: a leader whose session dies
//! *while its batch is on the way to the bus* still completes that one publish; its
//! `DELETE` then fails, so the next leader publishes those rows again. Each copy is
//! published in sequence order, so the first copy of every message still arrives in per-key
//! order and the consumers' inboxes drop the second.
//!
//! The advisory lock's key is derived from the outbox table's OID: advisory locks are per
//! database, and services that share one database in separate schemas each have their own
//! `keel_outbox` table, hence their own lock (and their own `NOTIFY` channel).
//!
//! **SQLite.** A lease row (`keel_outbox_relay`) elects the leader across processes sharing
//! the file: the lease lasts 5 s, and the leader renews it once a second (checked before
//! each batch and at each idle poll), so every batch starts with at least 4 s of lease
//! ahead; a standby takes over once it has lapsed (within about 6 s of the leader dying),
//! and a stopping leader hands it back at once. A leader that stalls past its lease
//! mid-publish (a hung bus) can overlap with its successor for that one batch; as above,
//! duplicates arrive after the first copies and the inboxes drop them. Relays of one
//! process also queue on an in-process lock.
//!
//! Rows are deleted only after the bus accepted them; a crash in between republishes them,
//! and the consumers' inboxes drop the duplicates.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use keel_store::{Backend, Migration, Store, StoreError, Tx, now_ms};
use sqlx::{Connection, Row};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    bus::Bus,
    message::{Message, headers, new_id},
};

/// The outbox tables.
pub const MIGRATIONS: &[Migration] = &[
    Migration::new(
        1,
        "outbox",
        "CREATE TABLE keel_outbox (
        seq {auto_id},
        message_id TEXT NOT NULL,
        destination TEXT NOT NULL,
        msg_key TEXT,
        headers TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at {bigint} NOT NULL
    )",
    ),
    Migration::new(
        2,
        "relay lease",
        "CREATE TABLE keel_outbox_relay (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        lease_until {bigint} NOT NULL
    )",
    ),
];

/// High 32 bits of the relay's advisory-lock key (`keel`); the low 32 bits are the outbox
/// table's OID. In `pg_locks`: `classid = 1801807212`, `objid = 'keel_outbox'::regclass`.
pub const RELAY_LOCK_CLASS: i64 = 0x6b65_656c;
const BATCH: i64 = 500;
/// Idle safety-net poll, and how often a standby tries to become the leader.
const POLL: Duration = Duration::from_secs(1);
/// The backlog gauge is refreshed at most this often while messages flow.
const BACKLOG_EVERY: Duration = Duration::from_millis(500);
/// SQLite: how long a relay's lease lasts without renewal.
const LEASE: Duration = Duration::from_secs(5);

/// A store-backed outbox. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    store: Store,
    wake: Arc<Notify>,
    active: Arc<Mutex<()>>,
    /// PostgreSQL: the OID of the `keel_outbox` table this store resolves to.
    table_oid: Option<i64>,
    /// PostgreSQL: the `NOTIFY` channel of this outbox.
    channel: Arc<str>,
}

impl Outbox {
    /// An outbox in `store`, creating its tables if needed.
    pub async fn new(store: Store) -> Result<Self, StoreError> {
        store.migrate("keel_outbox", MIGRATIONS).await?;
        let table_oid = match store.backend() {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let (oid,): (i64,) =
                    sqlx::query_as("SELECT CAST(CAST('keel_outbox'::regclass AS oid) AS bigint)")
                        .fetch_one(store.pool())
                        .await?;
                Some(oid)
            }
        };
        Ok(Self {
            active: relay_lock(store.url()),
            channel: Arc::from(match table_oid {
                Some(oid) => format!("keel_outbox_{oid}"),
                None => "keel_outbox".to_owned(),
            }),
            table_oid,
            store,
            wake: Arc::new(Notify::new()),
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// PostgreSQL: the advisory-lock key the active relay holds (see [`RELAY_LOCK_CLASS`]).
    pub fn relay_lock_key(&self) -> Option<i64> {
        self.table_oid.map(|oid| (RELAY_LOCK_CLASS << 32) | oid)
    }

    /// Adds `message` to the outbox inside `tx`. It is published after `tx` commits. When it
    /// has no `traceparent` header, the current trace context is added ([`crate::trace`]).
    pub async fn send(&self, tx: &mut Tx, message: &Message) -> Result<(), StoreError> {
        let mut message_headers = message.headers.clone();
        crate::trace::inject(&mut message_headers);
        let headers = serde_json::to_string(&message_headers).unwrap_or_else(|_| "{}".into());
        let payload = serde_json::to_string(&message.payload).unwrap_or_else(|_| "null".into());
        sqlx::query(
            "INSERT INTO keel_outbox (message_id, destination, msg_key, headers, payload, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&message.id)
        .bind(&message.destination)
        .bind(message.key.clone())
        .bind(headers)
        .bind(payload)
        .bind(now_ms())
        .execute(tx.conn())
        .await?;
        if tx.backend() == Backend::Postgres {
            // Delivered to every listening relay when (and only if) the transaction commits.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(&*self.channel)
                .execute(tx.conn())
                .await?;
        }
        let wake = self.wake.clone();
        tx.after_commit(move || wake.notify_one());
        Ok(())
    }

    /// Messages waiting to be published.
    pub async fn backlog(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM keel_outbox")
            .fetch_one(self.store.pool())
            .await?;
        Ok(n)
    }

    /// Publishes one batch in order; returns how many were published. Stops at the first
    /// publish failure (later messages wait, so order holds). On PostgreSQL the batch's rows
    /// are locked (`FOR UPDATE NOWAIT`) from reading to deleting, so this never publishes a
    /// row another relay is publishing; it publishes nothing (`Ok(0)`) while one is.
    ///
    /// This does not take the relay leadership: [`Outbox::run_relay`] is what services run.
    pub async fn publish_batch(&self, bus: &dyn Bus) -> Result<usize, RelayError> {
        match self.store.backend() {
            Backend::Sqlite => self.batch_sqlite(bus).await,
            Backend::Postgres => {
                let mut conn = self.store.acquire().await.map_err(RelayError::Store)?;
                self.batch_pg(&mut conn, bus).await
            }
        }
    }

    /// SQLite: reads a batch, publishes it, deletes what was published. The writes of one
    /// process queue in the store's writer lock, so the read holds no lock while publishing.
    async fn batch_sqlite(&self, bus: &dyn Bus) -> Result<usize, RelayError> {
        let rows = sqlx::query(
            "SELECT seq, message_id, destination, msg_key, headers, payload, created_at \
             FROM keel_outbox ORDER BY seq LIMIT $1",
        )
        .bind(BATCH)
        .fetch_all(self.store.pool())
        .await
        .map_err(store_error)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let (done, published, failure) = publish_rows(&rows, bus).await?;
        for q in delete_queries(&done) {
            self.store.write(q).await.map_err(RelayError::Store)?;
        }
        finish(published, failure)
    }

    /// PostgreSQL: one batch in one transaction on `conn`, its rows locked throughout.
    async fn batch_pg(
        &self,
        conn: &mut sqlx::AnyConnection,
        bus: &dyn Bus,
    ) -> Result<usize, RelayError> {
        let mut tx = conn.begin().await.map_err(store_error)?;
        let rows = sqlx::query(
            "SELECT seq, message_id, destination, msg_key, headers, payload, created_at \
             FROM keel_outbox ORDER BY seq LIMIT $1 FOR UPDATE NOWAIT",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                // Another relay holds some of these rows: it publishes them, not us.
                let _ = tx.rollback().await;
                tracing::debug!("outbox rows are locked by another relay; not publishing");
                return Ok(0);
            }
            Err(e) => return Err(store_error(e)),
        };
        if rows.is_empty() {
            tx.commit().await.map_err(store_error)?;
            return Ok(0);
        }
        let (done, published, failure) = publish_rows(&rows, bus).await?;
        for q in delete_queries(&done) {
            q.execute(&mut *tx).await.map_err(store_error)?;
        }
        tx.commit().await.map_err(store_error)?;
        finish(published, failure)
    }

    /// Runs the relay until `stop` is cancelled: stands by until it is the leader (see the
    /// module docs), then publishes until it stops or loses the leadership, and so on.
    pub async fn run_relay(self, bus: Arc<dyn Bus>, stop: CancellationToken) {
        let mut wakeup = Wakeup::new(&self);
        loop {
            if stop.is_cancelled() {
                return;
            }
            let guard = tokio::select! {
                _ = stop.cancelled() => return,
                g = self.active.lock() => g,
            };
            let leader = match self.try_lead().await {
                Ok(leader) => leader,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay cannot reach the database");
                    None
                }
            };
            let Some(mut leader) = leader else {
                drop(guard);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(POLL) => continue,
                }
            };
            tracing::info!(store = ?self.store.backend(), "outbox relay: now the active relay");
            self.lead(&mut leader, bus.as_ref(), &mut wakeup, &stop)
                .await;
            self.step_down(leader).await;
            drop(guard);
            if !stop.is_cancelled() {
                tracing::warn!("outbox relay: stepped down; standing by");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
    }

    /// Publishes as the leader until `stop` or until leadership is lost.
    async fn lead(
        &self,
        leader: &mut Leader,
        bus: &dyn Bus,
        wakeup: &mut Wakeup,
        stop: &CancellationToken,
    ) {
        let max_backoff = match leader {
            // Retries must not outlast the lease, or a standby takes over meanwhile.
            Leader::Lease { .. } => LEASE / 3,
            Leader::Lock(_) => Duration::from_secs(5),
        };
        let mut backoff = Duration::from_millis(50);
        // The backlog gauge costs a COUNT(*): taken at most every BACKLOG_EVERY, not per batch.
        let mut gauged: Option<Instant> = None;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let outcome = match leader {
                Leader::Lease { holder, renewed } => {
                    // Renewed at most every LEASE / 5, so a batch always starts with at least
                    // 4/5 of the lease ahead of it, without a write per batch.
                    let valid = if renewed.elapsed() < LEASE / 5 {
                        Ok(true)
                    } else {
                        let asked = Instant::now();
                        let r = self.lease(holder).await;
                        if matches!(r, Ok(true)) {
                            *renewed = asked;
                        }
                        r
                    };
                    match valid {
                        Ok(true) => self.batch_sqlite(bus).await,
                        Ok(false) => {
                            tracing::warn!("outbox relay: lease lost to another relay");
                            return;
                        }
                        Err(e) => Err(RelayError::Store(e)),
                    }
                }
                Leader::Lock(conn) => match self.batch_pg(conn, bus).await {
                    Err(RelayError::Store(e)) => {
                        // The lock lives exactly as long as this connection; after an error
                        // on it we cannot tell whether we still hold it.
                        tracing::warn!(error = %e, "outbox relay: leader connection failed");
                        return;
                    }
                    other => other,
                },
            };
            match outcome {
                Ok(n) => {
                    backoff = Duration::from_millis(50);
                    if n == 0 {
                        // The batch found nothing to publish: the backlog is empty.
                        metrics::gauge!("keel_outbox_backlog").set(0.0);
                    } else if gauged.is_none_or(|t| t.elapsed() >= BACKLOG_EVERY)
                        && let Ok(b) = self.backlog().await
                    {
                        metrics::gauge!("keel_outbox_backlog").set(b as f64);
                        gauged = Some(Instant::now());
                    }
                    if n as i64 >= BATCH {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "outbox relay: publish failed; will retry");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(max_backoff);
                    continue;
                }
            }
            if wakeup.ensure().await {
                continue; // (re)opened: notifications may have been missed meanwhile
            }
            // Idle: wait for a commit (in-process), a NOTIFY (other processes), or the poll.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = wakeup.recv() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Tries to become the leader.
    async fn try_lead(&self) -> Result<Option<Leader>, StoreError> {
        match self.table_oid {
            None => {
                let holder = format!("{}:{}", std::process::id(), new_id());
                let renewed = Instant::now();
                Ok(self
                    .lease(&holder)
                    .await?
                    .then_some(Leader::Lease { holder, renewed }))
            }
            Some(oid) => {
                // A connection taken out of the pool for good, so the lock ends exactly when
                // this relay (or its process) does.
                let mut conn = self.store.acquire().await?.detach();
                let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                    .bind((RELAY_LOCK_CLASS << 32) | oid)
                    .fetch_one(&mut conn)
                    .await?;
                if got {
                    Ok(Some(Leader::Lock(conn)))
                } else {
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
                    Ok(None)
                }
            }
        }
    }

    /// SQLite: takes or renews the lease for `holder`; false when another relay holds it.
    async fn lease(&self, holder: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let n = self
            .store
            .write(
                sqlx::query(
                    "INSERT INTO keel_outbox_relay (name, holder, lease_until) VALUES ('relay', $1, $2) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until \
                     WHERE keel_outbox_relay.holder = excluded.holder OR keel_outbox_relay.lease_until < $3",
                )
                .bind(holder)
                .bind(now + LEASE.as_millis() as i64)
                .bind(now),
            )
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    /// Gives the leadership back.
    async fn step_down(&self, leader: Leader) {
        match leader {
            Leader::Lease { holder, .. } => {
                let _ = self
                    .store
                    .write(
                        sqlx::query(
                            "DELETE FROM keel_outbox_relay WHERE name = 'relay' AND holder = $1",
                        )
                        .bind(holder),
                    )
                    .await;
            }
            Leader::Lock(conn) => {
                // Closing the session releases the lock (and any row locks) at once.
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
            }
        }
    }
}

/// How the active relay holds its leadership.
enum Leader {
    /// SQLite: the lease row, held under this id (`pid:random`), last renewed then.
    Lease { holder: String, renewed: Instant },
    /// PostgreSQL: the connection holding the advisory lock; every batch runs on it.
    Lock(sqlx::AnyConnection),
}

/// PostgreSQL: the `LISTEN` connection of a relay, reopened when it fails.
struct Wakeup {
    url: Option<String>,
    channel: Arc<str>,
    listener: Option<sqlx::postgres::PgListener>,
    retry_at: Instant,
    backoff: Duration,
}

impl Wakeup {
    fn new(outbox: &Outbox) -> Self {
        Self {
            url: (outbox.store.backend() == Backend::Postgres)
                .then(|| outbox.store.url().to_owned()),
            channel: outbox.channel.clone(),
            listener: None,
            retry_at: Instant::now(),
            backoff: Duration::from_millis(500),
        }
    }

    /// Opens the listener when it is closed and a retry is due. True when it opened just
    /// now, so the caller publishes once more (a commit may have come while it was closed).
    async fn ensure(&mut self) -> bool {
        let Some(url) = &self.url else {
            return false;
        };
        if self.listener.is_some() || Instant::now() < self.retry_at {
            return false;
        }
        let opened = async {
            let mut l = sqlx::postgres::PgListener::connect(url).await?;
            l.listen(&self.channel).await?;
            Ok::<_, sqlx::Error>(l)
        }
        .await;
        match opened {
            Ok(l) => {
                self.listener = Some(l);
                self.backoff = Duration::from_millis(500);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?self.backoff, "outbox relay: cannot LISTEN; polling meanwhile");
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
                false
            }
        }
    }

    /// Returns on a notification, and when the connection was lost (notifications may have
    /// been missed: the caller publishes, then [`Wakeup::ensure`] reopens it if needed).
    async fn recv(&mut self) {
        let Some(l) = &mut self.listener else {
            return std::future::pending().await;
        };
        match l.try_recv().await {
            Ok(Some(_)) => {}
            Ok(None) => tracing::debug!("outbox relay: LISTEN connection re-established"),
            Err(e) => {
                tracing::warn!(error = %e, "outbox relay: LISTEN connection failed; reopening");
                self.listener = None;
            }
        }
    }
}

/// Decodes `rows` and publishes them in order. Returns the sequence numbers to delete
/// (published ones and unreadable ones), how many were published, and the bus failure.
async fn publish_rows(
    rows: &[sqlx::any::AnyRow],
    bus: &dyn Bus,
) -> Result<(Vec<i64>, usize, Option<crate::bus::BusError>), RelayError> {
    // Rows are deleted by their exact sequence numbers, never by range: on PostgreSQL,
    // concurrent transactions commit out of sequence order, so a lower number may become
    // visible after a higher one was read.
    let mut done: Vec<i64> = Vec::new();
    let mut batch: Vec<(i64, i64, Message)> = Vec::with_capacity(rows.len());
    for row in rows {
        let seq: i64 = row.try_get("seq").map_err(store_error)?;
        match decode(row) {
            Ok(m) => {
                let created: i64 = row.try_get("created_at").unwrap_or_else(|_| now_ms());
                batch.push((seq, created, m));
            }
            Err(e) => {
                // An unreadable row cannot be fixed by retrying; log it and move on.
                tracing::error!(seq, error = %e, "dropping an unreadable outbox row");
                done.push(seq);
            }
        }
    }
    let messages: Vec<Message> = batch.iter().map(|(_, _, m)| m.clone()).collect();
    let (published, failure) = bus.publish_all(&messages).await;
    let now = now_ms();
    for (seq, created, _) in batch.iter().take(published) {
        done.push(*seq);
        let latency = (now - created).max(0) as f64 / 1000.0;
        metrics::histogram!("keel_outbox_publish_latency_seconds").record(latency);
    }
    Ok((done, published, failure))
}

type AnyQuery = sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>;

fn delete_queries(done: &[i64]) -> Vec<AnyQuery> {
    done.chunks(100)
        .map(|chunk| {
            let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!("DELETE FROM keel_outbox WHERE seq IN ({})", list.join(", "));
            // Only placeholders are interpolated; the values are bound.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for seq in chunk {
                q = q.bind(*seq);
            }
            q
        })
        .collect()
}

fn finish(published: usize, failure: Option<crate::bus::BusError>) -> Result<usize, RelayError> {
    metrics::counter!("keel_outbox_published_total").increment(published as u64);
    match failure {
        Some(e) if published == 0 => Err(RelayError::Bus(e)),
        _ => Ok(published),
    }
}

fn store_error(e: sqlx::Error) -> RelayError {
    RelayError::Store(e.into())
}

/// One relay lock per database URL in this process, however many `Outbox` handles exist.
fn relay_lock(url: &str) -> Arc<Mutex<()>> {
    static LOCKS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, Arc<Mutex<()>>>>,
    > = std::sync::OnceLock::new();
    let mut m = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    m.entry(url.to_owned()).or_default().clone()
}

fn decode(row: &sqlx::any::AnyRow) -> Result<Message, String> {
    let get = |c: &str| -> Result<String, String> {
        row.try_get::<String, _>(c).map_err(|e| e.to_string())
    };
    let key: Option<String> = row.try_get("msg_key").map_err(|e| e.to_string())?;
    let mut headers: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&get("headers")?).map_err(|e| e.to_string())?;
    headers
        .entry(headers::CREATED_AT.to_owned())
        .or_insert_with(|| now_ms().to_string());
    Ok(Message {
        id: get("message_id")?,
        destination: get("destination")?,
        key,
        headers,
        payload: serde_json::from_str(&get("payload")?).map_err(|e| e.to_string())?,
    })
}

/// Relay failures.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The outbox table could not be read or updated.
    #[error("outbox store: {0}")]
    Store(StoreError),
    /// The bus refused the first message of the batch.
    #[error("bus: {0}")]
    Bus(crate::bus::BusError),
}
