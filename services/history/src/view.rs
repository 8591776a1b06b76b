//! The view's tables and the SQL on them: one row per order (`history_orders`), upserted
//! piece by piece from the events of four services, and the view's generation
//! (`history_meta`), which names the consumer group it is fed by.
//!
//! Writes ([`upsert_skeleton`], the `set_*`/`advance_*` functions) run in the inbox's
//! transaction; each is idempotent and order-tolerant on its own (see `apply.rs`).

use ftgo_contracts::{LineItem, Money};
use keel_store::{Migration, Tx, sqlx};
use serde::Serialize;
use sqlx::{Row, any::AnyRow};

/// The view's migrations (component `order_history`).
pub(crate) const MIGRATIONS: &[Migration] = &[Migration::new(
    1,
    "order history view",
    "CREATE TABLE history_orders (
        order_id TEXT PRIMARY KEY,
        consumer_id TEXT,
        restaurant_id TEXT,
        state TEXT,
        rejection_reason TEXT,
        cancellation_failure TEXT,
        order_total {bigint},
        line_items TEXT,
        delivery_address TEXT,
        delivery_time TEXT,
        version {bigint} NOT NULL DEFAULT 0,
        created {bigint} NOT NULL DEFAULT 0,
        ticket_id TEXT,
        ticket_state TEXT,
        ready_by TEXT,
        payment_status TEXT,
        payment_rank {bigint} NOT NULL DEFAULT 0,
        payment_network TEXT,
        authorization_id TEXT,
        payment_amount {bigint},
        payment_decline_reason TEXT,
        delivery_status TEXT,
        delivery_rank {bigint} NOT NULL DEFAULT 0,
        pickup_time TEXT,
        courier_id TEXT
    );
    CREATE INDEX history_orders_by_consumer ON history_orders (consumer_id, order_id);
    CREATE INDEX history_orders_by_state ON history_orders (state);
    CREATE TABLE history_meta (
        id {bigint} PRIMARY KEY,
        generation {bigint} NOT NULL,
        rebuilt_at {bigint} NOT NULL
    );
    INSERT INTO history_meta (id, generation, rebuilt_at) VALUES (1, 1, 0);",
)];

/// The columns every read selects, in [`OrderRow::from_row`]'s order.
const COLUMNS: &str = "order_id, consumer_id, restaurant_id, state, rejection_reason, \
    cancellation_failure, order_total, line_items, delivery_address, delivery_time, version, \
    created, ticket_id, ticket_state, ready_by, payment_status, payment_network, \
    authorization_id, payment_amount, payment_decline_reason, delivery_status, pickup_time, \
    courier_id";

/// One order as the view has it: what its events said so far. Parts whose events have not
/// arrived are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderRow {
    /// The order.
    pub order_id: String,
    /// Who ordered (from `OrderCreated`, `OrderApproved` or `OrderCancelled`).
    pub consumer_id: Option<String>,
    /// From where.
    pub restaurant_id: Option<String>,
    /// The order's state as of [`version`](Self::version).
    pub state: Option<String>,
    /// Why it was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejection_reason: Option<String>,
    /// Why its last cancellation failed (it is `APPROVED` again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancellation_failure: Option<String>,
    /// Total.
    pub order_total: Option<Money>,
    /// What.
    pub line_items: Option<Vec<LineItem>>,
    /// Where to deliver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_address: Option<String>,
    /// When to deliver.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_time: Option<String>,
    /// The highest order version applied (the position consistency tokens are compared
    /// with).
    pub version: u64,
    /// Whether `OrderCreated` has been applied.
    #[serde(skip)]
    pub created: bool,
    /// The kitchen's part (`TicketAccepted`), `None` until it arrives.
    pub ticket: Option<TicketPart>,
    /// Accounting's part, `None` until a payment event arrives.
    pub payment: Option<PaymentPart>,
    /// Delivery's part, `None` until a delivery event arrives.
    pub delivery: Option<DeliveryPart>,
}

