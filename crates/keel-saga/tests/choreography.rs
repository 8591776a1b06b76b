//! The choreography helper `react`: a reaction runs once per event (a redelivered or
//! republished event is dropped by the inbox), its writes and the events it publishes
//! commit together, and a failing reaction leaves neither.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use keel_messaging::{
    Bus, HandlerError, Inbox, Message, Outbox, Subscription, handler_fn, headers,
};
use keel_store::{Store, testing::TempDir};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_reaction_runs_once_per_event_and_publishes_with_its_writes() {
    let dir = TempDir::new("saga-react");
    let bus: Arc<dyn Bus> = open_bus(&dir.sqlite_url("bus.db")).await;
    let store = Store::connect(&dir.sqlite_url("delivery.db"))
        .await
        .unwrap();
    store.migrate("delivery", PARTICIPANT_TABLES).await.unwrap();
    let outbox = Outbox::new(store.clone()).await.unwrap();
    let stop = CancellationToken::new();
    relay(outbox.clone(), bus.clone(), stop.clone());
    let inbox = Inbox::new(store.clone(), "delivery.order-events")
        .await
        .unwrap();
    let handler = keel_saga::react(inbox, outbox, |tx, event| {
        Box::pin(async move {
            let order = event.payload["orderId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            sqlx::query("INSERT INTO effects (order_id, what) VALUES ($1, 'delivery scheduled')")
                .bind(&order)
                .execute(tx.conn())
                .await
                .map_err(HandlerError::retry)?;
            if event.message_type() == Some("OrderCancelled") {
                // Written, then failed: nothing of this reaction may commit or be published.
                return Err(HandlerError::reject("cannot deliver a cancelled order"));
            }
            Ok(vec![
                Message::new("delivery.events", json!({ "orderId": order }))
                    .with_key(order)
                    .with_header(headers::TYPE, "DeliveryScheduled"),
            ])
        })
    });
    let _reaction = bus
        .subscribe(Subscription::new("order.events", "delivery"), handler)
        .await
        .unwrap();
    let published: Arc<Mutex<Vec<Message>>> = Arc::default();
    let _spy = bus
        .subscribe(
            Subscription::new("delivery.events", "spy"),
            handler_fn({
                let published = published.clone();
                move |d| {
                    published.lock().unwrap().push(d.message);
                    async { Ok(()) }
                }
            }),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await; // partition assignment

    let approved = Message::new("order.events", json!({ "orderId": "o1" }))
        .with_key("o1")
        .with_header(headers::TYPE, "OrderApproved");
    bus.publish(&approved).await.unwrap();
    bus.publish(&approved).await.unwrap(); // the same event again
    let cancelled = Message::new("order.events", json!({ "orderId": "o2" }))
        .with_key("o2")
        .with_header(headers::TYPE, "OrderCancelled");
    bus.publish(&cancelled).await.unwrap();

    for _ in 0..200 {
        if !published.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // room for a wrong second one
    assert_eq!(effects(&store, "o1").await, vec!["delivery scheduled"]);
    assert!(effects(&store, "o2").await.is_empty(), "rolled back");
    let published = published.lock().unwrap().clone();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].message_type(), Some("DeliveryScheduled"));
    assert_eq!(published[0].payload["orderId"], "o1");
    stop.cancel();
}
