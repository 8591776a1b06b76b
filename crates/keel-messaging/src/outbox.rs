//! The transactional outbox: `outbox.send(&mut tx, &message)` stores the message in the
//! same transaction as the state change it announces, so both commit or neither does. A
//! relay publishes stored messages in order (so per-key order holds), at least once, the
//! moment a transaction commits — woken in-process by an after-commit hook, and across
//! processes on PostgreSQL by `LISTEN/NOTIFY` — with a 1 s poll only as a safety net.
//!
//! Only one relay publishes at a time per database: on PostgreSQL the active relay holds a
//! session advisory lock (others stand by and take over if it dies); on SQLite, where a
//! database belongs to one service process, an in-process lock does the same. Rows are
//! deleted only after the bus accepted them; a crash in between republishes them, and the
//! consumers' inboxes drop the duplicates.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use keel_store::{Backend, Migration, Store, StoreError, Tx, now_ms};
use sqlx::Row;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    bus::Bus,
    message::{Message, headers},
};

/// The outbox table.
pub const MIGRATIONS: &[Migration] = &[Migration::new(
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
)];

const CHANNEL: &str = "keel_outbox";
/// Advisory-lock key of the active relay (PostgreSQL).
const RELAY_LOCK: i64 = 0x6b65_656c_0b0c;
const BATCH: i64 = 500;

/// A store-backed outbox. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    store: Store,
    wake: Arc<Notify>,
    active: Arc<Mutex<()>>,
}

impl Outbox {
    /// An outbox in `store`, creating its table if needed.
    pub async fn new(store: Store) -> Result<Self, StoreError> {
        store.migrate("keel_outbox", MIGRATIONS).await?;
        Ok(Self {
            active: relay_lock(store.url()),
            store,
            wake: Arc::new(Notify::new()),
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Adds `message` to the outbox inside `tx`. It is published after `tx` commits.
    pub async fn send(&self, tx: &mut Tx, message: &Message) -> Result<(), StoreError> {
        let headers = serde_json::to_string(&message.headers).unwrap_or_else(|_| "{}".into());
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
            sqlx::query("SELECT pg_notify('keel_outbox', '')")
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
    /// publish failure (later messages wait, so order holds).
    pub async fn publish_batch(&self, bus: &dyn Bus) -> Result<usize, RelayError> {
        let rows = sqlx::query(
            "SELECT seq, message_id, destination, msg_key, headers, payload, created_at \
             FROM keel_outbox ORDER BY seq LIMIT $1",
        )
        .bind(BATCH)
        .fetch_all(self.store.pool())
        .await
        .map_err(|e| RelayError::Store(e.into()))?;
        if rows.is_empty() {
            return Ok(0);
        }
        // Rows are deleted by their exact sequence numbers, never by range: on PostgreSQL,
        // concurrent transactions commit out of sequence order, so a lower number may become
        // visible after a higher one was read.
        let mut done: Vec<i64> = Vec::new();
        let mut batch: Vec<(i64, i64, Message)> = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = row
                .try_get("seq")
                .map_err(|e| RelayError::Store(e.into()))?;
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
        for chunk in done.chunks(100) {
            let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!("DELETE FROM keel_outbox WHERE seq IN ({})", list.join(", "));
            // Only placeholders are interpolated; the values are bound.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for seq in chunk {
                q = q.bind(*seq);
            }
            self.store.write(q).await.map_err(RelayError::Store)?;
        }
        metrics::counter!("keel_outbox_published_total").increment(published as u64);
        match failure {
            Some(e) if published == 0 => Err(RelayError::Bus(e)),
            _ => Ok(published),
        }
    }

    /// Runs the relay until `stop` is cancelled.
    pub async fn run_relay(self, bus: Arc<dyn Bus>, stop: CancellationToken) {
        let mut listener = None;
        loop {
            if stop.is_cancelled() {
                return;
            }
            // Leadership: one active relay per database.
            let _guard = tokio::select! {
                _ = stop.cancelled() => return,
                g = self.active.lock() => g,
            };
            let leader = match self.store.backend() {
                Backend::Sqlite => Some(None),
                Backend::Postgres => match self.pg_leader().await {
                    Ok(Some(conn)) => Some(Some(conn)),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox relay cannot reach the database");
                        None
                    }
                },
            };
            let Some(_leader_conn) = leader else {
                drop(_guard);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            if self.store.backend() == Backend::Postgres && listener.is_none() {
                listener = listen(self.store.url()).await;
            }
            let mut backoff = Duration::from_millis(50);
            loop {
                let started = Instant::now();
                let outcome = self.publish_batch(bus.as_ref()).await;
                let n = match outcome {
                    Ok(n) => {
                        backoff = Duration::from_millis(50);
                        n
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "outbox relay: publish failed; will retry");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                if let Ok(b) = self.backlog().await {
                    metrics::gauge!("keel_outbox_backlog").set(b as f64);
                }
                if n as i64 >= BATCH {
                    continue;
                }
                let _ = started;
                // Idle: wait for a commit (in-process), a NOTIFY (other processes), or the poll.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = recv(&mut listener) => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    /// Tries to become the active relay: a session advisory lock on a connection taken out
    /// of the pool for good, so the lock ends exactly when this relay (or its process) does.
    async fn pg_leader(&self) -> Result<Option<sqlx::AnyConnection>, StoreError> {
        let mut conn = self.store.acquire().await?.detach();
        let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut conn)
            .await?;
        Ok(got.then_some(conn))
    }
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

async fn listen(url: &str) -> Option<sqlx::postgres::PgListener> {
    let mut l = sqlx::postgres::PgListener::connect(url).await.ok()?;
    l.listen(CHANNEL).await.ok()?;
    Some(l)
}

async fn recv(listener: &mut Option<sqlx::postgres::PgListener>) {
    match listener {
        Some(l) => {
            if l.recv().await.is_err() {
                *listener = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
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
