//! Deliveries and couriers: their tables and the queries on them. Every state change of a
//! delivery is a conditional update (`… WHERE state = <the state it was read in>`), so two
//! writers racing on one delivery (on PostgreSQL) cannot both win.

use ftgo_contracts::delivery_states;
use keel_store::{Migration, now_ms};
use serde::Serialize;
use sqlx::{Any, Executor};

/// The delivery service's tables.
pub(crate) const MIGRATIONS: &[Migration] = &[Migration::new(
    1,
    "deliveries and couriers",
    "CREATE TABLE couriers (
        id TEXT PRIMARY KEY,
        available {bigint} NOT NULL,
        created_at {bigint} NOT NULL,
        updated_at {bigint} NOT NULL
    );
    CREATE TABLE deliveries (
        order_id TEXT PRIMARY KEY,
        restaurant_id TEXT NOT NULL,
        ticket_id TEXT,
        pickup_time TEXT,
        state TEXT NOT NULL,
        courier_id TEXT,
        created_at {bigint} NOT NULL,
        updated_at {bigint} NOT NULL
    );
    CREATE INDEX deliveries_by_state ON deliveries (state, created_at);
    CREATE INDEX deliveries_by_courier ON deliveries (courier_id, state)",
)];

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryState {
    /// Scheduled for an accepted ticket; no courier was available yet.
    Pending,
    /// A courier is assigned.
    Scheduled,
    /// Cancelled with its order (also the tombstone of an order cancelled before its
    /// ticket's acceptance reached the delivery service).
    Cancelled,
}

impl DeliveryState {
    /// Every state.
    pub const ALL: [DeliveryState; 3] = [
        DeliveryState::Pending,
        DeliveryState::Scheduled,
        DeliveryState::Cancelled,
    ];

    /// The API's name of the state (`ftgo_contracts::delivery_states`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => delivery_states::PENDING,
            DeliveryState::Scheduled => delivery_states::SCHEDULED,
            DeliveryState::Cancelled => delivery_states::CANCELLED,
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delivery as stored: one per order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Delivery {
    pub(crate) order_id: String,
    pub(crate) restaurant_id: String,
    /// The accepted ticket; `None` for a tombstone whose ticket was never seen accepted.
    pub(crate) ticket_id: Option<String>,
    /// RFC 3339, UTC: the ticket's `readyBy`. `None` like `ticket_id`.
    pub(crate) pickup_time: Option<String>,
    pub(crate) state: DeliveryState,
    /// The assigned courier (kept after a cancellation, for the record).
    pub(crate) courier_id: Option<String>,
}

/// A delivery in the HTTP API.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeliveryView {
    order_id: String,
    restaurant_id: String,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pickup_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    courier_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ticket_id: Option<String>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        Self {
            order_id: d.order_id,
            restaurant_id: d.restaurant_id,
            state: d.state.as_str(),
            pickup_time: d.pickup_time,
            courier_id: d.courier_id,
            ticket_id: d.ticket_id,
        }
    }
}

/// A courier in the HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CourierView {
    pub(crate) courier_id: String,
    pub(crate) available: bool,
    /// The orders of its `SCHEDULED` deliveries, oldest first.
    pub(crate) active_deliveries: Vec<String>,
}

type Row = (
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
);

/// `SELECT <every column> FROM deliveries <condition>`.
macro_rules! select {
    ($condition:literal) => {
        concat!(
            "SELECT order_id, restaurant_id, ticket_id, pickup_time, state, courier_id \
             FROM deliveries ",
            $condition
        )
    };
}

fn from_row(r: Row) -> Result<Delivery, sqlx::Error> {
    let state = DeliveryState::parse(&r.4)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown delivery state {:?}", r.4).into()))?;
    Ok(Delivery {
        order_id: r.0,
        restaurant_id: r.1,
        ticket_id: r.2,
        pickup_time: r.3,
        state,
        courier_id: r.5,
    })
}

/// The delivery of order `order_id`.
pub(crate) async fn delivery<'e>(
    ex: impl Executor<'e, Database = Any>,
    order_id: &str,
) -> Result<Option<Delivery>, sqlx::Error> {
    sqlx::query_as::<_, Row>(select!("WHERE order_id = $1"))
        .bind(order_id)
        .fetch_optional(ex)
        .await?
        .map(from_row)
        .transpose()
}

/// Stores a new delivery.
pub(crate) async fn insert<'e>(
    ex: impl Executor<'e, Database = Any>,
    d: &Delivery,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO deliveries (order_id, restaurant_id, ticket_id, pickup_time, state, \
         courier_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
    )
    .bind(&d.order_id)
    .bind(&d.restaurant_id)
    .bind(d.ticket_id.as_deref())
    .bind(d.pickup_time.as_deref())
    .bind(d.state.as_str())
    .bind(d.courier_id.as_deref())
    .bind(now)
    .execute(ex)
    .await?;
    Ok(())
}