/// The kitchen's part of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketPart {
    /// The ticket.
    pub ticket_id: Option<String>,
    /// `ACCEPTED` (the only ticket event published).
    pub state: Option<String>,
    /// When the food will be ready (RFC 3339).
    pub ready_by: Option<String>,
}

/// Accounting's part of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPart {
    /// `AUTHORIZED`, `DECLINED` or `REVERSED`.
    pub status: String,
    /// The network that authorized it.
    pub network: Option<String>,
    /// Accounting's authorization.
    pub authorization_id: Option<String>,
    /// How much.
    pub amount: Option<Money>,
    /// Why it was declined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_reason: Option<String>,
}

/// Delivery's part of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryPart {
    /// `PENDING` (scheduled, no courier yet), `SCHEDULED` (courier assigned), `CANCELLED`.
    pub status: String,
    /// When to pick the food up.
    pub pickup_time: Option<String>,
    /// The courier.
    pub courier_id: Option<String>,
}

fn data_error(e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(e.to_string().into())
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl OrderRow {
    fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        let items: Option<String> = r.try_get("line_items")?;
        let line_items = items
            .map(|s| serde_json::from_str::<Vec<LineItem>>(&s))
            .transpose()
            .map_err(data_error)?;
        let ticket_id: Option<String> = r.try_get("ticket_id")?;
        let ticket_state: Option<String> = r.try_get("ticket_state")?;
        let ticket = (ticket_id.is_some() || ticket_state.is_some()).then(|| TicketPart {
            ticket_id,
            state: ticket_state,
            ready_by: r.try_get("ready_by").ok().flatten(),
        });
        let payment = r
            .try_get::<Option<String>, _>("payment_status")?
            .map(|status| -> Result<PaymentPart, sqlx::Error> {
                Ok(PaymentPart {
                    status,
                    network: r.try_get("payment_network")?,
                    authorization_id: r.try_get("authorization_id")?,
                    amount: r.try_get::<Option<i64>, _>("payment_amount")?.map(Money),
                    decline_reason: r.try_get("payment_decline_reason")?,
                })
            })
            .transpose()?;
        let delivery = r
            .try_get::<Option<String>, _>("delivery_status")?
            .map(|status| -> Result<DeliveryPart, sqlx::Error> {
                Ok(DeliveryPart {
                    status,
                    pickup_time: r.try_get("pickup_time")?,
                    courier_id: r.try_get("courier_id")?,
                })
            })
            .transpose()?;
        Ok(Self {
            order_id: r.try_get("order_id")?,
            consumer_id: r.try_get("consumer_id")?,
            restaurant_id: r.try_get("restaurant_id")?,
            state: r.try_get("state")?,
            rejection_reason: r.try_get("rejection_reason")?,
            cancellation_failure: r.try_get("cancellation_failure")?,
            order_total: r.try_get::<Option<i64>, _>("order_total")?.map(Money),
            line_items,
            delivery_address: r.try_get("delivery_address")?,
            delivery_time: r.try_get("delivery_time")?,
            version: to_u64(r.try_get("version")?),
            created: r.try_get::<i64, _>("created")? != 0,
            ticket,
            payment,
            delivery,
        })
    }
}

// ------------------------------------------------------------------------------- writes

/// Makes sure order `order_id` has a row (all parts empty), so every event can update it
/// whatever arrives first.
pub(crate) async fn upsert_skeleton(tx: &mut Tx, order_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO history_orders (order_id) VALUES ($1) ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// The facts every order event with details carries; they never change, so filling them
/// in (where still empty) is idempotent and order-independent.
#[derive(Debug)]
pub(crate) struct Facts<'a> {
    pub(crate) consumer_id: &'a str,
    pub(crate) restaurant_id: &'a str,
    pub(crate) order_total: Money,
    pub(crate) line_items: &'a [LineItem],
    pub(crate) delivery_address: Option<&'a str>,
    pub(crate) delivery_time: Option<&'a str>,
}

