//! The embedded message bus on SQLite: Keel's default for one machine. Several processes
//! share one bus file safely (SQLite's locking, WAL); consumer-group offsets and partition
//! ownership live in the file, so they survive restarts, and a new member of a group takes
//! over the partitions of a dead one when its lease runs out. Publishers wake consumers
//! with a UDP datagram on loopback (in-process: directly), so delivery takes milliseconds,
//! not a polling interval; a 250 ms poll remains as a safety net.

mod consumer;
mod schema;
mod wake;

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use keel_messaging::{Bus, BusError, Consumer, Handler, Message, Subscription, validate_name};
use keel_store::{Store, now_ms};

use crate::wake::Waker;

/// Tunables of the embedded bus.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Partitions per destination (per-key order holds within one). Default 16. Every
    /// process sharing a bus file must use the same value: the file records the count it
    /// was made with, and opening it with another is refused.
    pub partitions: u32,
    /// Messages older than this are deleted (default 7 days).
    pub retention: Duration,
    /// At most this many messages are kept per destination (default 1,000,000).
    pub max_messages: i64,
    /// A member whose heartbeat is older than this is dead (default 5 s).
    pub member_timeout: Duration,
    /// Safety-net poll when no wake-up arrives (default 250 ms).
    pub poll: Duration,
    /// Messages fetched per partition per round (default 200).
    pub batch: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            partitions: 16,
            retention: Duration::from_secs(7 * 24 * 3600),
            max_messages: 1_000_000,
            member_timeout: Duration::from_secs(5),
            poll: Duration::from_millis(250),
            batch: 200,
        }
    }
}

/// Records `partitions` in a new bus file, or checks it against the count the file was
/// made with: a message's partition is stored with it, so a process counting differently
/// would consume partitions that do not hold its keys and never read the others' rows.
/// (A file from before the count was recorded gets this process's count; until then every
/// process used the default.)
async fn check_partitions(store: &Store, url: &str, partitions: u32) -> Result<(), BusError> {
    let mut tx = store.begin().await.map_err(unavailable)?;
    sqlx::query(
        "INSERT INTO bus_settings (name, value) VALUES ('partitions', $1) \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(partitions.to_string())
    .execute(tx.conn())
    .await
    .map_err(|e| unavailable(e.into()))?;
    let have: String =
        sqlx::query_scalar("SELECT value FROM bus_settings WHERE name = 'partitions'")
            .fetch_one(tx.conn())
            .await
            .map_err(|e| unavailable(e.into()))?;
    tx.commit().await.map_err(unavailable)?;
    if have != partitions.to_string() {
        return Err(BusError::Invalid(format!(
            "the bus file {url} was made with {have} partitions; this process is configured \
             with {partitions} (every process sharing a bus file must use the same count)"
        )));
    }
    Ok(())
}

/// The embedded bus. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteBus {
    pub(crate) store: Store,
    pub(crate) settings: Arc<Settings>,
    pub(crate) waker: Waker,
}

impl SqliteBus {
    /// Opens (creating if needed) the bus at `url` (`sqlite://path/to/bus.db`).
    pub async fn open(url: &str) -> Result<Self, BusError> {
        Self::open_with(url, Settings::default()).await
    }

    /// Opens with explicit settings.
    pub async fn open_with(url: &str, settings: Settings) -> Result<Self, BusError> {
        if !url.starts_with("sqlite:") {
            return Err(BusError::Invalid(format!(
                "the embedded bus needs a sqlite:// URL, got {url:?}"
            )));
        }
        if settings.partitions == 0 || settings.partitions > 1024 {
            return Err(BusError::Invalid(
                "partitions must be between 1 and 1024".into(),
            ));
        }
        let store = Store::connect_with(url, 4).await.map_err(unavailable)?;
        store
            .migrate("keel_bus", schema::MIGRATIONS)
            .await
            .map_err(unavailable)?;
        check_partitions(&store, url, settings.partitions).await?;
        let waker = Waker::new(store.clone())
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let bus = Self {
            store,
            settings: Arc::new(settings),
            waker,
        };
        bus.spawn_retention();
        Ok(bus)
    }