/// Records the accepted ticket on a tombstone (a delivery cancelled before its ticket's
/// acceptance arrived). `false` when there was nothing to fill in.
pub(crate) async fn fill_tombstone<'e>(
    ex: impl Executor<'e, Database = Any>,
    order_id: &str,
    ticket_id: &str,
    pickup_time: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE deliveries SET ticket_id = $1, pickup_time = $2, updated_at = $3 \
         WHERE order_id = $4 AND state = $5 AND ticket_id IS NULL",
    )
    .bind(ticket_id)
    .bind(pickup_time)
    .bind(now_ms())
    .bind(order_id)
    .bind(DeliveryState::Cancelled.as_str())
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Assigns `courier_id` to the `PENDING` delivery of `order_id` (→ `SCHEDULED`). `false`
/// when it was no longer pending.
pub(crate) async fn assign<'e>(
    ex: impl Executor<'e, Database = Any>,
    order_id: &str,
    courier_id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE deliveries SET state = $1, courier_id = $2, updated_at = $3 \
         WHERE order_id = $4 AND state = $5",
    )
    .bind(DeliveryState::Scheduled.as_str())
    .bind(courier_id)
    .bind(now_ms())
    .bind(order_id)
    .bind(DeliveryState::Pending.as_str())
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Cancels the delivery of `order_id` if it is still `from`. `false` otherwise.
pub(crate) async fn cancel<'e>(
    ex: impl Executor<'e, Database = Any>,
    order_id: &str,
    from: DeliveryState,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE deliveries SET state = $1, updated_at = $2 WHERE order_id = $3 AND state = $4",
    )
    .bind(DeliveryState::Cancelled.as_str())
    .bind(now_ms())
    .bind(order_id)
    .bind(from.as_str())
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The available courier with the fewest `SCHEDULED` deliveries; ties go to the smallest
/// courier id.
pub(crate) async fn least_busy_available_courier<'e>(
    ex: impl Executor<'e, Database = Any>,
) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT c.id FROM couriers c \
         LEFT JOIN deliveries d ON d.courier_id = c.id AND d.state = $1 \
         WHERE c.available = 1 \
         GROUP BY c.id ORDER BY COUNT(d.order_id) ASC, c.id ASC LIMIT 1",
    )
    .bind(DeliveryState::Scheduled.as_str())
    .fetch_optional(ex)
    .await?;
    Ok(row.map(|r| r.0))
}

/// Up to `limit` orders whose deliveries wait for a courier, oldest first.
pub(crate) async fn pending<'e>(
    ex: impl Executor<'e, Database = Any>,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT order_id FROM deliveries WHERE state = $1 \
         ORDER BY created_at ASC, order_id ASC LIMIT $2",
    )
    .bind(DeliveryState::Pending.as_str())
    .bind(limit)
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// How many deliveries wait for a courier, and how many couriers are available.
pub(crate) async fn gauges<'e>(
    ex: impl Executor<'e, Database = Any>,
) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM deliveries WHERE state = $1), \
                (SELECT COUNT(*) FROM couriers WHERE available = 1)",
    )
    .bind(DeliveryState::Pending.as_str())
    .fetch_one(ex)
    .await
}

/// Whether courier `id` exists and is available.
pub(crate) async fn courier_available<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
) -> Result<Option<bool>, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT available FROM couriers WHERE id = $1")
        .bind(id)
        .fetch_optional(ex)
        .await?;
    Ok(row.map(|r| r.0 == 1))
}

/// Creates courier `id` with `available`.
pub(crate) async fn insert_courier<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    available: bool,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO couriers (id, available, created_at, updated_at) VALUES ($1, $2, $3, $3)",
    )
    .bind(id)
    .bind(i64::from(available))
    .bind(now)
    .execute(ex)
    .await?;
    Ok(())
}

/// Sets courier `id`'s availability.
pub(crate) async fn set_available<'e>(
    ex: impl Executor<'e, Database = Any>,
    id: &str,
    available: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE couriers SET available = $1, updated_at = $2 WHERE id = $3")
        .bind(i64::from(available))
        .bind(now_ms())
        .bind(id)
        .execute(ex)
        .await?;
    Ok(())
}

/// Every courier (or only courier `id`), by id, with its active deliveries.
pub(crate) async fn couriers<'e, E>(
    ex: E,
    id: Option<&str>,
) -> Result<Vec<CourierView>, sqlx::Error>
where
    E: Executor<'e, Database = Any>,
{
    // One query: couriers left-joined to their SCHEDULED deliveries.
    let rows: Vec<(String, i64, Option<String>)> = sqlx::query_as(
        "SELECT c.id, c.available, d.order_id FROM couriers c \
         LEFT JOIN deliveries d ON d.courier_id = c.id AND d.state = $1 \
         WHERE ($2 = '' OR c.id = $2) \
         ORDER BY c.id ASC, d.created_at ASC, d.order_id ASC",
    )
    .bind(DeliveryState::Scheduled.as_str())
    .bind(id.unwrap_or(""))
    .fetch_all(ex)
    .await?;
    let mut out: Vec<CourierView> = Vec::new();
    for (courier_id, available, order_id) in rows {
        if out.last().is_none_or(|c| c.courier_id != courier_id) {
            out.push(CourierView {
                courier_id,
                available: available == 1,
                active_deliveries: Vec::new(),
            });
        }
        if let (Some(order_id), Some(c)) = (order_id, out.last_mut()) {
            c.active_deliveries.push(order_id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip_and_match_the_contract() {
        for s in DeliveryState::ALL {
            assert_eq!(DeliveryState::parse(s.as_str()), Some(s));
        }
        assert_eq!(DeliveryState::Pending.as_str(), "PENDING");
        assert_eq!(DeliveryState::Scheduled.as_str(), "SCHEDULED");
        assert_eq!(DeliveryState::Cancelled.as_str(), "CANCELLED");
        assert_eq!(DeliveryState::parse("pending"), None);
    }
}