/// Fills in the order's facts where they are still empty.
pub(crate) async fn set_facts(
    tx: &mut Tx,
    order_id: &str,
    f: &Facts<'_>,
) -> Result<(), sqlx::Error> {
    let items = serde_json::to_string(f.line_items).map_err(data_error)?;
    sqlx::query(
        "UPDATE history_orders SET consumer_id = COALESCE(consumer_id, $1), \
         restaurant_id = COALESCE(restaurant_id, $2), order_total = COALESCE(order_total, $3), \
         line_items = COALESCE(line_items, $4), delivery_address = COALESCE(delivery_address, $5), \
         delivery_time = COALESCE(delivery_time, $6) WHERE order_id = $7",
    )
    .bind(f.consumer_id)
    .bind(f.restaurant_id)
    .bind(f.order_total.0)
    .bind(items)
    .bind(f.delivery_address.map(str::to_owned))
    .bind(f.delivery_time.map(str::to_owned))
    .bind(order_id)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Records that `OrderCreated` was applied.
pub(crate) async fn mark_created(tx: &mut Tx, order_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE history_orders SET created = 1 WHERE order_id = $1")
        .bind(order_id)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// The state an order event moves its order to.
#[derive(Debug)]
pub(crate) struct StateChange<'a> {
    pub(crate) state: &'a str,
    pub(crate) version: u64,
    pub(crate) rejection_reason: Option<&'a str>,
    pub(crate) cancellation_failure: Option<&'a str>,
}

/// Moves the order to `c.state` when `c.version` is newer than the view's; returns false
/// (nothing changed) for an older or equal version.
pub(crate) async fn advance_state(
    tx: &mut Tx,
    order_id: &str,
    c: &StateChange<'_>,
) -> Result<bool, sqlx::Error> {
    let version = i64::try_from(c.version).map_err(data_error)?;
    let n = sqlx::query(
        "UPDATE history_orders SET state = $1, version = $2, \
         rejection_reason = COALESCE($3, rejection_reason), cancellation_failure = $4 \
         WHERE order_id = $5 AND version < $6",
    )
    .bind(c.state)
    .bind(version)
    .bind(c.rejection_reason.map(str::to_owned))
    .bind(c.cancellation_failure.map(str::to_owned))
    .bind(order_id)
    .bind(version)
    .execute(tx.conn())
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Records the accepted ticket.
pub(crate) async fn set_ticket(
    tx: &mut Tx,
    order_id: &str,
    ticket_id: &str,
    state: &str,
    ready_by: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE history_orders SET ticket_id = $1, ticket_state = $2, ready_by = $3 WHERE order_id = $4",
    )
    .bind(ticket_id)
    .bind(state)
    .bind(ready_by)
    .bind(order_id)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// A payment event's contribution.
#[derive(Debug)]
pub(crate) struct PaymentChange<'a> {
    pub(crate) status: &'a str,
    /// Later statuses have higher ranks; a lower rank never overwrites a higher one.
    pub(crate) rank: i64,
    pub(crate) network: Option<&'a str>,
    pub(crate) authorization_id: Option<&'a str>,
    pub(crate) amount: Option<Money>,
    pub(crate) decline_reason: Option<&'a str>,
}

/// Fills in the payment details (where empty) and moves the status forward by rank.
pub(crate) async fn advance_payment(
    tx: &mut Tx,
    order_id: &str,
    p: &PaymentChange<'_>,
) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "UPDATE history_orders SET payment_network = COALESCE(payment_network, $1), \
         authorization_id = COALESCE(authorization_id, $2), payment_amount = COALESCE(payment_amount, $3), \
         payment_decline_reason = COALESCE(payment_decline_reason, $4) WHERE order_id = $5",
    )
    .bind(p.network.map(str::to_owned))
    .bind(p.authorization_id.map(str::to_owned))
    .bind(p.amount.map(|m| m.0))
    .bind(p.decline_reason.map(str::to_owned))
    .bind(order_id)
    .execute(tx.conn())
    .await?;
    let n = sqlx::query(
        "UPDATE history_orders SET payment_status = $1, payment_rank = $2 \
         WHERE order_id = $3 AND payment_rank < $4",
    )
    .bind(p.status)
    .bind(p.rank)
    .bind(order_id)
    .bind(p.rank)
    .execute(tx.conn())
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// A delivery event's contribution.
#[derive(Debug)]
pub(crate) struct DeliveryChange<'a> {
    pub(crate) status: &'a str,
    /// Later statuses have higher ranks; a lower rank never overwrites a higher one.
    pub(crate) rank: i64,
    pub(crate) pickup_time: Option<&'a str>,
    pub(crate) courier_id: Option<&'a str>,
}

