//! The delivery service's decisions, each inside the caller's transaction with its events
//! going through the outbox in that same transaction: schedule a delivery for an accepted
//! ticket, cancel it with its order, and hand waiting deliveries to available couriers.
//!
//! Assignment rule: the available courier with the fewest `SCHEDULED` deliveries gets the
//! delivery, ties going to the smallest courier id; waiting deliveries are served oldest
//! first.

use ftgo_contracts::{
    SCHEMA_VERSION,
    delivery_events::{
        COURIER_ASSIGNED, CourierAssigned, DELIVERY_CANCELLED, DELIVERY_SCHEDULED,
        DeliveryCancelled, DeliveryScheduled,
    },
    destinations::DELIVERY_EVENTS,
};
use keel_messaging::{Message, Outbox};
use keel_store::{StoreError, Tx};
use serde::Serialize;

use crate::{
    store::{self, Delivery, DeliveryState},
    telemetry,
};

/// Why a decision could not be made; the transaction must be rolled back and the work
/// retried.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// A query failed.
    #[error("delivery database: {0}")]
    Db(#[from] sqlx::Error),
    /// The outbox could not take an event.
    #[error("outbox: {0}")]
    Outbox(#[from] StoreError),
    /// An event did not serialize.
    #[error("event encoding: {0}")]
    Encode(#[from] serde_json::Error),
    /// Another writer changed the delivery between our read and our update.
    #[error("delivery of order {0} changed concurrently")]
    Raced(String),
}

/// An accepted ticket to deliver.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Accepted {
    pub(crate) order_id: String,
    pub(crate) ticket_id: String,
    pub(crate) restaurant_id: String,
    /// RFC 3339, UTC.
    pub(crate) pickup_time: String,
}

/// What [`schedule`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scheduled {
    /// A new delivery, with the courier it got (if one was available).
    New(Option<String>),
    /// The order already had a live delivery: nothing changed.
    Exists,
    /// The order was cancelled before: the delivery stays `CANCELLED`.
    Cancelled,
}

async fn publish<T: Serialize>(
    tx: &mut Tx,
    outbox: &Outbox,
    event_type: &str,
    order_id: &str,
    event: &T,
) -> Result<(), Error> {
    let m = Message::typed(DELIVERY_EVENTS, event_type, SCHEMA_VERSION, event)?.with_key(order_id);
    outbox.send(tx, &m).await?;
    Ok(())
}

/// Creates the delivery of an accepted ticket (`PENDING`, `DeliveryScheduled`) and assigns
/// it a courier when one is available (`SCHEDULED`, `CourierAssigned`). Idempotent per
/// order: a live delivery is left as it is, a tombstone stays `CANCELLED` (it only learns
/// the ticket and the pickup time).
pub(crate) async fn schedule(
    tx: &mut Tx,
    outbox: &Outbox,
    a: &Accepted,
) -> Result<Scheduled, Error> {
    if let Some(existing) = store::delivery(tx.conn(), &a.order_id).await? {
        return Ok(match existing.state {
            DeliveryState::Cancelled => {
                store::fill_tombstone(tx.conn(), &a.order_id, &a.ticket_id, &a.pickup_time).await?;
                tracing::info!(order_id = %a.order_id, "ticket accepted for a cancelled order; delivery stays CANCELLED");
                Scheduled::Cancelled
            }
            DeliveryState::Pending | DeliveryState::Scheduled => {
                tracing::debug!(order_id = %a.order_id, state = %existing.state, "delivery exists; TicketAccepted skipped");
                Scheduled::Exists
            }
        });
    }
    store::insert(
        tx.conn(),
        &Delivery {
            order_id: a.order_id.clone(),
            restaurant_id: a.restaurant_id.clone(),
            ticket_id: Some(a.ticket_id.clone()),
            pickup_time: Some(a.pickup_time.clone()),
            state: DeliveryState::Pending,
            courier_id: None,
        },
    )
    .await?;
    publish(
        tx,
        outbox,
        DELIVERY_SCHEDULED,
        &a.order_id,
        &DeliveryScheduled {
            order_id: a.order_id.clone(),
            restaurant_id: a.restaurant_id.clone(),
            pickup_time: a.pickup_time.clone(),
        },
    )
    .await?;
    tx.after_commit(telemetry::delivery_scheduled);
    tracing::info!(order_id = %a.order_id, restaurant_id = %a.restaurant_id, pickup_time = %a.pickup_time, "delivery scheduled");
    // Older waiting deliveries first (there are none unless no courier was free for them).
    let assigned = assign_pending(tx, outbox).await?;
    let courier = assigned
        .into_iter()
        .find(|(order, _)| *order == a.order_id)
        .map(|(_, courier)| courier);
    if courier.is_none() {
        tracing::info!(order_id = %a.order_id, "no courier available; delivery PENDING");
    }
    Ok(Scheduled::New(courier))
}

