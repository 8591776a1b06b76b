//! The whole messaging path in one program, as two services would run it: the order
//! service writes an order and its `OrderCreated` event in one transaction (outbox); its
//! relay publishes the event; the kitchen service consumes it through its inbox, so the
//! ticket is written exactly once even when the event arrives twice.
//!
//! ```sh
//! cargo run -p keel-bus-sqlite --example order_flow                 # SQLite files in a temp dir
//! cargo run -p keel-bus-sqlite --example order_flow -- postgres://postgres@127.0.0.1/test
//! ```
//!
//! The optional argument is the order and kitchen services' store URL (in production each
//! service has its own database or schema). `docs/messaging.md` shows this file.

use std::{error::Error, sync::Arc, time::Duration};

use keel_bus_sqlite::SqliteBus;
use keel_messaging::{Bus, HandlerError, Inbox, Message, Outbox, Subscription};
use keel_store::{Migration, Store};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The event, a versioned wire type.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderCreated {
    order_id: String,
    total_cents: i64,
}

const ORDER_MIGRATIONS: &[Migration] = &[Migration::new(
    1,
    "orders",
    "CREATE TABLE orders (id TEXT PRIMARY KEY, total_cents {bigint} NOT NULL, created_at {bigint} NOT NULL)",
)];

const KITCHEN_MIGRATIONS: &[Migration] = &[Migration::new(
    1,
    "tickets",
    "CREATE TABLE tickets (order_id TEXT PRIMARY KEY, total_cents {bigint} NOT NULL)",
)];

/// The order service's command: the order row and its event commit together, or neither.
async fn create_order(
    store: &Store,
    outbox: &Outbox,
    order_id: &str,
    total_cents: i64,
) -> Result<(), Box<dyn Error>> {
    let mut tx = store.begin().await?;
    sqlx::query("INSERT INTO orders (id, total_cents, created_at) VALUES ($1, $2, $3)")
        .bind(order_id)
        .bind(total_cents)
        .bind(keel_store::now_ms())
        .execute(tx.conn())
        .await?;
    let event = OrderCreated {
        order_id: order_id.to_owned(),
        total_cents,
    };
    let message = Message::typed("order.events", "OrderCreated", 1, &event)?.with_key(order_id);
    outbox.send(&mut tx, &message).await?;
    tx.commit().await?; // wakes the relay: published within milliseconds
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("keel-order-flow-{}", std::process::id()));
    let sqlite = |name: &str| format!("sqlite://{}", dir.join(name).display());
    let store_url = std::env::args().nth(1);
    let order_url = store_url.clone().unwrap_or_else(|| sqlite("order.db"));
    let kitchen_url = store_url.unwrap_or_else(|| sqlite("kitchen.db"));

    // The bus. A service would call `keel_bus::connect(url)` (sqlite:// or nats://), which
    // returns the same `Arc<dyn Bus>`.
    let bus: Arc<dyn Bus> = Arc::new(SqliteBus::open(&sqlite("bus.db")).await?);
    let stop = CancellationToken::new();

    // The order service: its store, its outbox, and the relay (one per service instance;
    // the instances elect one active relay among themselves).
    let orders = Store::connect(&order_url).await?;
    orders.migrate("order", ORDER_MIGRATIONS).await?;
    let outbox = Outbox::new(orders.clone()).await?;
    let relay = tokio::spawn(outbox.clone().run_relay(bus.clone(), stop.clone()));

    // The kitchen service: its store and its inbox. `Inbox::subscribe` is how services
    // consume: the handler's writes and "this message was handled" commit together.
    let kitchen = Store::connect(&kitchen_url).await?;
    kitchen.migrate("kitchen", KITCHEN_MIGRATIONS).await?;
    let inbox = Inbox::new(kitchen.clone(), "kitchen.order-events").await?;
    let consumer = inbox
        .subscribe(
            bus.as_ref(),
            Subscription::new("order.events", "kitchen"),
            |mut tx, d| async move {
                // A payload that does not deserialize can never succeed: dead-letter it.
                let event: OrderCreated = d.message.payload_as().map_err(HandlerError::reject)?;
                sqlx::query("INSERT INTO tickets (order_id, total_cents) VALUES ($1, $2)")
                    .bind(&event.order_id)
                    .bind(event.total_cents)
                    .execute(tx.conn())
                    .await
                    .map_err(HandlerError::retry)?; // rolled back and redelivered later
                Ok(tx) // committed with the inbox record
            },
        )
        .await?;

    let run = keel_messaging::new_id();
    let ids: Vec<String> = (0..3).map(|i| format!("order-{run}-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        create_order(&orders, &outbox, id, 1250 + i as i64).await?;
    }

    // Wait until the kitchen has a ticket for each order.
    let mut tickets = 0;
    for _ in 0..500 {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM tickets WHERE order_id LIKE $1")
            .bind(format!("order-{run}-%"))
            .fetch_one(kitchen.pool())
            .await?;
        tickets = n;
        if tickets == ids.len() as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("{} orders created, {tickets} kitchen tickets", ids.len());

    consumer.stop().await;
    stop.cancel();
    relay.await?;
    let _ = std::fs::remove_dir_all(&dir);
    if tickets != ids.len() as i64 {
        return Err("the kitchen did not get every order".into());
    }
    Ok(())
}
