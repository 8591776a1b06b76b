//! The delivery service through its real interfaces: HTTP on a free port, and events on the
//! real embedded bus (a SQLite file in a temporary directory) published the way the kitchen
//! and the order service publish them — including while the service is stopped.

use std::{sync::Arc, time::Duration};

use ftgo_contracts::{
    Money, SCHEMA_VERSION, delivery_events, destinations,
    events::{self, OrderDetails, TicketAccepted},
};
use ftgo_delivery::DeliveryConfig;
use ftgo_runtime::testing::{Server, collect};
use keel_messaging::{Bus, Consumer, Message, Subscription};
use keel_store::testing::TempDir;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// How long anything asynchronous may take before a test fails.
const PATIENCE: Duration = Duration::from_secs(20);

struct Delivery {
    server: Server,
}

fn config(dir: &TempDir, database: Option<&str>, assign_interval_ms: u64) -> DeliveryConfig {
    DeliveryConfig {
        database: database.map_or_else(|| dir.sqlite_url("delivery.db"), str::to_owned),
        bus: dir.sqlite_url("bus.db"),
        assign_interval_ms,
        registration: None,
    }
}

impl Delivery {
    /// Starts the delivery service on the database and bus in `dir`, as `run` does.
    async fn start(dir: &TempDir) -> Self {
        // Only the immediate paths assign, unless a test turns the sweep on.
        Self::start_with(dir, None, 0).await
    }

    async fn start_on(dir: &TempDir, database: Option<&str>) -> Self {
        Self::start_with(dir, database, 0).await
    }

    /// Starts it on `database` (a SQLite file in `dir` when `None`) and the bus in `dir`,
    /// sweeping waiting deliveries every `assign_interval_ms` (never when 0).
    async fn start_with(dir: &TempDir, database: Option<&str>, assign_interval_ms: u64) -> Self {
        let app_config = config(dir, database, assign_interval_ms);
        let server = Server::start("delivery", app_config, |c, stop| async move {
            ftgo_delivery::app(&c, stop).await
        })
        .await;
        server.wait_ready().await;
        Delivery { server }
    }

    async fn stop(self) {
        self.server.stop().await;
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.server.get_strict(path).await
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.server.post_strict(path, body).await
    }

    async fn availability(&self, courier: &str, available: bool) -> (u16, Value) {
        self.post(
            &format!("/couriers/{courier}/availability"),
            &json!({ "available": available }).to_string(),
        )
        .await
    }