async fn assign(tx: &mut Tx, outbox: &Outbox, order_id: &str, courier: &str) -> Result<(), Error> {
    if !store::assign(tx.conn(), order_id, courier).await? {
        return Err(Error::Raced(order_id.to_owned()));
    }
    publish(
        tx,
        outbox,
        COURIER_ASSIGNED,
        order_id,
        &CourierAssigned {
            order_id: order_id.to_owned(),
            courier_id: courier.to_owned(),
        },
    )
    .await?;
    tx.after_commit(telemetry::courier_assigned);
    tracing::info!(order_id, courier_id = courier, "courier assigned");
    Ok(())
}

/// What [`cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cancelled {
    /// A live delivery was cancelled (`DeliveryCancelled`), its courier freed.
    Now,
    /// It was cancelled before: nothing changed.
    Already,
    /// The order had no delivery yet: a `CANCELLED` tombstone now stands for it, so a
    /// late `TicketAccepted` schedules nothing.
    Tombstone,
}

/// Cancels the delivery of `order_id` (`restaurant_id` from the cancelled order, for a
/// tombstone). Idempotent.
pub(crate) async fn cancel(
    tx: &mut Tx,
    outbox: &Outbox,
    order_id: &str,
    restaurant_id: &str,
) -> Result<Cancelled, Error> {
    let Some(d) = store::delivery(tx.conn(), order_id).await? else {
        store::insert(
            tx.conn(),
            &Delivery {
                order_id: order_id.to_owned(),
                restaurant_id: restaurant_id.to_owned(),
                ticket_id: None,
                pickup_time: None,
                state: DeliveryState::Cancelled,
                courier_id: None,
            },
        )
        .await?;
        tracing::info!(
            order_id,
            "order cancelled before its delivery was scheduled; tombstone kept"
        );
        return Ok(Cancelled::Tombstone);
    };
    if d.state == DeliveryState::Cancelled {
        return Ok(Cancelled::Already);
    }
    if !store::cancel(tx.conn(), order_id, d.state).await? {
        return Err(Error::Raced(order_id.to_owned()));
    }
    publish(
        tx,
        outbox,
        DELIVERY_CANCELLED,
        order_id,
        &DeliveryCancelled {
            order_id: order_id.to_owned(),
        },
    )
    .await?;
    tx.after_commit(telemetry::delivery_cancelled);
    tracing::info!(order_id, from = %d.state, courier_id = d.courier_id.as_deref(), "delivery cancelled");
    telemetry::refresh_gauges(tx).await?;
    Ok(Cancelled::Now)
}

/// At most this many waiting deliveries are assigned per call (the rest on the next).
const ASSIGN_BATCH: i64 = 500;

/// Assigns waiting deliveries, oldest first, while couriers are available. Returns the
/// (order, courier) pairs assigned.
pub(crate) async fn assign_pending(
    tx: &mut Tx,
    outbox: &Outbox,
) -> Result<Vec<(String, String)>, Error> {
    let mut done = Vec::new();
    for order_id in store::pending(tx.conn(), ASSIGN_BATCH).await? {
        let Some(courier) = store::least_busy_available_courier(tx.conn()).await? else {
            break;
        };
        assign(tx, outbox, &order_id, &courier).await?;
        done.push((order_id, courier));
    }
    telemetry::refresh_gauges(tx).await?;
    Ok(done)
}
