//! Stock follows orders: an approved order takes its items' units, a cancelled one gives
//! back exactly what it took. Each change bumps the restaurant's stock version and is
//! announced with the new absolute values (`MenuStockChanged`).
//!
//! Besides the inbox (one effect per message id), `order_stock` remembers what happened to
//! each order, so a second `OrderApproved` for an order (a republished event with another
//! id) takes nothing, a cancellation restores only what the approval took, and a
//! cancellation seen before its approval keeps that approval from taking anything.

use std::collections::BTreeMap;

use ftgo_contracts::{
    SCHEMA_VERSION, destinations,
    events::{self, MenuStock, MenuStockChanged, OrderDetails},
};
use keel_messaging::{HandlerError, Message, Outbox};
use keel_store::{Tx, now_ms, sqlx};

const APPROVED: &str = "APPROVED";
const CANCELLED: &str = "CANCELLED";

/// Handles one message of `order.events` inside the inbox's transaction.
pub(crate) async fn on_order_event(
    mut tx: Tx,
    outbox: &Outbox,
    message: &Message,
) -> Result<Tx, HandlerError> {
    let approved = match message.message_type() {
        Some(events::ORDER_APPROVED) => true,
        Some(events::ORDER_CANCELLED) => false,
        _ => return Ok(tx), // other order events do not concern stock
    };
    // A payload that does not deserialize can never succeed: dead-letter it.
    let order: OrderDetails = message.payload_as().map_err(HandlerError::reject)?;
    let changed = if approved {
        take(&mut tx, &order).await
    } else {
        give_back(&mut tx, &order).await
    }
    .map_err(HandlerError::retry)?;
    if !changed.is_empty() {
        announce(&mut tx, outbox, &order.restaurant_id, changed).await?;
    }
    Ok(tx)
}

async fn order_state(tx: &mut Tx, order_id: &str) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT state FROM order_stock WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(tx.conn())
            .await?;
    Ok(row.map(|r| r.0))
}

