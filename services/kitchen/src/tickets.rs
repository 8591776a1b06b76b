//! Tickets: their states, their table and the queries on it. Every state change is a
//! conditional update (`… WHERE state = <the state it was read in>`), so two writers racing
//! on one ticket (a command and the accept endpoint, on PostgreSQL) cannot both win.

use ftgo_contracts::LineItem;
use keel_store::{Migration, now_ms};
use serde::Serialize;
use sqlx::{Any, Executor};

/// The kitchen's tables.
pub(crate) const MIGRATIONS: &[Migration] = &[Migration::new(
    1,
    "tickets",
    "CREATE TABLE tickets (
        id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL UNIQUE,
        restaurant_id TEXT NOT NULL,
        state TEXT NOT NULL,
        previous_state TEXT,
        line_items TEXT NOT NULL,
        ready_by TEXT,
        created_at {bigint} NOT NULL,
        updated_at {bigint} NOT NULL
    )",
)];

/// Where a ticket is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TicketState {
    /// Created by the create-order saga, which has not finished yet (a semantic lock).
    CreatePending,
    /// The order was approved; the restaurant has not accepted the ticket yet.
    AwaitingAcceptance,
    /// The restaurant accepted it and said when it will be ready.
    Accepted,
    /// The cancel-order saga runs (a semantic lock); the state before is remembered.
    CancelPending,
    /// Cancelled (rejected order, or cancelled order).
    Cancelled,
}

impl TicketState {
    /// Every state.
    pub const ALL: [TicketState; 5] = [
        TicketState::CreatePending,
        TicketState::AwaitingAcceptance,
        TicketState::Accepted,
        TicketState::CancelPending,
        TicketState::Cancelled,
    ];

    /// The API's name of the state (`AWAITING_ACCEPTANCE`).
    pub fn as_str(self) -> &'static str {
        match self {
            TicketState::CreatePending => "CREATE_PENDING",
            TicketState::AwaitingAcceptance => "AWAITING_ACCEPTANCE",
            TicketState::Accepted => "ACCEPTED",
            TicketState::CancelPending => "CANCEL_PENDING",
            TicketState::Cancelled => "CANCELLED",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for TicketState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A ticket as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ticket {
    pub(crate) id: String,
    pub(crate) order_id: String,
    pub(crate) restaurant_id: String,
    pub(crate) state: TicketState,
    /// The state before `CANCEL_PENDING` (restored by `UndoBeginCancelTicket`).
    pub(crate) previous_state: Option<TicketState>,
    pub(crate) line_items: Vec<LineItem>,
    /// RFC 3339, UTC; set on acceptance.
    pub(crate) ready_by: Option<String>,
}

/// A ticket in the HTTP API.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TicketView {
    ticket_id: String,
    order_id: String,
    restaurant_id: String,
    state: &'static str,
    line_items: Vec<LineItem>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ready_by: Option<String>,
}

impl From<Ticket> for TicketView {
    fn from(t: Ticket) -> Self {
        Self {
            ticket_id: t.id,
            order_id: t.order_id,
            restaurant_id: t.restaurant_id,
            state: t.state.as_str(),
            line_items: t.line_items,
            ready_by: t.ready_by,
        }
    }
}

type Row = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    Option<String>,
);

/// `SELECT <every column> FROM tickets <condition>`.
macro_rules! select {
    ($condition:literal) => {
        concat!(
            "SELECT id, order_id, restaurant_id, state, previous_state, line_items, ready_by \
             FROM tickets ",
            $condition
        )
    };
}

fn from_row(r: Row) -> Result<Ticket, sqlx::Error> {
    let state = |s: &str| {
        TicketState::parse(s)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown ticket state {s:?}").into()))
    };
    Ok(Ticket {
        state: state(&r.3)?,
        previous_state: r.4.as_deref().map(state).transpose()?,
        line_items: serde_json::from_str(&r.5).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        id: r.0,
        order_id: r.1,
        restaurant_id: r.2,
        ready_by: r.6,
    })
}

/// The ticket with id `id`.
pub(crate) async fn by_id<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<Ticket>, sqlx::Error> {
    sqlx::query_as::<_, Row>(select!("WHERE id = $1"))
        .bind(id)
        .fetch_optional(ex)
        .await?
        .map(from_row)
        .transpose()
}

/// The ticket of order `order_id`.
pub(crate) async fn by_order<'e>(
    ex: impl Executor<'e, Database = Any>,
    order_id: &str,
) -> Result<Option<Ticket>, sqlx::Error> {
    sqlx::query_as::<_, Row>(select!("WHERE order_id = $1"))
        .bind(order_id)
        .fetch_optional(ex)
        .await?
        .map(from_row)
        .transpose()
}

/// Stores a new ticket.
pub(crate) async fn insert<'e>(
    ex: impl Executor<'e, Database = Any>,
    t: &Ticket,
) -> Result<(), sqlx::Error> {
    let items = serde_json::to_string(&t.line_items).map_err(|e| sqlx::Error::Encode(e.into()))?;
    let now = now_ms();
    sqlx::query(
        "INSERT INTO tickets (id, order_id, restaurant_id, state, previous_state, line_items, \
         ready_by, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
    )
    .bind(&t.id)
    .bind(&t.order_id)
    .bind(&t.restaurant_id)
    .bind(t.state.as_str())
    .bind(t.previous_state.map(TicketState::as_str))
    .bind(items)
    .bind(t.ready_by.as_deref())
    .bind(now)
    .execute(ex)
    .await?;
    Ok(())
}

/// Moves ticket `id` from `from` to `to`, remembering `previous` (the state to restore on
/// undo; `None` clears it). `false` when the ticket was no longer in `from` (or is gone).
pub(crate) async fn transition<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    from: TicketState,
    to: TicketState,
    previous: Option<TicketState>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE tickets SET state = $1, previous_state = $2, updated_at = $3 \
         WHERE id = $4 AND state = $5",
    )
    .bind(to.as_str())
    .bind(previous.map(TicketState::as_str))
    .bind(now_ms())
    .bind(id)
    .bind(from.as_str())
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Accepts ticket `id` (`AWAITING_ACCEPTANCE` → `ACCEPTED`) with its ready-by time. `false`
/// when it was not awaiting acceptance (or is gone).
pub(crate) async fn accept<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    ready_by: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE tickets SET state = $1, ready_by = $2, updated_at = $3 \
         WHERE id = $4 AND state = $5",
    )
    .bind(TicketState::Accepted.as_str())
    .bind(ready_by)
    .bind(now_ms())
    .bind(id)
    .bind(TicketState::AwaitingAcceptance.as_str())
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for s in TicketState::ALL {
            assert_eq!(TicketState::parse(s.as_str()), Some(s));
        }
        assert_eq!(TicketState::parse("accepted"), None);
    }
}
