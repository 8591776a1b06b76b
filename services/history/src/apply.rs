//! How each event changes the view. Runs inside the inbox's transaction, so a redelivered
//! message is skipped before it gets here; on top of that every change is written to be
//! idempotent and order-tolerant by itself, because events of different destinations (and,
//! after a rebuild, of one destination's different partitions) arrive in any relative order:
//!
//! - the first event of an order, whichever it is, creates its row (all parts empty);
//! - facts that never change (consumer, restaurant, items, total, ids, times) are filled in
//!   where still empty;
//! - the order's state moves only to a higher order `version` (an older version never
//!   overwrites a newer one); events from before versions existed (version 0) get the
//!   version their state implies;
//! - payment and delivery statuses move only forward by rank (`AUTHORIZED`/`DECLINED` <
//!   `REVERSED`; `PENDING` < `SCHEDULED` < `CANCELLED`).
//!
//! An event of a type the view does not use is acknowledged and counted as `ignored`; a
//! payload that does not fit its type is rejected (dead-lettered), never retried forever.

use ftgo_contracts::{
    delivery_events as de,
    events::{self as oe, OrderCancellation, OrderCreated, OrderDetails, OrderRejected, Versioned},
    order_states as s, payment_events as pe,
};
use keel_messaging::{HandlerError, Message};
use keel_store::Tx;
use serde::de::DeserializeOwned;

use crate::view::{self, DeliveryChange, Facts, PaymentChange, StateChange};

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It changed the view.
    Applied,
    /// Its order, payment or delivery had already moved past it: only facts were filled in.
    Stale,
    /// Not an event the view uses.
    Ignored,
}

impl Outcome {
    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Stale => "stale",
            Outcome::Ignored => "ignored",
        }
    }
}

fn payload<T: DeserializeOwned>(m: &Message) -> Result<T, HandlerError> {
    m.payload_as().map_err(|e| {
        HandlerError::reject(format!(
            "{} payload does not fit: {e}",
            m.message_type().unwrap_or("untyped")
        ))
    })
}

fn retry(e: sqlx::Error) -> HandlerError {
    HandlerError::retry(format!("history database: {e}"))
}

fn moved(changed: bool) -> Outcome {
    if changed {
        Outcome::Applied
    } else {
        Outcome::Stale
    }
}

/// The version an event of `state` stands for when it carries none (published before
/// versions existed).
fn implied_version(version: u64, state: &str) -> u64 {
    if version > 0 {
        return version;
    }
    match state {
        s::APPROVAL_PENDING => 1,
        s::APPROVED | s::REJECTED => 2,
        s::CANCEL_PENDING => 3,
        _ => 4,
    }
}

/// Applies `m` to the view in `tx`.
pub(crate) async fn apply(tx: &mut Tx, m: &Message) -> Result<Outcome, HandlerError> {
    match m.message_type().unwrap_or_default() {
        oe::ORDER_CREATED => {
            let e: OrderCreated = payload(m)?;
            facts(tx, &e.order_id, &e_facts(&e)).await?;
            view::mark_created(tx, &e.order_id).await.map_err(retry)?;
            state(tx, &e.order_id, s::APPROVAL_PENDING, e.version, None, None).await
        }
        oe::ORDER_APPROVED => details(tx, payload(m)?, s::APPROVED).await,
        oe::ORDER_CANCELLED => details(tx, payload(m)?, s::CANCELLED).await,
        oe::ORDER_REJECTED => {
            let e: Versioned<OrderRejected> = payload(m)?;
            let id = &e.event.order_id;
            view::upsert_skeleton(tx, id).await.map_err(retry)?;
            let reason = Some(e.event.reason.as_str());
            state(tx, id, s::REJECTED, e.version, reason, None).await
        }
        oe::ORDER_CANCELLATION_STARTED => {
            let e: OrderCancellation = payload(m)?;
            view::upsert_skeleton(tx, &e.order_id)
                .await
                .map_err(retry)?;
            state(tx, &e.order_id, s::CANCEL_PENDING, e.version, None, None).await
        }
        oe::ORDER_CANCELLATION_FAILED => {
            let e: OrderCancellation = payload(m)?;
            view::upsert_skeleton(tx, &e.order_id)
                .await
                .map_err(retry)?;
            // Back to APPROVED: without a version it cannot be placed among the others.
            if e.version == 0 {
                return Ok(Outcome::Stale);
            }
            let failure = Some(e.reason.as_deref().unwrap_or("UNKNOWN"));
            state(tx, &e.order_id, s::APPROVED, e.version, None, failure).await
        }
        oe::TICKET_ACCEPTED => {
            let e: oe::TicketAccepted = payload(m)?;
            view::upsert_skeleton(tx, &e.order_id)
                .await
                .map_err(retry)?;
            view::set_ticket(tx, &e.order_id, &e.ticket_id, "ACCEPTED", &e.ready_by)
                .await
                .map_err(retry)?;
            Ok(Outcome::Applied)
        }
        pe::PAYMENT_AUTHORIZED => {
            let e: pe::PaymentAuthorized = payload(m)?;
            let change = PaymentChange {
                status: "AUTHORIZED",
                rank: 1,
                network: Some(&e.network),
                authorization_id: Some(&e.authorization_id),
                amount: Some(e.amount),
                decline_reason: None,
            };
            payment(tx, &e.order_id, &change).await
        }
        pe::PAYMENT_DECLINED => {
            let e: pe::PaymentDeclined = payload(m)?;
            let change = PaymentChange {
                status: "DECLINED",
                rank: 1,
                network: None,
                authorization_id: None,
                amount: None,
                decline_reason: Some(&e.reason),
            };
            payment(tx, &e.order_id, &change).await
        }
        pe::PAYMENT_REVERSED => {
            let e: pe::PaymentReversed = payload(m)?;
            let change = PaymentChange {
                status: "REVERSED",
                rank: 2,
                network: None,
                authorization_id: Some(&e.authorization_id),
                amount: Some(e.amount),
                decline_reason: None,
            };
            payment(tx, &e.order_id, &change).await
        }
        de::DELIVERY_SCHEDULED => {
            let e: de::DeliveryScheduled = payload(m)?;
            let change = DeliveryChange {
                status: ftgo_contracts::delivery_states::PENDING,
                rank: 1,
                pickup_time: Some(&e.pickup_time),
                courier_id: None,
            };
            delivery(tx, &e.order_id, &change).await
        }
        de::COURIER_ASSIGNED => {
            let e: de::CourierAssigned = payload(m)?;
            let change = DeliveryChange {
                status: ftgo_contracts::delivery_states::SCHEDULED,
                rank: 2,
                pickup_time: None,
                courier_id: Some(&e.courier_id),
            };
            delivery(tx, &e.order_id, &change).await
        }
        de::DELIVERY_CANCELLED => {
            let e: de::DeliveryCancelled = payload(m)?;
            let change = DeliveryChange {
                status: ftgo_contracts::delivery_states::CANCELLED,
                rank: 3,
                pickup_time: None,
                courier_id: None,
            };
            delivery(tx, &e.order_id, &change).await
        }
        _ => Ok(Outcome::Ignored),
    }
}

