//! The kitchen as a saga participant on `kitchen.commands`: each command runs through the
//! inbox (a redelivered command is answered with its stored reply, never applied twice) and
//! its reply goes through the outbox in the same transaction.
//!
//! | Command | Effect | Failure replies |
//! |---|---|---|
//! | `CreateTicket` | a `CREATE_PENDING` ticket; replies `{"ticketId"}` (the same ticket for the same order) | `InvalidCommand` |
//! | `ConfirmCreateTicket` | `CREATE_PENDING` → `AWAITING_ACCEPTANCE` (already confirmed: success) | `TicketNotFound`, `InvalidTicketState` (cancelled) |
//! | `CancelCreateTicket` | `CREATE_PENDING`/`AWAITING_ACCEPTANCE` → `CANCELLED`; missing or cancelled: success | `InvalidTicketState` (accepted or being cancelled by the cancel-order saga) |
//! | `BeginCancelTicket` | `AWAITING_ACCEPTANCE`/`ACCEPTED` → `CANCEL_PENDING` | `TicketNotCancellable` |
//! | `UndoBeginCancelTicket` | `CANCEL_PENDING` → the state before; otherwise (or missing) nothing: success | — |
//! | `ConfirmCancelTicket` | `CANCEL_PENDING` → `CANCELLED` (already cancelled: success) | `TicketNotFound`, `InvalidTicketState` |
//!
//! Any command whose payload does not fit gets `InvalidCommand`, an unknown type
//! `UnknownCommand`: a saga is told, never left waiting.

use std::sync::Arc;

use ftgo_contracts::commands::{
    BEGIN_CANCEL_TICKET, CANCEL_CREATE_TICKET, CONFIRM_CANCEL_TICKET, CONFIRM_CREATE_TICKET,
    CREATE_TICKET, CreateTicket, OrderRef, TICKET_NOT_CANCELLABLE, TicketCreated,
    UNDO_BEGIN_CANCEL_TICKET,
};
use keel_messaging::{Handler, Inbox, Message, Outbox};
use keel_saga::{CommandError, command_handler};
use keel_store::Tx;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::tickets::{self, Ticket, TicketState};

/// Failure: the command's payload does not fit its type.
pub(crate) const INVALID_COMMAND: &str = "InvalidCommand";
/// Failure: the command's type is not one the kitchen handles.
pub(crate) const UNKNOWN_COMMAND: &str = "UnknownCommand";
/// Failure: the order has no ticket.
pub(crate) const TICKET_NOT_FOUND: &str = "TicketNotFound";
/// Failure: the ticket is in a state the command does not apply to.
pub(crate) const INVALID_TICKET_STATE: &str = "InvalidTicketState";

/// The bus handler for `kitchen.commands`.
pub(crate) fn handler(inbox: Inbox, outbox: Outbox) -> Arc<dyn Handler> {
    command_handler(inbox, outbox, |tx, cmd| Box::pin(handle(tx, cmd)))
}

async fn handle(tx: &mut Tx, cmd: &Message) -> Result<Value, CommandError> {
    let kind = cmd.message_type().unwrap_or_default();
    let outcome = match kind {
        CREATE_TICKET => create_ticket(tx, payload(cmd)?).await,
        CONFIRM_CREATE_TICKET => confirm_create(tx, &payload::<OrderRef>(cmd)?.order_id).await,
        CANCEL_CREATE_TICKET => cancel_create(tx, &payload::<OrderRef>(cmd)?.order_id).await,
        BEGIN_CANCEL_TICKET => begin_cancel(tx, &payload::<OrderRef>(cmd)?.order_id).await,
        UNDO_BEGIN_CANCEL_TICKET => {
            undo_begin_cancel(tx, &payload::<OrderRef>(cmd)?.order_id).await
        }
        CONFIRM_CANCEL_TICKET => confirm_cancel(tx, &payload::<OrderRef>(cmd)?.order_id).await,
        _ => Err(CommandError::failure(
            UNKNOWN_COMMAND,
            json!({ "type": kind, "reason": format!("the kitchen does not handle {kind:?}") }),
        )),
    };
    match &outcome {
        Ok(_) => tracing::debug!(command = kind, message_id = %cmd.id, "command applied"),
        Err(CommandError::Failure { reply_type, .. }) => {
            tracing::info!(command = kind, message_id = %cmd.id, failure = %reply_type, "command refused");
        }
        Err(CommandError::Retry(e)) => {
            tracing::warn!(command = kind, message_id = %cmd.id, error = %e, "command will be retried");
        }
    }
    outcome
}

fn payload<T: DeserializeOwned>(cmd: &Message) -> Result<T, CommandError> {
    cmd.payload_as().map_err(|e| {
        CommandError::failure(
            INVALID_COMMAND,
            json!({ "type": cmd.message_type(), "reason": e.to_string() }),
        )
    })
}

fn retry(e: sqlx::Error) -> CommandError {
    CommandError::Retry(format!("kitchen database: {e}"))
}

fn ok(body: impl Serialize) -> Result<Value, CommandError> {
    serde_json::to_value(body).map_err(|e| CommandError::Retry(e.to_string()))
}

/// A conditional update lost a race (PostgreSQL): roll back and let the bus redeliver,
/// which reads the ticket again.
fn raced(t: &Ticket) -> CommandError {
    CommandError::Retry(format!(
        "ticket {} changed state concurrently (was {})",
        t.id, t.state
    ))
}

