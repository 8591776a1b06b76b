//! `consumer.events` (group `accounting`, through the inbox): `ConsumerCreated` opens the
//! consumer's account with their card. Other consumer events are not accounting's business
//! and are skipped; a `ConsumerCreated` that does not deserialize is dead-lettered.

use ftgo_contracts::events::{CONSUMER_CREATED, ConsumerCreated};
use keel_messaging::{Delivery, HandlerError};
use keel_store::Tx;

use crate::ledger::{self, Account};

/// Handles one consumer event inside the inbox transaction `tx`.
pub(crate) async fn on_consumer_event(mut tx: Tx, d: Delivery) -> Result<Tx, HandlerError> {
    if d.message.message_type() != Some(CONSUMER_CREATED) {
        return Ok(tx);
    }
    let event: ConsumerCreated = d.message.payload_as().map_err(HandlerError::reject)?;
    if event.consumer_id.trim().is_empty() {
        return Err(HandlerError::reject("ConsumerCreated without a consumerId"));
    }
    let account = Account {
        consumer_id: event.consumer_id,
        name: event.name,
        card: event.card.trim().to_owned(),
    };
    let opened = ledger::open_account(tx.conn(), &account)
        .await
        .map_err(HandlerError::retry)?;
    if opened {
        tracing::info!(consumer_id = %account.consumer_id, "account opened");
    } else {
        tracing::debug!(consumer_id = %account.consumer_id, "account exists; ConsumerCreated skipped");
    }
    Ok(tx)
}