fn e_facts(e: &OrderCreated) -> Facts<'_> {
    Facts {
        consumer_id: &e.consumer_id,
        restaurant_id: &e.restaurant_id,
        order_total: e.order_total,
        line_items: &e.line_items,
        delivery_address: e.delivery_address.as_deref(),
        delivery_time: e.delivery_time.as_deref(),
    }
}

async fn facts(tx: &mut Tx, order_id: &str, f: &Facts<'_>) -> Result<(), HandlerError> {
    view::upsert_skeleton(tx, order_id).await.map_err(retry)?;
    view::set_facts(tx, order_id, f).await.map_err(retry)
}

async fn details(
    tx: &mut Tx,
    e: Versioned<OrderDetails>,
    to: &str,
) -> Result<Outcome, HandlerError> {
    let d = &e.event;
    let f = Facts {
        consumer_id: &d.consumer_id,
        restaurant_id: &d.restaurant_id,
        order_total: d.order_total,
        line_items: &d.line_items,
        delivery_address: None,
        delivery_time: None,
    };
    facts(tx, &d.order_id, &f).await?;
    state(tx, &d.order_id, to, e.version, None, None).await
}

async fn state(
    tx: &mut Tx,
    order_id: &str,
    to: &str,
    version: u64,
    rejection_reason: Option<&str>,
    cancellation_failure: Option<&str>,
) -> Result<Outcome, HandlerError> {
    let change = StateChange {
        state: to,
        version: implied_version(version, to),
        rejection_reason,
        cancellation_failure,
    };
    view::advance_state(tx, order_id, &change)
        .await
        .map(moved)
        .map_err(retry)
}

async fn payment(
    tx: &mut Tx,
    order_id: &str,
    p: &PaymentChange<'_>,
) -> Result<Outcome, HandlerError> {
    view::upsert_skeleton(tx, order_id).await.map_err(retry)?;
    view::advance_payment(tx, order_id, p)
        .await
        .map(moved)
        .map_err(retry)
}

async fn delivery(
    tx: &mut Tx,
    order_id: &str,
    d: &DeliveryChange<'_>,
) -> Result<Outcome, HandlerError> {
    view::upsert_skeleton(tx, order_id).await.map_err(retry)?;
    view::advance_delivery(tx, order_id, d)
        .await
        .map(moved)
        .map_err(retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versionless_events_get_the_version_their_state_implies() {
        assert_eq!(implied_version(0, s::APPROVAL_PENDING), 1);
        assert_eq!(implied_version(0, s::APPROVED), 2);
        assert_eq!(implied_version(0, s::REJECTED), 2);
        assert_eq!(implied_version(0, s::CANCELLED), 4);
        assert_eq!(implied_version(7, s::APPROVED), 7);
    }
}
