//! The order service's tables — orders, and the replica of restaurants and menus — and
//! the SQL on them. Every function takes the caller's transaction: the HTTP handlers, the
//! saga steps and the replica consumer each decide what commits together.

use std::collections::BTreeMap;

use ftgo_contracts::{LineItem, Money};
use keel_store::{Migration, Tx, now_ms, sqlx};
use sqlx::Row;

/// The order service's migrations (component `order`).
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration::new(
        1,
        "orders and the restaurant replica",
        "CREATE TABLE orders (
        id TEXT PRIMARY KEY,
        consumer_id TEXT NOT NULL,
        restaurant_id TEXT NOT NULL,
        state TEXT NOT NULL,
        rejection_reason TEXT,
        order_total {bigint} NOT NULL,
        line_items TEXT NOT NULL,
        delivery_address TEXT,
        delivery_time TEXT,
        ticket_id TEXT,
        authorization_id TEXT,
        created_at {bigint} NOT NULL,
        updated_at {bigint} NOT NULL
    );
    CREATE TABLE restaurants (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        stock_version {bigint} NOT NULL
    );
    CREATE TABLE menu_items (
        restaurant_id TEXT NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        price {bigint} NOT NULL,
        stock {bigint},
        PRIMARY KEY (restaurant_id, id)
    );",
    ),
    Migration::new(
        2,
        "order versions",
        // Every state change increases an order's version; its events carry it and the
        // consistency tokens name it. Existing orders get the version their state implies.
        "ALTER TABLE orders ADD COLUMN version {bigint} NOT NULL DEFAULT 1;
    UPDATE orders SET version = CASE state
        WHEN 'APPROVAL_PENDING' THEN 1
        WHEN 'APPROVED' THEN 2
        WHEN 'REJECTED' THEN 2
        WHEN 'CANCEL_PENDING' THEN 3
        ELSE 4 END;",
    ),
];

/// An order as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Order {
    pub(crate) id: String,
    pub(crate) consumer_id: String,
    pub(crate) restaurant_id: String,
    pub(crate) state: String,
    pub(crate) rejection_reason: Option<String>,
    pub(crate) order_total: Money,
    pub(crate) line_items: Vec<LineItem>,
    pub(crate) delivery_address: Option<String>,
    pub(crate) delivery_time: Option<String>,
    pub(crate) ticket_id: Option<String>,
    pub(crate) authorization_id: Option<String>,
    /// 1 when created; one more after every state change.
    pub(crate) version: u64,
}

/// A menu item of the replica.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MenuItem {
    pub(crate) name: String,
    pub(crate) price: Money,
    /// Units left; `None`: unlimited.
    pub(crate) stock: Option<i64>,
}

fn data_error(e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(e.to_string().into())
}

pub(crate) async fn insert_order(tx: &mut Tx, o: &Order) -> Result<(), sqlx::Error> {
    let now = now_ms();
    let items = serde_json::to_string(&o.line_items).map_err(data_error)?;
    sqlx::query(
        "INSERT INTO orders (id, consumer_id, restaurant_id, state, rejection_reason, order_total, \
         line_items, delivery_address, delivery_time, ticket_id, authorization_id, created_at, updated_at, version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&o.id)
    .bind(&o.consumer_id)
    .bind(&o.restaurant_id)
    .bind(&o.state)
    .bind(o.rejection_reason.clone())
    .bind(o.order_total.0)
    .bind(items)
    .bind(o.delivery_address.clone())
    .bind(o.delivery_time.clone())
    .bind(o.ticket_id.clone())
    .bind(o.authorization_id.clone())
    .bind(now)
    .bind(now)
    .bind(i64::try_from(o.version).map_err(data_error)?)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// The order `id`, read on `conn` (a transaction's connection, or the pool).
pub(crate) async fn get_order<'e, E>(conn: E, id: &str) -> Result<Option<Order>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT id, consumer_id, restaurant_id, state, rejection_reason, order_total, line_items, \
         delivery_address, delivery_time, ticket_id, authorization_id, version FROM orders WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let items: String = row.try_get("line_items")?;
    Ok(Some(Order {
        id: row.try_get("id")?,
        consumer_id: row.try_get("consumer_id")?,
        restaurant_id: row.try_get("restaurant_id")?,
        state: row.try_get("state")?,
        rejection_reason: row.try_get("rejection_reason")?,
        order_total: Money(row.try_get("order_total")?),
        line_items: serde_json::from_str(&items).map_err(data_error)?,
        delivery_address: row.try_get("delivery_address")?,
        delivery_time: row.try_get("delivery_time")?,
        ticket_id: row.try_get("ticket_id")?,
        authorization_id: row.try_get("authorization_id")?,
        version: u64::try_from(row.try_get::<i64, _>("version")?).map_err(data_error)?,
    }))
}

/// The version of order `id` (0 when unknown), read in the caller's transaction: right
/// after a state change it is the version that change's event carries.
pub(crate) async fn version_of(tx: &mut Tx, id: &str) -> Result<u64, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT version FROM orders WHERE id = $1")
        .bind(id)
        .fetch_optional(tx.conn())
        .await?;
    Ok(row.map_or(0, |(v,)| u64::try_from(v).unwrap_or(0)))
}

