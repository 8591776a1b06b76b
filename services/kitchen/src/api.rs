//! The kitchen's HTTP API: read a ticket (by id or by order), accept it.

use ftgo_contracts::events::{TICKET_ACCEPTED, TicketAccepted};
use ftgo_runtime::time;
use keel_chassis::{
    ApiResult, Problem,
    axum::{
        Json, Router,
        extract::{Path, State},
        http::StatusCode,
        routing::{get, post},
    },
};
use keel_messaging::{Message, Outbox};
use keel_store::{Store, now_ms};
use serde::Deserialize;

use crate::tickets::{self, Ticket, TicketState, TicketView};
use keel_chassis::json::{JsonBody, invalid_field};

#[derive(Debug, Clone)]
struct AppState {
    store: Store,
    outbox: Outbox,
}

/// `POST /tickets/{id}/accept` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AcceptTicket {
    /// When the food will be ready (RFC 3339, in the future).
    ready_by: String,
}

/// The kitchen's routes.
pub(crate) fn router(store: Store, outbox: Outbox) -> Router {
    Router::new()
        .route("/tickets/{ticket_id}", get(get_ticket))
        .route("/tickets/by-order/{order_id}", get(get_by_order))
        .route("/tickets/{ticket_id}/accept", post(accept))
        .route("/openapi.json", get(crate::openapi::document))
        .merge(keel_chassis::openapi::ui())
        .with_state(AppState { store, outbox })
}

fn unavailable(e: impl std::fmt::Display) -> Problem {
    tracing::warn!(error = %e, "kitchen database error");
    Problem::new(StatusCode::SERVICE_UNAVAILABLE).with_detail(format!("kitchen database: {e}"))
}

fn no_ticket(ticket_id: &str) -> Problem {
    Problem::not_found(format!("no ticket {ticket_id}")).with_extension("ticketId", ticket_id)
}

async fn get_ticket(
    State(state): State<AppState>,
    Path(ticket_id): Path<String>,
) -> ApiResult<Json<TicketView>> {
    tickets::by_id(state.store.pool(), &ticket_id)
        .await
        .map_err(unavailable)?
        .map(|t| Json(t.into()))
        .ok_or_else(|| no_ticket(&ticket_id))
}

async fn get_by_order(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
) -> ApiResult<Json<TicketView>> {
    tickets::by_order(state.store.pool(), &order_id)
        .await
        .map_err(unavailable)?
        .map(|t| Json(t.into()))
        .ok_or_else(|| {
            Problem::not_found(format!("no ticket for order {order_id}"))
                .with_extension("orderId", order_id)
        })
}

async fn accept(
    State(state): State<AppState>,
    Path(ticket_id): Path<String>,
    JsonBody(req): JsonBody<AcceptTicket>,
) -> ApiResult<Json<TicketView>> {
    let Some(ready_ms) = time::parse_rfc3339(req.ready_by.trim()) else {
        return Err(invalid_field(
            "readyBy",
            format!(
                "readyBy must be an RFC 3339 timestamp such as 2030-01-01T12:30:00Z, got {:?}",
                req.ready_by
            ),
        ));
    };
    if ready_ms <= now_ms() {
        return Err(invalid_field(
            "readyBy",
            format!("readyBy must be in the future, got {}", req.ready_by),
        ));
    }
    let ready_by = time::format_rfc3339(ready_ms);
    let mut tx = state.store.begin().await.map_err(unavailable)?;
    let Some(ticket) = tickets::by_id(tx.conn(), &ticket_id)
        .await
        .map_err(unavailable)?
    else {
        return Err(no_ticket(&ticket_id));
    };
    if ticket.state != TicketState::AwaitingAcceptance
        || !tickets::accept(tx.conn(), &ticket_id, &ready_by)
            .await
            .map_err(unavailable)?
    {
        let now = tickets::by_id(tx.conn(), &ticket_id)
            .await
            .map_err(unavailable)?
            .map_or(ticket.state, |t| t.state);
        return Err(not_acceptable(&ticket, now));
    }
    let event = TicketAccepted {
        ticket_id: ticket.id.clone(),
        order_id: ticket.order_id.clone(),
        restaurant_id: ticket.restaurant_id.clone(),
        ready_by: ready_by.clone(),
    };
    let message = Message::typed(
        ftgo_contracts::destinations::KITCHEN_EVENTS,
        TICKET_ACCEPTED,
        ftgo_contracts::SCHEMA_VERSION,
        &event,
    )
    .map_err(|e| Problem::internal(e.to_string()))?
    .with_key(ticket.id.clone());
    state
        .outbox
        .send(&mut tx, &message)
        .await
        .map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)?;
    tracing::info!(ticket_id = %ticket.id, order_id = %ticket.order_id, %ready_by, "ticket accepted");
    Ok(Json(
        Ticket {
            state: TicketState::Accepted,
            ready_by: Some(ready_by),
            ..ticket
        }
        .into(),
    ))
}

fn not_acceptable(ticket: &Ticket, state: TicketState) -> Problem {
    Problem::conflict(format!(
        "ticket {} is {state}; only an AWAITING_ACCEPTANCE ticket can be accepted",
        ticket.id
    ))
    .with_extension("ticketId", ticket.id.clone())
    .with_extension("state", state.as_str())
}
