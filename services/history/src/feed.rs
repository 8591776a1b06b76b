//! What feeds the view: one consumer per event destination (`order.events`,
//! `kitchen.events`, `accounting.events`, `delivery.events`), all in the consumer group of
//! the view's *generation* (`order-history.g<N>`) and all through one inbox of that name,
//! so a redelivered message is applied once.
//!
//! A rebuild ([`Feed::rebuild`]) stops the consumers, empties the view and the inbox
//! records and starts generation N + 1 in one transaction, then subscribes the new group:
//! a group the bus has never seen starts at the oldest message it retains (both the
//! embedded bus and NATS JetStream), so the view is rebuilt by replaying everything
//! retained. Every applied message bumps a counter that consistency-token waits watch.

use std::{sync::Arc, time::Duration};

use ftgo_contracts::destinations;
use futures::future::BoxFuture;
use keel_messaging::{
    Bus, BusError, Consumer, Delivery, Handler, HandlerError, Inbox, Processed, Subscription,
    headers,
};
use keel_store::{Store, StoreError, now_ms};
use tokio::sync::{Mutex, watch};

use crate::{SERVICE, apply, view};

/// The destinations the view is built from.
pub const DESTINATIONS: [&str; 4] = [
    destinations::ORDER_EVENTS,
    destinations::KITCHEN_EVENTS,
    destinations::ACCOUNTING_EVENTS,
    destinations::DELIVERY_EVENTS,
];

/// The consumer group (and inbox name) of generation `generation`.
pub fn group(generation: u64) -> String {
    format!("{SERVICE}.g{generation}")
}

/// Why a rebuild failed.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The view's database failed (nothing was wiped, or the wipe rolled back).
    #[error("history database: {0}")]
    Store(#[from] StoreError),
    /// The view was reset but the new generation could not subscribe; it retries every
    /// second until it can.
    #[error("message bus: {0}")]
    Bus(#[from] BusError),
}

impl From<sqlx::Error> for RebuildError {
    fn from(e: sqlx::Error) -> Self {
        RebuildError::Store(StoreError::Database(e))
    }
}

/// The view's consumers. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Feed {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    bus: Arc<dyn Bus>,
    applied: watch::Sender<u64>,
    running: Mutex<Running>,
}

#[derive(Debug)]
struct Running {
    generation: u64,
    consumers: Vec<Consumer>,
    stopped: bool,
}

impl Feed {
    /// Subscribes the current generation's group to every destination.
    pub(crate) async fn start(store: Store, bus: Arc<dyn Bus>) -> Result<Self, RebuildError> {
        let generation = view::generation(store.pool()).await?;
        let feed = Feed {
            inner: Arc::new(Inner {
                store,
                bus,
                applied: watch::Sender::new(0),
                running: Mutex::new(Running {
                    generation,
                    consumers: Vec::new(),
                    stopped: false,
                }),
            }),
        };
        let consumers = feed.subscribe(generation).await?;
        feed.inner.running.lock().await.consumers = consumers;
        metrics::gauge!("keel_history_generation").set(generation as f64);
        tracing::info!(generation, group = %group(generation), "order history view consuming");
        Ok(feed)
    }

    async fn subscribe(&self, generation: u64) -> Result<Vec<Consumer>, RebuildError> {
        let name = group(generation);
        let inbox = Inbox::new(self.inner.store.clone(), &name).await?;
        let handler: Arc<dyn Handler> = Arc::new(ViewHandler {
            inbox,
            applied: self.inner.applied.clone(),
        });
        let mut consumers = Vec::with_capacity(DESTINATIONS.len());
        for destination in DESTINATIONS {
            // Only database trouble is retried (bad payloads are rejected at once), so be
            // patient rather than dead-letter an event the view needs.
            let sub = Subscription::new(destination, name.clone())
                .max_attempts(10_000)
                .backoff(Duration::from_millis(100), Duration::from_secs(5));
            consumers.push(self.inner.bus.subscribe(sub, handler.clone()).await?);
        }
        Ok(consumers)
    }

    /// A receiver that changes whenever a message was processed (or the view was reset).
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// The store the view lives in.
    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The generation being fed.
    pub(crate) async fn generation(&self) -> u64 {
        self.inner.running.lock().await.generation
    }

    /// Stops consuming, empties the view, starts the next generation and subscribes it
    /// (replaying every retained event). Returns the new generation.
    pub(crate) async fn rebuild(&self) -> Result<u64, RebuildError> {
        let mut running = self.inner.running.lock().await;
        if running.stopped {
            return Err(RebuildError::Bus(BusError::Unavailable(
                "the service is stopping".to_owned(),
            )));
        }
        for c in running.consumers.drain(..) {
            c.stop().await;
        }
        let generation = match reset(&self.inner.store).await {
            Ok(g) => g,
            Err(e) => {
                // Nothing changed: resume the old generation.
                running.consumers = self.subscribe(running.generation).await?;
                return Err(e);
            }
        };
        running.generation = generation;
        self.inner.applied.send_modify(|n| *n += 1);
        metrics::counter!("keel_history_rebuilds_total").increment(1);
        metrics::gauge!("keel_history_generation").set(generation as f64);
        tracing::info!(generation, group = %group(generation), "order history view reset; replaying");
        loop {
            match self.subscribe(generation).await {
                Ok(consumers) => {
                    running.consumers = consumers;
                    return Ok(generation);
                }
                Err(e) => {
                    tracing::warn!(generation, error = %e, "cannot subscribe the new generation yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Stops consuming (the message in hand finishes first).
    pub(crate) async fn stop(&self) {
        let mut running = self.inner.running.lock().await;
        running.stopped = true;
        for c in running.consumers.drain(..) {
            c.stop().await;
        }
    }
}

/// Empties the view and starts the next generation, in one transaction; returns it.
pub(crate) async fn reset(store: &Store) -> Result<u64, RebuildError> {
    let mut tx = store.begin().await?;
    let generation = view::reset(&mut tx, &format!("{SERVICE}.g")).await?;
    tx.commit().await?;
    Ok(generation)
}

struct ViewHandler {
    inbox: Inbox,
    applied: watch::Sender<u64>,
}

impl Handler for ViewHandler {
    fn handle(&self, delivery: Delivery) -> BoxFuture<'_, Result<(), HandlerError>> {
        Box::pin(async move {
            let m = delivery.message;
            let kind = m.message_type().unwrap_or("untyped").to_owned();
            let mut outcome = apply::Outcome::Ignored;
            let out = &mut outcome;
            let processed = self
                .inbox
                .process(&m.id, |mut tx| async {
                    *out = apply::apply(&mut tx, &m).await?;
                    Ok(tx)
                })
                .await;
            let processed = match processed {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(r#type = %kind, message_id = %m.id, error = %e, "event not applied");
                    return Err(e);
                }
            };
            if processed == Processed::Applied {
                metrics::counter!("keel_history_events_applied_total", "type" => kind.clone(), "outcome" => outcome.as_str())
                    .increment(1);
                tracing::debug!(r#type = %kind, message_id = %m.id, outcome = outcome.as_str(), "event processed");
            }
            if let Some(created) = m
                .header(headers::CREATED_AT)
                .and_then(|v| v.parse::<i64>().ok())
            {
                let lag = (now_ms() - created).max(0) as f64 / 1000.0;
                metrics::gauge!("keel_history_view_lag_seconds").set(lag);
            }
            self.applied.send_modify(|n| *n += 1);
            Ok(())
        })
    }
}