/// Moves the order from `from` to `to`; false when it was not in `from` (or is unknown).
/// On PostgreSQL the row lock makes a concurrent second move see the first one's result.
pub(crate) async fn transition(
    tx: &mut Tx,
    id: &str,
    from: &str,
    to: &str,
) -> Result<bool, sqlx::Error> {
    let n =
        sqlx::query("UPDATE orders SET state = $1, updated_at = $2, version = version + 1 WHERE id = $3 AND state = $4")
            .bind(to)
            .bind(now_ms())
            .bind(id)
            .bind(from)
            .execute(tx.conn())
            .await?
            .rows_affected();
    Ok(n == 1)
}

/// APPROVAL_PENDING → REJECTED with `reason`; false when the order was not pending.
pub(crate) async fn reject(
    tx: &mut Tx,
    id: &str,
    reason: &str,
    ticket_id: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE orders SET state = 'REJECTED', rejection_reason = $1, ticket_id = $2, updated_at = $3, \
         version = version + 1 \
         WHERE id = $4 AND state = 'APPROVAL_PENDING'",
    )
    .bind(reason)
    .bind(ticket_id.map(str::to_owned))
    .bind(now_ms())
    .bind(id)
    .execute(tx.conn())
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// APPROVAL_PENDING → APPROVED with the ticket and authorization; false when the order was
/// not pending.
pub(crate) async fn approve(
    tx: &mut Tx,
    id: &str,
    ticket_id: Option<&str>,
    authorization_id: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE orders SET state = 'APPROVED', ticket_id = $1, authorization_id = $2, updated_at = $3, \
         version = version + 1 \
         WHERE id = $4 AND state = 'APPROVAL_PENDING'",
    )
    .bind(ticket_id.map(str::to_owned))
    .bind(authorization_id.map(str::to_owned))
    .bind(now_ms())
    .bind(id)
    .execute(tx.conn())
    .await?
    .rows_affected();
    Ok(n == 1)
}

pub(crate) async fn restaurant_exists(tx: &mut Tx, id: &str) -> Result<bool, sqlx::Error> {
    let row: Option<(String,)> = sqlx::query_as("SELECT id FROM restaurants WHERE id = $1")
        .bind(id)
        .fetch_optional(tx.conn())
        .await?;
    Ok(row.is_some())
}

/// The replica's menu of a restaurant, by item id.
pub(crate) async fn menu(
    tx: &mut Tx,
    restaurant_id: &str,
) -> Result<BTreeMap<String, MenuItem>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, name, price, stock FROM menu_items WHERE restaurant_id = $1 ORDER BY id",
    )
    .bind(restaurant_id)
    .fetch_all(tx.conn())
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("id")?,
                MenuItem {
                    name: r.try_get("name")?,
                    price: Money(r.try_get("price")?),
                    stock: r.try_get("stock")?,
                },
            ))
        })
        .collect()
}

/// Creates or refreshes a restaurant and its menu in the replica. Names and prices are
/// taken from the event; stock only while no `MenuStockChanged` has been applied (stock
/// version 0), so a late copy of the creation event cannot roll stock back.
pub(crate) async fn upsert_restaurant(
    tx: &mut Tx,
    e: &ftgo_contracts::events::RestaurantCreated,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO restaurants (id, name, stock_version) VALUES ($1, $2, 0) \
         ON CONFLICT (id) DO UPDATE SET name = excluded.name",
    )
    .bind(&e.restaurant_id)
    .bind(&e.name)
    .execute(tx.conn())
    .await?;
    let (version,): (i64,) = sqlx::query_as("SELECT stock_version FROM restaurants WHERE id = $1")
        .bind(&e.restaurant_id)
        .fetch_one(tx.conn())
        .await?;
    for item in &e.menu {
        let stock = item.stock.map(i64::from);
        let sql = if version == 0 {
            "INSERT INTO menu_items (restaurant_id, id, name, price, stock) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (restaurant_id, id) DO UPDATE SET name = excluded.name, price = excluded.price, \
             stock = excluded.stock"
        } else {
            "INSERT INTO menu_items (restaurant_id, id, name, price, stock) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (restaurant_id, id) DO UPDATE SET name = excluded.name, price = excluded.price"
        };
        sqlx::query(sql)
            .bind(&e.restaurant_id)
            .bind(&item.id)
            .bind(&item.name)
            .bind(item.price.0)
            .bind(stock)
            .execute(tx.conn())
            .await?;
    }
    Ok(())
}

/// What applying a stock change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StockUpdate {
    /// Newer than the replica's version: applied.
    Applied,
    /// Not newer than the replica's version: ignored.
    Stale,
    /// The restaurant is not in the replica: ignored.
    UnknownRestaurant,
}

/// Applies `e` when its version is newer than the replica's.
pub(crate) async fn apply_stock(
    tx: &mut Tx,
    e: &ftgo_contracts::events::MenuStockChanged,
) -> Result<StockUpdate, sqlx::Error> {
    let version = i64::try_from(e.version).map_err(data_error)?;
    let n = sqlx::query(
        "UPDATE restaurants SET stock_version = $1 WHERE id = $2 AND stock_version < $3",
    )
    .bind(version)
    .bind(&e.restaurant_id)
    .bind(version)
    .execute(tx.conn())
    .await?
    .rows_affected();
    if n == 0 {
        return Ok(if restaurant_exists(tx, &e.restaurant_id).await? {
            StockUpdate::Stale
        } else {
            StockUpdate::UnknownRestaurant
        });
    }
    for s in &e.stock {
        sqlx::query("UPDATE menu_items SET stock = $1 WHERE restaurant_id = $2 AND id = $3")
            .bind(i64::from(s.stock))
            .bind(&e.restaurant_id)
            .bind(&s.menu_item_id)
            .execute(tx.conn())
            .await?;
    }
    Ok(StockUpdate::Applied)
}
