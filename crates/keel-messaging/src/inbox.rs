//! The idempotent inbox: a handler's effects and the record "message X was handled by
//! consumer C" commit in one transaction, so a redelivered message is recognised and
//! skipped — at-least-once delivery, exactly-once effect. Duplicates are counted in
//! `keel_inbox_duplicates_total`.
//!
//! [`Inbox::subscribe`] is the way services consume: it subscribes through the inbox, so
//! deduplication is on by construction. Plain [`Bus::subscribe`] is the raw at-least-once
//! API (for handlers that are idempotent by themselves, or have no store); a handler that
//! must run elsewhere can still be wrapped with [`Inbox::handler`].

use std::sync::Arc;

use futures::future::BoxFuture;
use keel_store::{Migration, Store, StoreError, Tx, now_ms};

use crate::bus::{Bus, BusError, Consumer, Delivery, Handler, HandlerError, Subscription};

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

    /// Consumes `subscription` on `bus` through this inbox: each delivery runs `f` inside
    /// [`Inbox::process`], so `f`'s writes on the transaction it gets and the record of the
    /// message id commit together, and a redelivered or republished message is skipped.
    /// `f` returns the transaction to commit, or an error (the transaction rolls back and
    /// the bus redelivers or dead-letters as usual).
    ///
    /// ```no_run
    /// # async fn demo(bus: &dyn keel_messaging::Bus, store: keel_store::Store) -> Result<(), Box<dyn std::error::Error>> {
    /// use keel_messaging::{HandlerError, Inbox, Subscription};
    /// let inbox = Inbox::new(store, "kitchen.order-events").await?;
    /// let consumer = inbox
    ///     .subscribe(bus, Subscription::new("order.events", "kitchen"), |mut tx, d| async move {
    ///         sqlx::query("INSERT INTO tickets (order_id) VALUES ($1)")
    ///             .bind(d.message.key.clone().unwrap_or_default())
    ///             .execute(tx.conn())
    ///             .await
    ///             .map_err(HandlerError::retry)?;
    ///         Ok(tx)
    ///     })
    ///     .await?;
    /// # consumer.stop().await; Ok(()) }
    /// ```
    pub async fn subscribe<F, Fut>(
        &self,
        bus: &dyn Bus,
        subscription: Subscription,
        f: F,
    ) -> Result<Consumer, BusError>
    where
        F: Fn(Tx, Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Tx, HandlerError>> + Send + 'static,
    {
        bus.subscribe(subscription, self.clone().handler(f)).await
    }

    /// A bus handler that runs `f` inside [`Inbox::process`] (what [`Inbox::subscribe`]
    /// subscribes with).
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
