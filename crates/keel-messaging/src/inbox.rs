//! The idempotent inbox: a handler's effects and the record "message X was handled by
//! consumer C" commit in one transaction, so a redelivered message is recognised and
//! skipped — at-least-once delivery, exactly-once effect. Enabled by wrapping handlers with
//! [`Inbox::handler`]; duplicates are counted in `keel_inbox_duplicates_total`.

use std::sync::Arc;

use futures::future::BoxFuture;
use keel_store::{Migration, Store, StoreError, Tx, now_ms};

use crate::bus::{Delivery, Handler, HandlerError};

/// The inbox table.
pub const MIGRATIONS: &[Migration] = &[Migration::new(
    1,
    "inbox",
    "CREATE TABLE keel_inbox (
        consumer TEXT NOT NULL,
        message_id TEXT NOT NULL,
        received_at {bigint} NOT NULL,
        PRIMARY KEY (consumer, message_id)
    )",
)];

/// What happened to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processed {
    /// The handler ran and its transaction committed.
    Applied,
    /// The message had been handled before; nothing ran.
    Duplicate,
}

/// An inbox for one consumer name. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Inbox {
    store: Store,
    consumer: Arc<str>,
}

impl Inbox {
    /// An inbox for `consumer` (e.g. `kitchen.order-events`) in `store`.
    pub async fn new(store: Store, consumer: &str) -> Result<Self, StoreError> {
        store.migrate("keel_inbox", MIGRATIONS).await?;
        Ok(Self {
            store,
            consumer: Arc::from(consumer),
        })
    }

    /// Runs `f` in a transaction that also records `message_id`, unless it was recorded
    /// before. `f` gets the transaction and hands it back to be committed.
    pub async fn process<F, Fut>(&self, message_id: &str, f: F) -> Result<Processed, HandlerError>
    where
        F: FnOnce(Tx) -> Fut,
        Fut: Future<Output = Result<Tx, HandlerError>>,
    {
        let mut tx = self.store.begin().await.map_err(HandlerError::retry)?;
        let inserted = sqlx::query(
            "INSERT INTO keel_inbox (consumer, message_id, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT (consumer, message_id) DO NOTHING",
        )
        .bind(&*self.consumer)
        .bind(message_id)
        .bind(now_ms())
        .execute(tx.conn())
        .await
        .map_err(HandlerError::retry)?
        .rows_affected();
        if inserted == 0 {
            let _ = tx.rollback().await;
            metrics::counter!("keel_inbox_duplicates_total", "consumer" => self.consumer.to_string())
                .increment(1);
            tracing::debug!(consumer = %self.consumer, message_id, "duplicate message skipped");
            return Ok(Processed::Duplicate);
        }
        let tx = f(tx).await?;
        tx.commit().await.map_err(HandlerError::retry)?;
        Ok(Processed::Applied)
    }

    /// A bus handler that runs `f` inside [`Inbox::process`].
    pub fn handler<F, Fut>(self, f: F) -> Arc<dyn Handler>
    where
        F: Fn(Tx, Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Tx, HandlerError>> + Send + 'static,
    {
        Arc::new(InboxHandler { inbox: self, f })
    }

    /// Forgets records older than `age_ms` (duplicates older than that are no longer caught).
    pub async fn prune(&self, age_ms: i64) -> Result<u64, StoreError> {
        Ok(self
            .store
            .write(
                sqlx::query("DELETE FROM keel_inbox WHERE consumer = $1 AND received_at < $2")
                    .bind(&*self.consumer)
                    .bind(now_ms() - age_ms),
            )
            .await?
            .rows_affected())
    }
}

struct InboxHandler<F> {
    inbox: Inbox,
    f: F,
}

impl<F, Fut> Handler for InboxHandler<F>
where
    F: Fn(Tx, Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Tx, HandlerError>> + Send + 'static,
{
    fn handle(&self, delivery: Delivery) -> BoxFuture<'_, Result<(), HandlerError>> {
        Box::pin(async move {
            let id = delivery.message.id.clone();
            self.inbox
                .process(&id, |tx| (self.f)(tx, delivery))
                .await
                .map(|_| ())
        })
    }
}