    /// Polls `GET /deliveries/{order}` until `done` holds for it.
    async fn delivery_when(&self, order: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (status, body) = self.get(&format!("/deliveries/{order}")).await;
            if status == 200 && done(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "delivery of {order} never got there; last: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn delivery_in(&self, order: &str, state: &str) -> Value {
        self.delivery_when(order, |d| d["state"] == state).await
    }
}

async fn bus(dir: &TempDir) -> Arc<dyn Bus> {
    keel_bus::connect(&dir.sqlite_url("bus.db")).await.unwrap()
}

/// A ready-by time safely in the future.
const READY_BY: &str = "2999-06-01T12:30:00Z";

/// `TicketAccepted` for `order`, as the kitchen publishes it (partition key: the ticket).
fn ticket_accepted(order: &str) -> Message {
    ticket_accepted_keyed(order, &format!("t-{order}"))
}

fn ticket_accepted_keyed(order: &str, key: &str) -> Message {
    Message::typed(
        destinations::KITCHEN_EVENTS,
        events::TICKET_ACCEPTED,
        SCHEMA_VERSION,
        &TicketAccepted {
            ticket_id: format!("t-{order}"),
            order_id: order.to_owned(),
            restaurant_id: "r-1".to_owned(),
            ready_by: READY_BY.to_owned(),
        },
    )
    .unwrap()
    .with_key(key)
}

/// An order event of type `kind` for `order`, as the order service publishes it.
fn order_event(kind: &str, order: &str) -> Message {
    Message::typed(
        destinations::ORDER_EVENTS,
        kind,
        SCHEMA_VERSION,
        &OrderDetails {
            order_id: order.to_owned(),
            consumer_id: "c-1".to_owned(),
            restaurant_id: "r-1".to_owned(),
            line_items: Vec::new(),
            order_total: Money(2500),
        },
    )
    .unwrap()
    .with_key(order)
}

fn order_cancelled(order: &str) -> Message {
    order_event(events::ORDER_CANCELLED, order)
}

/// Collects what is published on delivery.events.
async fn delivery_events(bus: &Arc<dyn Bus>) -> (Consumer, mpsc::UnboundedReceiver<Message>) {
    collect(
        bus,
        Subscription::new(destinations::DELIVERY_EVENTS, "delivery-test"),
    )
    .await
}

/// The next event published, as (type, key, payload).
async fn next_event(rx: &mut mpsc::UnboundedReceiver<Message>) -> (String, String, Value) {
    let m = tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("an event on delivery.events")
        .unwrap();
    assert_eq!(m.header("schema-version"), Some("1"));
    (
        m.message_type().unwrap_or_default().to_owned(),
        m.key.clone().unwrap_or_default(),
        m.payload,
    )
}

/// Every event published until nothing more comes for a while.
async fn drain(rx: &mut mpsc::UnboundedReceiver<Message>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(800), rx.recv()).await {
        out.push((m.message_type().unwrap_or_default().to_owned(), m.payload));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_accepted_schedules_with_the_least_busy_courier() {
    let dir = TempDir::new("delivery-test");
    let d = Delivery::start(&dir).await;
    let bus = bus(&dir).await;
    let (events, mut rx) = delivery_events(&bus).await;

    let (status, c) = d.availability("c-b", true).await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(
        c,
        json!({"courierId": "c-b", "available": true, "activeDeliveries": []})
    );
    assert_eq!(d.availability("c-a", true).await.0, 201);
    // Saying it again changes nothing: 200.
    assert_eq!(d.availability("c-a", true).await.0, 200);

    bus.publish(&ticket_accepted("o-1")).await.unwrap();
    let o1 = d.delivery_in("o-1", "SCHEDULED").await;
    assert_eq!(
        o1,
        json!({
            "orderId": "o-1",
            "restaurantId": "r-1",
            "state": "SCHEDULED",
            "pickupTime": READY_BY,
            "courierId": "c-a",
            "ticketId": "t-o-1"
        }),
        "a tie goes to the smallest courier id"
    );
    assert_eq!(
        next_event(&mut rx).await,
        (
            delivery_events::DELIVERY_SCHEDULED.to_owned(),
            "o-1".to_owned(),
            json!({"orderId": "o-1", "restaurantId": "r-1", "pickupTime": READY_BY})
        )
    );
    assert_eq!(
        next_event(&mut rx).await,
        (
            delivery_events::COURIER_ASSIGNED.to_owned(),
            "o-1".to_owned(),
            json!({"orderId": "o-1", "courierId": "c-a"})
        )
    );

    // The next one goes to the courier with fewer deliveries, then back to the tie-break.
    bus.publish(&ticket_accepted("o-2")).await.unwrap();
    let o2 = d.delivery_in("o-2", "SCHEDULED").await;
    assert_eq!(o2["courierId"], "c-b");
    bus.publish(&ticket_accepted("o-3")).await.unwrap();
    let o3 = d.delivery_in("o-3", "SCHEDULED").await;
    assert_eq!(o3["courierId"], "c-a");

    let (status, all) = d.get("/couriers").await;
    assert_eq!(status, 200);
    assert_eq!(
        all,
        json!({"couriers": [
            {"courierId": "c-a", "available": true, "activeDeliveries": ["o-1", "o-3"]},
            {"courierId": "c-b", "available": true, "activeDeliveries": ["o-2"]}
        ]})
    );
    let (status, one) = d.get("/couriers/c-b").await;
    assert_eq!(status, 200);
    assert_eq!(one, all["couriers"][1]);

    // An order without a delivery: 404 naming the order (the gateway's composed view).
    let (status, p) = d.get("/deliveries/o-none").await;
    assert_eq!(status, 404);
    assert_eq!(p["orderId"], "o-none");
    events.stop().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_courier_a_delivery_waits_and_is_assigned_on_availability() {
    let dir = TempDir::new("delivery-test");
    let d = Delivery::start(&dir).await;
    let bus = bus(&dir).await;
    let (events, mut rx) = delivery_events(&bus).await;
    // A courier that is not available takes nothing.
    assert_eq!(d.availability("c-1", false).await.0, 201);

    bus.publish(&ticket_accepted("o-1")).await.unwrap();
    let o1 = d.delivery_in("o-1", "PENDING").await;
    assert!(o1.get("courierId").is_none(), "{o1}");
    assert_eq!(o1["pickupTime"], READY_BY);
    assert_eq!(next_event(&mut rx).await.0, "DeliveryScheduled");
    // Give o-1 an older creation time than o-2 for certain.
    tokio::time::sleep(Duration::from_millis(5)).await;
    bus.publish(&ticket_accepted("o-2")).await.unwrap();
    d.delivery_in("o-2", "PENDING").await;
    assert_eq!(next_event(&mut rx).await.0, "DeliveryScheduled");
    assert_eq!(d.delivery_in("o-1", "PENDING").await["state"], "PENDING");

    // The courier becomes available: both waiting deliveries go to it, oldest first.
    let (status, c) = d.availability("c-1", true).await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(
        c,
        json!({"courierId": "c-1", "available": true, "activeDeliveries": ["o-1", "o-2"]})
    );
    for order in ["o-1", "o-2"] {
        let got = d.get(&format!("/deliveries/{order}")).await.1;
        assert_eq!(
            (got["state"].as_str(), got["courierId"].as_str()),
            (Some("SCHEDULED"), Some("c-1"))
        );
    }
    let assigned: Vec<_> = drain(&mut rx).await;
    let mut orders: Vec<_> = assigned
        .iter()
        .filter(|(t, _)| t == "CourierAssigned")
        .map(|(_, p)| p["orderId"].as_str().unwrap().to_owned())
        .collect();
    orders.sort();
    assert_eq!(orders, ["o-1", "o-2"], "{assigned:?}");
    assert_eq!(assigned.len(), 2, "{assigned:?}");

    // Unavailable again: it keeps what it has, and new deliveries wait.
    let (status, c) = d.availability("c-1", false).await;
    assert_eq!(status, 200);
    assert_eq!(c["available"], false);
    assert_eq!(c["activeDeliveries"], json!(["o-1", "o-2"]));
    bus.publish(&ticket_accepted("o-3")).await.unwrap();
    d.delivery_in("o-3", "PENDING").await;

    // The metrics are exported.
    let metrics = d
        .server
        .http
        .get(d.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "ftgo_delivery_deliveries_scheduled_total",
        "ftgo_delivery_couriers_assigned_total",
        "ftgo_delivery_pending_deliveries",
        "ftgo_delivery_available_couriers",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    events.stop().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_acceptance_cancels_and_frees_the_courier() {
    let dir = TempDir::new("delivery-test");
    let d = Delivery::start(&dir).await;
    let bus = bus(&dir).await;
    d.availability("c-1", true).await;
    d.availability("c-2", true).await;
    bus.publish(&ticket_accepted("o-1")).await.unwrap();
    assert_eq!(d.delivery_in("o-1", "SCHEDULED").await["courierId"], "c-1");
    bus.publish(&ticket_accepted("o-2")).await.unwrap();
    assert_eq!(d.delivery_in("o-2", "SCHEDULED").await["courierId"], "c-2");
    let (events, mut rx) = delivery_events(&bus).await;
    // Earlier events first (the test's group starts at the beginning).
    assert_eq!(drain(&mut rx).await.len(), 4);

    // Events of other types on order.events are not the delivery service's business.
    bus.publish(&order_event(events::ORDER_APPROVED, "o-1"))
        .await
        .unwrap();
    bus.publish(&order_cancelled("o-1")).await.unwrap();
    let o1 = d.delivery_in("o-1", "CANCELLED").await;
    assert_eq!(o1["courierId"], "c-1", "the courier is kept for the record");
    assert_eq!(o1["pickupTime"], READY_BY);
    assert_eq!(
        next_event(&mut rx).await,
        (
            delivery_events::DELIVERY_CANCELLED.to_owned(),
            "o-1".to_owned(),
            json!({"orderId": "o-1"})
        )
    );
    // c-1 is free again: it has fewer active deliveries than c-2, so it gets the next.
    assert_eq!(
        d.get("/couriers/c-1").await.1["activeDeliveries"],
        json!([])
    );
    bus.publish(&ticket_accepted("o-3")).await.unwrap();
    assert_eq!(d.delivery_in("o-3", "SCHEDULED").await["courierId"], "c-1");

    // A PENDING delivery is cancelled too.
    d.availability("c-1", false).await;
    d.availability("c-2", false).await;
    bus.publish(&ticket_accepted("o-4")).await.unwrap();
    d.delivery_in("o-4", "PENDING").await;
    bus.publish(&order_cancelled("o-4")).await.unwrap();
    d.delivery_in("o-4", "CANCELLED").await;
    // Cancelled is final: a courier becoming available does not pick it up.
    let (_, c) = d.availability("c-2", true).await;
    assert_eq!(c["activeDeliveries"], json!(["o-2"]));
    assert_eq!(d.get("/deliveries/o-4").await.1["state"], "CANCELLED");
    events.stop().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_acceptance_keeps_a_tombstone() {
    let dir = TempDir::new("delivery-test");
    let d = Delivery::start(&dir).await;
    let bus = bus(&dir).await;
    d.availability("c-1", true).await;
    let (events, mut rx) = delivery_events(&bus).await;

    // order.events overtakes kitchen.events: the cancellation arrives first.
    bus.publish(&order_cancelled("o-9")).await.unwrap();
    let tomb = d.delivery_in("o-9", "CANCELLED").await;
    assert_eq!(
        tomb,
        json!({"orderId": "o-9", "restaurantId": "r-1", "state": "CANCELLED"})
    );
    bus.publish(&ticket_accepted("o-9")).await.unwrap();
    // The late acceptance is recorded, but nothing is scheduled and no courier is taken.
    let late = d
        .delivery_when("o-9", |v| v.get("pickupTime").is_some())
        .await;
    assert_eq!(late["state"], "CANCELLED");
    assert!(late.get("courierId").is_none(), "{late}");
    assert_eq!(late["ticketId"], "t-o-9");
    assert_eq!(
        d.get("/couriers/c-1").await.1["activeDeliveries"],
        json!([])
    );
    // Nor does cancelling it again announce anything.
    bus.publish(&order_cancelled("o-9")).await.unwrap();
    let published = drain(&mut rx).await;
    assert!(published.is_empty(), "{published:?}");
    events.stop().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_events_are_applied_once() {
    let dir = TempDir::new("delivery-test");
    let d = Delivery::start(&dir).await;
    let bus = bus(&dir).await;
    d.availability("c-1", true).await;
    let (events, mut rx) = delivery_events(&bus).await;

    // One partition key for all, so the sentinel is handled after everything before it.
    let accepted = ticket_accepted_keyed("o-1", "k");
    bus.publish(&accepted).await.unwrap();
    // Redelivered (same message id) …
    bus.publish(&accepted).await.unwrap();
    // … and published again by a retrying kitchen (a new message id).
    bus.publish(&ticket_accepted_keyed("o-1", "k"))
        .await
        .unwrap();
    bus.publish(&ticket_accepted_keyed("o-sentinel", "k"))
        .await
        .unwrap();
    d.delivery_in("o-sentinel", "SCHEDULED").await;
    assert_eq!(d.delivery_in("o-1", "SCHEDULED").await["courierId"], "c-1");

    let cancelled = order_cancelled("o-1");
    bus.publish(&cancelled).await.unwrap();
    bus.publish(&cancelled).await.unwrap();
    bus.publish(&order_cancelled("o-1")).await.unwrap();
    d.delivery_in("o-1", "CANCELLED").await;

    let published = drain(&mut rx).await;
    let count = |kind: &str, order: &str| {
        published
            .iter()
            .filter(|(t, p)| t == kind && p["orderId"] == order)
            .count()
    };
    assert_eq!(count("DeliveryScheduled", "o-1"), 1, "{published:?}");
    assert_eq!(count("CourierAssigned", "o-1"), 1, "{published:?}");
    assert_eq!(count("DeliveryCancelled", "o-1"), 1, "{published:?}");
    assert_eq!(count("DeliveryScheduled", "o-sentinel"), 1);
    assert_eq!(published.len(), 5, "{published:?}");
    assert_eq!(
        d.get("/couriers/c-1").await.1["activeDeliveries"],
        json!(["o-sentinel"])
    );
    events.stop().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_up_on_events_published_while_it_was_down() {
    let dir = TempDir::new("delivery-test");
    let bus = bus(&dir).await;
    // Published before the service ever ran: its group starts at the beginning.
    bus.publish(&ticket_accepted("o-early")).await.unwrap();

    let d = Delivery::start(&dir).await;
    d.delivery_in("o-early", "PENDING").await;
    d.availability("c-1", true).await;
    assert_eq!(
        d.delivery_in("o-early", "SCHEDULED").await["courierId"],
        "c-1"
    );
    d.stop().await;

    // The service is down; the kitchen and the order service carry on.
    for order in ["o-1", "o-2", "o-3"] {
        bus.publish(&ticket_accepted(order)).await.unwrap();
    }
    bus.publish(&order_cancelled("o-2")).await.unwrap();
    bus.publish(&order_cancelled("o-early")).await.unwrap();

    let d = Delivery::start(&dir).await;
    for order in ["o-1", "o-3"] {
        let got = d.delivery_in(order, "SCHEDULED").await;
        assert_eq!(got["courierId"], "c-1");
        assert_eq!(got["pickupTime"], READY_BY);
    }
    d.delivery_in("o-2", "CANCELLED").await;
    d.delivery_in("o-early", "CANCELLED").await;
    let (_, c) = d.get("/couriers/c-1").await;
    let mut active: Vec<String> = serde_json::from_value(c["activeDeliveries"].clone()).unwrap();
    active.sort();
    assert_eq!(active, ["o-1", "o-3"]);
    d.stop().await;

    // A third start re-applies nothing: every event of the whole history is published
    // once per order, and the deliveries are as they were.
    let d = Delivery::start(&dir).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (events, mut rx) = delivery_events(&bus).await;
    let history = drain(&mut rx).await;
    let mut seen = std::collections::HashSet::new();
    for (kind, payload) in &history {
        let order = payload["orderId"].as_str().unwrap().to_owned();
        assert!(
            seen.insert((kind.clone(), order)),
            "twice: {kind} {payload}"
        );
    }
    for kind in ["DeliveryScheduled", "CourierAssigned"] {
        for order in ["o-early", "o-1", "o-3"] {
            assert!(
                seen.contains(&(kind.to_owned(), order.to_owned())),
                "{kind} {order} missing from {history:?}"
            );
        }
    }
    assert!(seen.contains(&("DeliveryCancelled".to_owned(), "o-early".to_owned())));
    assert_eq!(d.get("/deliveries/o-1").await.1["state"], "SCHEDULED");
    assert_eq!(d.get("/deliveries/o-2").await.1["state"], "CANCELLED");
    events.stop().await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_problem_naming_the_field() {
    let dir = TempDir::new("delivery-test");
    let d = Delivery::start(&dir).await;
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("{bad", 400, None),
        ("{}", 422, Some("available")),
        (r#"{"available": "yes"}"#, 422, Some("available")),
        (r#"{"available": null}"#, 422, Some("available")),
        (r#"{"available": true, "extra": 1}"#, 422, Some("extra")),
        ("[]", 422, Some("body")),
    ];
    for (body, status, field) in cases {
        let (got, p) = d.post("/couriers/c-1/availability", body).await;
        assert_eq!(got, *status, "{body}: {p}");
        if let Some(field) = field {
            assert_eq!(p["field"], *field, "{body}: {p}");
        }
    }
    // Not JSON at all.
    let r = d
        .server
        .http
        .post(d.url("/couriers/c-1/availability"))
        .body("available=yes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    // A malformed courier id.
    let (status, p) = d
        .post("/couriers/a%20b/availability", r#"{"available": true}"#)
        .await;
    assert_eq!(status, 400);
    assert_eq!(p["field"], "courierId");
    let (status, p) = d.get(&format!("/couriers/{}", "x".repeat(65))).await;
    assert_eq!(status, 400);
    assert_eq!(p["field"], "courierId");
    // None of that created a courier.
    let (status, p) = d.get("/couriers/c-1").await;
    assert_eq!(status, 404);
    assert_eq!(p["courierId"], "c-1");
    assert_eq!(d.get("/couriers").await.1, json!({"couriers": []}));

    // An event that does not fit is dead-lettered, and does not hold up the next one on
    // its partition.
    let bus = bus(&dir).await;
    let mut bad = ticket_accepted_keyed("o-bad", "k");
    bad.payload["readyBy"] = json!("whenever");
    bus.publish(&bad).await.unwrap();
    let mut worse = ticket_accepted_keyed("o-worse", "k");
    worse.payload = json!({"orderId": 7});
    bus.publish(&worse).await.unwrap();
    bus.publish(&ticket_accepted_keyed("o-good", "k"))
        .await
        .unwrap();
    d.delivery_in("o-good", "PENDING").await;
    assert_eq!(d.get("/deliveries/o-bad").await.0, 404);
    assert_eq!(d.get("/deliveries/o-worse").await.0, 404);

    // The API is described.
    let (status, doc) = d.get("/openapi.json").await;
    assert_eq!(status, 200);
    for path in [
        "/deliveries/{orderId}",
        "/couriers",
        "/couriers/{courierId}",
        "/couriers/{courierId}/availability",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path}");
    }
    let r = d.server.http.get(d.url("/docs")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_cancels_and_catches_up_on_postgres() {
    let Some((store, url)) =
        keel_store::testing::fresh_postgres("schedules_cancels_and_catches_up_on_postgres")
            .await
            .unwrap()
    else {
        return;
    };
    store.close().await;
    let dir = TempDir::new("delivery-test");
    let bus = bus(&dir).await;
    let d = Delivery::start_on(&dir, Some(&url)).await;
    d.availability("c-2", true).await;
    d.availability("c-1", true).await;
    bus.publish(&ticket_accepted("o-1")).await.unwrap();
    assert_eq!(d.delivery_in("o-1", "SCHEDULED").await["courierId"], "c-1");
    bus.publish(&order_cancelled("o-0")).await.unwrap();
    d.delivery_in("o-0", "CANCELLED").await;
    d.stop().await;

    bus.publish(&ticket_accepted("o-2")).await.unwrap();
    bus.publish(&ticket_accepted("o-0")).await.unwrap();
    let d = Delivery::start_on(&dir, Some(&url)).await;
    assert_eq!(d.delivery_in("o-2", "SCHEDULED").await["courierId"], "c-2");
    let tomb = d
        .delivery_when("o-0", |v| v.get("pickupTime").is_some())
        .await;
    assert_eq!(tomb["state"], "CANCELLED");
    bus.publish(&order_cancelled("o-1")).await.unwrap();
    d.delivery_in("o-1", "CANCELLED").await;
    let (_, all) = d.get("/couriers").await;
    assert_eq!(
        all,
        json!({"couriers": [
            {"courierId": "c-1", "available": true, "activeDeliveries": []},
            {"courierId": "c-2", "available": true, "activeDeliveries": ["o-2"]}
        ]})
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_assigns_what_a_race_left_waiting() {
    let dir = TempDir::new("delivery-test");
    let d = Delivery::start_with(&dir, None, 100).await;
    let bus = bus(&dir).await;
    d.availability("c-1", false).await;
    bus.publish(&ticket_accepted("o-1")).await.unwrap();
    d.delivery_in("o-1", "PENDING").await;
    // What two concurrent transactions on PostgreSQL can leave behind: the courier became
    // available without seeing the new delivery, and the delivery without seeing it.
    let db = keel_store::Store::connect(&dir.sqlite_url("delivery.db"))
        .await
        .unwrap();
    db.write(sqlx::query(
        "UPDATE couriers SET available = 1 WHERE id = 'c-1'",
    ))
    .await
    .unwrap();
    assert_eq!(d.delivery_in("o-1", "SCHEDULED").await["courierId"], "c-1");
    db.close().await;
    d.stop().await;
}