fn wrong_state(t: &Ticket, command: &str) -> CommandError {
    CommandError::failure(
        INVALID_TICKET_STATE,
        json!({
            "ticketId": t.id,
            "orderId": t.order_id,
            "state": t.state.as_str(),
            "reason": format!("{command} does not apply to a {} ticket", t.state),
        }),
    )
}

async fn find(tx: &mut Tx, order_id: &str) -> Result<Ticket, CommandError> {
    tickets::by_order(tx.conn(), order_id)
        .await
        .map_err(retry)?
        .ok_or_else(|| {
            CommandError::failure(
                TICKET_NOT_FOUND,
                json!({ "orderId": order_id, "reason": format!("no ticket for order {order_id}") }),
            )
        })
}

async fn create_ticket(tx: &mut Tx, c: CreateTicket) -> Result<Value, CommandError> {
    if c.order_id.trim().is_empty() || c.restaurant_id.trim().is_empty() {
        return Err(CommandError::failure(
            INVALID_COMMAND,
            json!({ "type": CREATE_TICKET, "reason": "orderId and restaurantId must not be empty" }),
        ));
    }
    if let Some(t) = tickets::by_order(tx.conn(), &c.order_id)
        .await
        .map_err(retry)?
    {
        return ok(TicketCreated { ticket_id: t.id });
    }
    let ticket = Ticket {
        id: keel_messaging::new_id(),
        order_id: c.order_id,
        restaurant_id: c.restaurant_id,
        state: TicketState::CreatePending,
        previous_state: None,
        line_items: c.line_items,
        ready_by: None,
    };
    tickets::insert(tx.conn(), &ticket).await.map_err(retry)?;
    tracing::info!(ticket_id = %ticket.id, order_id = %ticket.order_id, "ticket created");
    ok(TicketCreated {
        ticket_id: ticket.id,
    })
}

async fn confirm_create(tx: &mut Tx, order_id: &str) -> Result<Value, CommandError> {
    let t = find(tx, order_id).await?;
    match t.state {
        TicketState::CreatePending => {
            move_to(tx, &t, TicketState::AwaitingAcceptance, None).await?;
        }
        // Confirmed before (the step is retried until it succeeds): nothing to do.
        TicketState::AwaitingAcceptance | TicketState::Accepted | TicketState::CancelPending => {}
        TicketState::Cancelled => return Err(wrong_state(&t, CONFIRM_CREATE_TICKET)),
    }
    ok(json!({}))
}

async fn cancel_create(tx: &mut Tx, order_id: &str) -> Result<Value, CommandError> {
    // A compensation must tolerate undoing what was never done.
    let Some(t) = tickets::by_order(tx.conn(), order_id)
        .await
        .map_err(retry)?
    else {
        return ok(json!({}));
    };
    match t.state {
        TicketState::CreatePending | TicketState::AwaitingAcceptance => {
            move_to(tx, &t, TicketState::Cancelled, None).await?;
        }
        TicketState::Cancelled => {}
        // The restaurant accepted it, or the cancel-order saga owns it: not ours to undo.
        TicketState::Accepted | TicketState::CancelPending => {
            return Err(wrong_state(&t, CANCEL_CREATE_TICKET));
        }
    }
    ok(json!({}))
}

async fn begin_cancel(tx: &mut Tx, order_id: &str) -> Result<Value, CommandError> {
    let t = tickets::by_order(tx.conn(), order_id)
        .await
        .map_err(retry)?;
    let Some(t) = t else {
        return Err(CommandError::failure(
            TICKET_NOT_CANCELLABLE,
            json!({ "orderId": order_id, "reason": format!("no ticket for order {order_id}") }),
        ));
    };
    match t.state {
        TicketState::AwaitingAcceptance | TicketState::Accepted => {
            move_to(tx, &t, TicketState::CancelPending, Some(t.state)).await?;
            ok(json!({}))
        }
        _ => Err(CommandError::failure(
            TICKET_NOT_CANCELLABLE,
            json!({
                "ticketId": t.id,
                "orderId": t.order_id,
                "state": t.state.as_str(),
                "reason": format!("a {} ticket cannot be cancelled", t.state),
            }),
        )),
    }
}

async fn undo_begin_cancel(tx: &mut Tx, order_id: &str) -> Result<Value, CommandError> {
    let t = tickets::by_order(tx.conn(), order_id)
        .await
        .map_err(retry)?;
    if let Some(t) = t
        && t.state == TicketState::CancelPending
    {
        let back = t.previous_state.unwrap_or(TicketState::AwaitingAcceptance);
        move_to(tx, &t, back, None).await?;
    }
    // Missing, or never moved to CANCEL_PENDING: nothing to undo.
    ok(json!({}))
}

async fn confirm_cancel(tx: &mut Tx, order_id: &str) -> Result<Value, CommandError> {
    let t = find(tx, order_id).await?;
    match t.state {
        TicketState::CancelPending => move_to(tx, &t, TicketState::Cancelled, None).await?,
        TicketState::Cancelled => {}
        _ => return Err(wrong_state(&t, CONFIRM_CANCEL_TICKET)),
    }
    ok(json!({}))
}

async fn move_to(
    tx: &mut Tx,
    t: &Ticket,
    to: TicketState,
    previous: Option<TicketState>,
) -> Result<(), CommandError> {
    if !tickets::transition(tx.conn(), &t.id, t.state, to, previous)
        .await
        .map_err(retry)?
    {
        return Err(raced(t));
    }
    tracing::info!(ticket_id = %t.id, order_id = %t.order_id, from = %t.state, to = %to, "ticket state changed");
    Ok(())
}