/// Serializes stock changes of one restaurant (a row lock on PostgreSQL; on SQLite the
/// transaction already holds the write lock).
async fn lock_restaurant(tx: &mut Tx, restaurant_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE restaurants SET stock_version = stock_version WHERE id = $1")
        .bind(restaurant_id)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Takes the approved order's units (never below 0; unlimited items are untouched) and
/// returns the items whose stock changed, with their new stock.
async fn take(tx: &mut Tx, order: &OrderDetails) -> Result<Vec<MenuStock>, sqlx::Error> {
    if let Some(state) = order_state(tx, &order.order_id).await? {
        tracing::debug!(order_id = %order.order_id, %state, "approval already accounted for");
        return Ok(Vec::new());
    }
    sqlx::query(
        "INSERT INTO order_stock (order_id, restaurant_id, state, updated_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&order.order_id)
    .bind(&order.restaurant_id)
    .bind(APPROVED)
    .bind(now_ms())
    .execute(tx.conn())
    .await?;
    lock_restaurant(tx, &order.restaurant_id).await?;
    let mut wanted: BTreeMap<&str, u64> = BTreeMap::new();
    for line in &order.line_items {
        *wanted.entry(line.menu_item_id.as_str()).or_default() += u64::from(line.quantity);
    }
    let mut changed = Vec::new();
    for (item, quantity) in wanted {
        let stock: Option<(Option<i64>,)> = sqlx::query_as(
            "SELECT stock FROM menu_items WHERE restaurant_id = $1 AND item_id = $2",
        )
        .bind(&order.restaurant_id)
        .bind(item)
        .fetch_optional(tx.conn())
        .await?;
        let Some((Some(stock),)) = stock else {
            continue; // unknown (nothing to take) or unlimited
        };
        let quantity = i64::try_from(quantity).unwrap_or(i64::MAX);
        let taken = stock.min(quantity).max(0);
        if taken < quantity {
            tracing::warn!(order_id = %order.order_id, restaurant_id = %order.restaurant_id,
                item, stock, quantity, "approved order wants more than is left; stock ends at 0");
        }
        if taken == 0 {
            continue;
        }
        sqlx::query(
            "UPDATE menu_items SET stock = stock - $1 WHERE restaurant_id = $2 AND item_id = $3",
        )
        .bind(taken)
        .bind(&order.restaurant_id)
        .bind(item)
        .execute(tx.conn())
        .await?;
        sqlx::query("INSERT INTO order_stock_items (order_id, item_id, taken) VALUES ($1, $2, $3)")
            .bind(&order.order_id)
            .bind(item)
            .bind(taken)
            .execute(tx.conn())
            .await?;
        changed.push(MenuStock {
            menu_item_id: item.to_owned(),
            stock: u32::try_from(stock - taken).unwrap_or(0),
        });
    }
    Ok(changed)
}

/// Gives back what the cancelled order took and returns the items whose stock changed.
async fn give_back(tx: &mut Tx, order: &OrderDetails) -> Result<Vec<MenuStock>, sqlx::Error> {
    match order_state(tx, &order.order_id).await?.as_deref() {
        Some(APPROVED) => {}
        Some(_) => {
            tracing::debug!(order_id = %order.order_id, "cancellation already accounted for");
            return Ok(Vec::new());
        }
        None => {
            // Cancelled before its approval was seen: remember it, so the approval (should
            // it still come) takes nothing.
            sqlx::query(
                "INSERT INTO order_stock (order_id, restaurant_id, state, updated_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&order.order_id)
            .bind(&order.restaurant_id)
            .bind(CANCELLED)
            .bind(now_ms())
            .execute(tx.conn())
            .await?;
            return Ok(Vec::new());
        }
    }
    sqlx::query("UPDATE order_stock SET state = $1, updated_at = $2 WHERE order_id = $3")
        .bind(CANCELLED)
        .bind(now_ms())
        .bind(&order.order_id)
        .execute(tx.conn())
        .await?;
    lock_restaurant(tx, &order.restaurant_id).await?;
    let taken: Vec<(String, i64)> = sqlx::query_as(
        "SELECT item_id, taken FROM order_stock_items WHERE order_id = $1 ORDER BY item_id",
    )
    .bind(&order.order_id)
    .fetch_all(tx.conn())
    .await?;
    let mut changed = Vec::new();
    for (item, units) in taken {
        sqlx::query(
            "UPDATE menu_items SET stock = stock + $1 \
             WHERE restaurant_id = $2 AND item_id = $3 AND stock IS NOT NULL",
        )
        .bind(units)
        .bind(&order.restaurant_id)
        .bind(&item)
        .execute(tx.conn())
        .await?;
        let now: Option<(Option<i64>,)> = sqlx::query_as(
            "SELECT stock FROM menu_items WHERE restaurant_id = $1 AND item_id = $2",
        )
        .bind(&order.restaurant_id)
        .bind(&item)
        .fetch_optional(tx.conn())
        .await?;
        if let Some((Some(stock),)) = now {
            changed.push(MenuStock {
                menu_item_id: item,
                stock: u32::try_from(stock).unwrap_or(u32::MAX),
            });
        }
    }
    Ok(changed)
}

/// Bumps the restaurant's stock version and puts `MenuStockChanged` in the outbox.
async fn announce(
    tx: &mut Tx,
    outbox: &Outbox,
    restaurant_id: &str,
    stock: Vec<MenuStock>,
) -> Result<(), HandlerError> {
    sqlx::query("UPDATE restaurants SET stock_version = stock_version + 1 WHERE id = $1")
        .bind(restaurant_id)
        .execute(tx.conn())
        .await
        .map_err(HandlerError::retry)?;
    let (version,): (i64,) = sqlx::query_as("SELECT stock_version FROM restaurants WHERE id = $1")
        .bind(restaurant_id)
        .fetch_one(tx.conn())
        .await
        .map_err(HandlerError::retry)?;
    let event = MenuStockChanged {
        restaurant_id: restaurant_id.to_owned(),
        stock,
        version: u64::try_from(version).unwrap_or(0),
    };
    let message = Message::typed(
        destinations::RESTAURANT_EVENTS,
        events::MENU_STOCK_CHANGED,
        SCHEMA_VERSION,
        &event,
    )
    .map_err(HandlerError::retry)?
    .with_key(restaurant_id);
    outbox
        .send(tx, &message)
        .await
        .map_err(HandlerError::retry)?;
    tracing::info!(%restaurant_id, version, items = event.stock.len(), "menu stock changed");
    Ok(())
}