/// Fills in the delivery details (where empty) and moves the status forward by rank.
pub(crate) async fn advance_delivery(
    tx: &mut Tx,
    order_id: &str,
    d: &DeliveryChange<'_>,
) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "UPDATE history_orders SET pickup_time = COALESCE(pickup_time, $1), \
         courier_id = COALESCE(courier_id, $2) WHERE order_id = $3",
    )
    .bind(d.pickup_time.map(str::to_owned))
    .bind(d.courier_id.map(str::to_owned))
    .bind(order_id)
    .execute(tx.conn())
    .await?;
    let n = sqlx::query(
        "UPDATE history_orders SET delivery_status = $1, delivery_rank = $2 \
         WHERE order_id = $3 AND delivery_rank < $4",
    )
    .bind(d.status)
    .bind(d.rank)
    .bind(order_id)
    .bind(d.rank)
    .execute(tx.conn())
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The view's generation (it names the consumer group feeding the view).
pub(crate) async fn generation<'e, E>(conn: E) -> Result<u64, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let (g,): (i64,) = sqlx::query_as("SELECT generation FROM history_meta WHERE id = 1")
        .fetch_one(conn)
        .await?;
    Ok(to_u64(g))
}

/// Empties the view, forgets which messages the inbox of every generation saw, and starts
/// generation + 1; returns it.
pub(crate) async fn reset(tx: &mut Tx, inbox_prefix: &str) -> Result<u64, sqlx::Error> {
    sqlx::query("DELETE FROM history_orders")
        .execute(tx.conn())
        .await?;
    sqlx::query("DELETE FROM keel_inbox WHERE consumer LIKE $1")
        .bind(format!("{inbox_prefix}%"))
        .execute(tx.conn())
        .await?;
    sqlx::query(
        "UPDATE history_meta SET generation = generation + 1, rebuilt_at = $1 WHERE id = 1",
    )
    .bind(keel_store::now_ms())
    .execute(tx.conn())
    .await?;
    generation(tx.conn()).await
}

// -------------------------------------------------------------------------------- reads

/// One order (`None`: no order event of it has arrived yet).
pub(crate) async fn get<'e, E>(conn: E, order_id: &str) -> Result<Option<OrderRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {COLUMNS} FROM history_orders WHERE order_id = $1 AND version > 0");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(order_id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(OrderRow::from_row)
        .transpose()
}

/// Where order `order_id` is in the view: its version and whether `OrderCreated` arrived.
pub(crate) async fn position<'e, E>(
    conn: E,
    order_id: &str,
) -> Result<Option<(u64, bool)>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT version, created FROM history_orders WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(v, c)| (to_u64(v), c != 0)))
}

/// A page of a consumer's orders.
#[derive(Debug)]
pub(crate) struct ListQuery {
    pub(crate) consumer_id: String,
    pub(crate) state: Option<String>,
    pub(crate) restaurant_id: Option<String>,
    /// Return orders whose id sorts before this one (the previous page's last).
    pub(crate) before: Option<String>,
    pub(crate) limit: u32,
}