    fn spawn_retention(&self) {
        let bus = self.clone();
        let stop = self.waker.stopped();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
                if let Err(e) = bus.enforce_retention().await {
                    tracing::debug!(error = %e, "bus retention pass failed");
                }
            }
        });
    }

    /// Deletes messages beyond the retention age or count. Returns how many.
    pub async fn enforce_retention(&self) -> Result<u64, BusError> {
        let cutoff = now_ms() - self.settings.retention.as_millis() as i64;
        // Cheap checks first (the rowid's ends, no scan), so a pass with nothing to delete
        // never takes the shared file's write lock for a full scan.
        let (first, last, oldest): (Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT MIN(seq), MAX(seq), (SELECT created_at FROM bus_messages ORDER BY seq LIMIT 1) FROM bus_messages",
        )
        .fetch_one(self.store.pool())
        .await
        .map_err(|e| unavailable(e.into()))?;
        let mut n = 0;
        if oldest.is_some_and(|t| t < cutoff) {
            n += self
                .store
                .write(sqlx::query("DELETE FROM bus_messages WHERE created_at < $1").bind(cutoff))
                .await
                .map_err(unavailable)?
                .rows_affected();
        }
        // Fewer rows in all than the per-destination cap: no destination is over it.
        if let (Some(first), Some(last)) = (first, last)
            && last - first < self.settings.max_messages
        {
            return Ok(n);
        }
        let dests: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT destination FROM bus_messages")
            .fetch_all(self.store.pool())
            .await
            .map_err(|e| unavailable(e.into()))?;
        for (d,) in dests {
            n += self.store.write(sqlx::query(
                "DELETE FROM bus_messages WHERE destination = $1 AND seq <= \
                 (SELECT seq FROM bus_messages WHERE destination = $2 ORDER BY seq DESC LIMIT 1 OFFSET $3)",
            )
            .bind(&d)
            .bind(&d)
            .bind(self.settings.max_messages)
            )
            .await
            .map_err(unavailable)?
            .rows_affected();
        }
        Ok(n)
    }

    /// The bus's store (for inspection and tests).
    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn insert_all(&self, messages: &[Message]) -> Result<(), BusError> {
        // Checked and encoded before the write lock is taken.
        let mut rows = Vec::with_capacity(messages.len());
        for m in messages {
            validate_name(&m.destination).map_err(BusError::Invalid)?;
            // A message published from a traced task joins its trace (unless it has one).
            let mut headers = m.headers.clone();
            keel_messaging::trace::inject(&mut headers);
            let headers = serde_json::to_string(&headers).unwrap_or_else(|_| "{}".into());
            let payload = serde_json::to_string(&m.payload).unwrap_or_else(|_| "null".into());
            rows.push((m, headers, payload));
        }
        let now = now_ms();
        let mut tx = self.store.begin().await.map_err(unavailable)?;
        // Several rows per statement: each statement is a round trip to SQLite's worker
        // thread, which cost more than inserting the row. Rows keep their order (`seq`).
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let sql = multi_row_insert(chunk.len());
            // Only numbered placeholders are formatted into the text.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (m, headers, payload) in chunk {
                query = query
                    .bind(&m.destination)
                    .bind(i64::from(m.partition(self.settings.partitions)))
                    .bind(&m.id)
                    .bind(m.key.clone())
                    .bind(headers.as_str())
                    .bind(payload.as_str())
                    .bind(now);
            }
            query
                .execute(tx.conn())
                .await
                .map_err(|e| unavailable(e.into()))?;
        }
        tx.commit().await.map_err(unavailable)?;
        let mut dests: Vec<&str> = messages.iter().map(|m| m.destination.as_str()).collect();
        dests.sort_unstable();
        dests.dedup();
        for d in dests {
            metrics::counter!("keel_messaging_published_total", "destination" => d.to_owned(), "backend" => "sqlite")
                .increment(messages.iter().filter(|m| m.destination == d).count() as u64);
            let mut parts: Vec<u32> = messages
                .iter()
                .filter(|m| m.destination == d)
                .map(|m| m.partition(self.settings.partitions))
                .collect();
            parts.sort_unstable();
            parts.dedup();
            self.waker.wake(d, &parts).await;
        }
        Ok(())
    }
}

/// Rows per `INSERT` statement when publishing (7 parameters each, far below SQLite's
/// limit of 32,766).
const ROWS_PER_INSERT: usize = 64;

/// `INSERT INTO bus_messages … VALUES (…), (…)` for `rows` rows, parameters numbered in order.
fn multi_row_insert(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO bus_messages (destination, partition, message_id, msg_key, headers, payload, created_at) VALUES ",
    );
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 1..=7 {
            if c > 1 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", r * 7 + c));
        }
        sql.push(')');
    }
    sql
}

pub(crate) fn unavailable(e: keel_store::StoreError) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl Bus for SqliteBus {
    fn publish<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move { self.insert_all(std::slice::from_ref(message)).await })
    }

    fn publish_all<'a>(
        &'a self,
        messages: &'a [Message],
    ) -> BoxFuture<'a, (usize, Option<BusError>)> {
        Box::pin(async move {
            match self.insert_all(messages).await {
                Ok(()) => (messages.len(), None),
                Err(e) => (0, Some(e)),
            }
        })
    }

    fn subscribe(
        &self,
        subscription: Subscription,
        handler: Arc<dyn Handler>,
    ) -> BoxFuture<'_, Result<Consumer, BusError>> {
        Box::pin(async move {
            subscription.validate()?;
            consumer::start(self.clone(), subscription, handler).await
        })
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
