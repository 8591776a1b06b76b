//! The events the delivery service reacts to, each through its inbox (a redelivered event
//! is skipped; its effects and the record of it commit together):
//!
//! - `kitchen.events` `TicketAccepted` → schedule the order's delivery and assign a courier;
//! - `order.events` `OrderCancelled` → cancel the order's delivery (or keep a tombstone when
//!   the cancellation overtook the ticket's acceptance — the two destinations are not
//!   ordered relative to each other).
//!
//! Other event types on these destinations are not the delivery service's business and are
//! skipped; an event of ours that does not fit is dead-lettered (retrying cannot help).

use ftgo_contracts::events::{ORDER_CANCELLED, OrderDetails, TICKET_ACCEPTED, TicketAccepted};
use ftgo_runtime::time;
use keel_messaging::{Delivery, HandlerError, Outbox};
use keel_store::Tx;

use crate::scheduling::{self, Accepted};

/// Handles one `kitchen.events` message inside the inbox transaction `tx`.
pub(crate) async fn on_kitchen_event(
    mut tx: Tx,
    d: Delivery,
    outbox: Outbox,
) -> Result<Tx, HandlerError> {
    if d.message.message_type() != Some(TICKET_ACCEPTED) {
        return Ok(tx);
    }
    let event: TicketAccepted = d.message.payload_as().map_err(HandlerError::reject)?;
    let accepted = accepted(event).map_err(HandlerError::reject)?;
    scheduling::schedule(&mut tx, &outbox, &accepted)
        .await
        .map_err(HandlerError::retry)?;
    Ok(tx)
}

/// Checks a `TicketAccepted` and normalises its `readyBy` to UTC.
fn accepted(e: TicketAccepted) -> Result<Accepted, String> {
    for (name, value) in [
        ("orderId", &e.order_id),
        ("ticketId", &e.ticket_id),
        ("restaurantId", &e.restaurant_id),
    ] {
        if value.trim().is_empty() {
            return Err(format!("TicketAccepted without a {name}"));
        }
    }
    let ready_by = time::parse_rfc3339(e.ready_by.trim()).ok_or_else(|| {
        format!(
            "TicketAccepted readyBy is not an RFC 3339 timestamp: {:?}",
            e.ready_by
        )
    })?;
    Ok(Accepted {
        order_id: e.order_id,
        ticket_id: e.ticket_id,
        restaurant_id: e.restaurant_id,
        pickup_time: time::format_rfc3339(ready_by),
    })
}

/// Handles one `order.events` message inside the inbox transaction `tx`.
pub(crate) async fn on_order_event(
    mut tx: Tx,
    d: Delivery,
    outbox: Outbox,
) -> Result<Tx, HandlerError> {
    if d.message.message_type() != Some(ORDER_CANCELLED) {
        return Ok(tx);
    }
    let event: OrderDetails = d.message.payload_as().map_err(HandlerError::reject)?;
    if event.order_id.trim().is_empty() {
        return Err(HandlerError::reject("OrderCancelled without an orderId"));
    }
    scheduling::cancel(&mut tx, &outbox, &event.order_id, &event.restaurant_id)
        .await
        .map_err(HandlerError::retry)?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ready_by: &str) -> TicketAccepted {
        TicketAccepted {
            ticket_id: "t-1".to_owned(),
            order_id: "o-1".to_owned(),
            restaurant_id: "r-1".to_owned(),
            ready_by: ready_by.to_owned(),
        }
    }

    #[test]
    fn ticket_accepted_is_checked_and_normalised() {
        let a = accepted(event("2999-01-01T14:30:00+02:00")).unwrap();
        assert_eq!(a.pickup_time, "2999-01-01T12:30:00Z");
        assert_eq!((a.order_id.as_str(), a.ticket_id.as_str()), ("o-1", "t-1"));
        assert!(accepted(event("soon")).unwrap_err().contains("readyBy"));
        let mut e = event("2999-01-01T12:30:00Z");
        e.order_id = " ".to_owned();
        assert!(accepted(e).unwrap_err().contains("orderId"));
    }
}