/// Orders of `q.consumer_id`, newest first (order ids sort by creation time), at most
/// `q.limit + 1` of them (the extra one tells the caller there is a next page).
pub(crate) async fn list<'e, E>(conn: E, q: &ListQuery) -> Result<Vec<OrderRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    // Only fixed fragments are concatenated; every value is bound.
    let mut sql =
        format!("SELECT {COLUMNS} FROM history_orders WHERE consumer_id = $1 AND version > 0");
    let mut n = 1;
    let mut next = |frag: &str, sql: &mut String| {
        n += 1;
        sql.push_str(&frag.replace('?', &format!("${n}")));
    };
    if q.state.is_some() {
        next(" AND state = ?", &mut sql);
    }
    if q.restaurant_id.is_some() {
        next(" AND restaurant_id = ?", &mut sql);
    }
    if q.before.is_some() {
        next(" AND order_id < ?", &mut sql);
    }
    next(" ORDER BY order_id DESC LIMIT ?", &mut sql);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(q.consumer_id.clone());
    for v in [&q.state, &q.restaurant_id, &q.before]
        .into_iter()
        .flatten()
    {
        query = query.bind(v.clone());
    }
    query
        .bind(i64::from(q.limit) + 1)
        .fetch_all(conn)
        .await?
        .iter()
        .map(OrderRow::from_row)
        .collect()
}

/// Dashboard figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Dashboard {
    /// Orders the view knows (an order event of theirs arrived).
    pub orders: u64,
    /// Orders per state (every state is listed, zero included).
    pub by_state: std::collections::BTreeMap<String, u64>,
    /// Sum of the totals of orders that are approved and not cancelled (`APPROVED` and
    /// `CANCEL_PENDING`, whose payment still stands).
    pub revenue: Money,
    /// Rows that only other services' events have created so far (their order events are
    /// still on the way).
    pub awaiting_order_events: u64,
}

/// Counts by state and revenue, optionally of one restaurant.
pub(crate) async fn dashboard<'e, E>(
    conn: E,
    restaurant_id: Option<&str>,
) -> Result<Dashboard, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any> + Copy,
{
    use ftgo_contracts::order_states as s;
    let rows: Vec<(Option<String>, i64, Option<i64>)> = match restaurant_id {
        None => {
            sqlx::query_as(
                "SELECT state, COUNT(*), SUM(order_total) FROM history_orders GROUP BY state",
            )
            .fetch_all(conn)
            .await?
        }
        Some(r) => {
            sqlx::query_as(
                "SELECT state, COUNT(*), SUM(order_total) FROM history_orders \
             WHERE restaurant_id = $1 GROUP BY state",
            )
            .bind(r)
            .fetch_all(conn)
            .await?
        }
    };
    let mut by_state: std::collections::BTreeMap<String, u64> = [
        s::APPROVAL_PENDING,
        s::APPROVED,
        s::REJECTED,
        s::CANCEL_PENDING,
        s::CANCELLED,
    ]
    .into_iter()
    .map(|k| (k.to_owned(), 0))
    .collect();
    let mut d = Dashboard {
        orders: 0,
        by_state: std::collections::BTreeMap::new(),
        revenue: Money(0),
        awaiting_order_events: 0,
    };
    for (state, count, sum) in rows {
        let count = to_u64(count);
        match state {
            None => d.awaiting_order_events += count,
            Some(state) => {
                if state == s::APPROVED || state == s::CANCEL_PENDING {
                    d.revenue = Money(d.revenue.0 + sum.unwrap_or(0));
                }
                d.orders += count;
                *by_state.entry(state).or_default() += count;
            }
        }
    }
    d.by_state = by_state;
    Ok(d)
}
