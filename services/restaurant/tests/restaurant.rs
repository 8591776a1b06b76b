//! The restaurant service through its real HTTP API and the real embedded bus: creating,
//! reading and listing restaurants, `RestaurantCreated` through the outbox, stock taken on
//! `OrderApproved` and given back on `OrderCancelled` (each applied once, announced with
//! `MenuStockChanged` and an increasing version), and bad input.

use std::{sync::Arc, time::Duration};

use ftgo_contracts::{
    LineItem, Money, SCHEMA_VERSION, destinations,
    events::{self, MenuStockChanged, OrderDetails},
};
use ftgo_restaurant::{RestaurantConfig, app};
use ftgo_runtime::testing::{Server, Tap};
use keel_messaging::{Bus, Message, headers};
use keel_store::{Store, testing::TempDir};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

struct Running {
    server: Server,
    bus: Arc<dyn Bus>,
    store: Store,
    _dir: TempDir,
}

impl Running {
    async fn start() -> Self {
        let dir = TempDir::new("ftgo-restaurant");
        let config = RestaurantConfig {
            database: dir.sqlite_url("restaurant.db"),
            bus: dir.sqlite_url("bus.db"),
            registration: None,
        };
        let server = Server::start("restaurant", config.clone(), |c, stop| async move {
            app(&c, stop).await
        })
        .await;
        let bus = keel_bus::connect(&config.bus).await.unwrap();
        Self {
            store: server.store.clone(),
            server,
            bus,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.server.stop().await;
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.server.post(path, body).await
    }

    async fn post_raw(&self, path: &str, body: &str, content_type: Option<&str>) -> (u16, Value) {
        self.server.post_raw(path, body, content_type).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.server.get(path).await
    }

    async fn create(&self, body: Value) -> String {
        let (status, v) = self.post("/restaurants", body).await;
        assert_eq!(status, 201, "{v}");
        v["restaurantId"].as_str().unwrap().to_owned()
    }

    /// Receives every message published to `destination` from now on (and before: a new
    /// group starts at the oldest retained message).
    async fn tap(&self, destination: &str) -> Tap {
        Tap::new(&self.bus, destination).await
    }
}

fn order(order_id: &str, restaurant_id: &str, lines: &[(&str, u32)]) -> OrderDetails {
    OrderDetails {
        order_id: order_id.to_owned(),
        consumer_id: "c1".to_owned(),
        restaurant_id: restaurant_id.to_owned(),
        line_items: lines
            .iter()
            .map(|(item, quantity)| LineItem {
                menu_item_id: (*item).to_owned(),
                name: (*item).to_owned(),
                quantity: *quantity,
                price: Money(100),
            })
            .collect(),
        order_total: Money(100 * i64::from(lines.iter().map(|l| l.1).sum::<u32>())),
    }
}

fn order_event(kind: &str, details: &OrderDetails) -> Message {
    Message::typed(destinations::ORDER_EVENTS, kind, SCHEMA_VERSION, details)
        .unwrap()
        .with_key(details.order_id.clone())
}

fn menu() -> Value {
    json!({"name": "Ajanta", "menu": [
        {"id": "samosa", "name": "Samosa", "price": "3.5", "stock": 5},
        {"id": "naan", "name": "Naan", "price": "2.00"},
        {"id": "dal", "name": "Dal", "price": "9.99", "stock": 0},
    ]})
}

/// The next `MenuStockChanged`: (version, item → stock).
async fn stock_change(tap: &mut Tap) -> (u64, Vec<(String, u32)>) {
    let m = tap.next().await;
    assert_eq!(m.message_type(), Some(events::MENU_STOCK_CHANGED), "{m:?}");
    assert_eq!(m.header(headers::SCHEMA_VERSION), Some("1"));
    let e: MenuStockChanged = m.payload_as().unwrap();
    assert_eq!(m.key.as_deref(), Some(e.restaurant_id.as_str()));
    (
        e.version,
        e.stock
            .into_iter()
            .map(|s| (s.menu_item_id, s.stock))
            .collect(),
    )
}

fn changes(items: &[(&str, u32)]) -> Vec<(String, u32)> {
    items.iter().map(|(i, s)| ((*i).to_owned(), *s)).collect()
}

impl Running {
    async fn stock_of(&self, restaurant: &str) -> (u64, Vec<Value>) {
        let (status, v) = self.get(&format!("/restaurants/{restaurant}")).await;
        assert_eq!(status, 200, "{v}");
        let stock = v["menu"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["stock"].clone())
            .collect();
        (v["stockVersion"].as_u64().unwrap(), stock)
    }

    async fn publish(&self, m: &Message) {
        self.bus.publish(m).await.unwrap();
    }

    /// Waits until the inbox has recorded `message` as handled (a barrier: whatever was
    /// published before it with the same key has been handled too).
    async fn handled(&self, message: &Message) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (n,): (i64,) =
                keel_store::sqlx::query_as("SELECT COUNT(*) FROM keel_inbox WHERE message_id = $1")
                    .bind(&message.id)
                    .fetch_one(self.store.pool())
                    .await
                    .unwrap();
            if n == 1 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{message:?} not handled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn creates_reads_lists_and_announces_restaurants() {
    let svc = Running::start().await;
    let mut events = svc.tap(destinations::RESTAURANT_EVENTS).await;
    let ajanta = svc.create(menu()).await;
    let (status, v) = svc.get(&format!("/restaurants/{ajanta}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        json!({"restaurantId": ajanta, "name": "Ajanta", "stockVersion": 0, "menu": [
            {"id": "samosa", "name": "Samosa", "price": "3.50", "stock": 5},
            {"id": "naan", "name": "Naan", "price": "2.00", "stock": null},
            {"id": "dal", "name": "Dal", "price": "9.99", "stock": 0},
        ]})
    );
    let other = svc
        .create(json!({"name": " Tiny ", "menu": [{"id": " x ", "name": "X", "price": "1", "stock": 1}]}))
        .await;

    let (status, v) = svc.get("/restaurants").await;
    assert_eq!(status, 200);
    let all = v["restaurants"].as_array().unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["restaurantId"], ajanta.as_str());
    assert_eq!(all[0]["menu"].as_array().unwrap().len(), 3);
    assert_eq!(
        all[1],
        json!({"restaurantId": other, "name": "Tiny", "stockVersion": 0, "menu": [
            {"id": "x", "name": "X", "price": "1.00", "stock": 1}]})
    );

    // Each creation is announced once (no order between different keys), keyed by the
    // restaurant, with the whole menu.
    let mut announced = [events.next().await, events.next().await];
    announced.sort_by_key(|m| m.key.as_deref() != Some(ajanta.as_str()));
    let m = &announced[0];
    assert_eq!(m.message_type(), Some(events::RESTAURANT_CREATED));
    assert_eq!(m.header(headers::SCHEMA_VERSION), Some("1"));
    assert_eq!(m.key.as_deref(), Some(ajanta.as_str()));
    let created: events::RestaurantCreated = m.payload_as().unwrap();
    assert_eq!(created.restaurant_id, ajanta);
    assert_eq!(created.name, "Ajanta");
    assert_eq!(
        created.menu,
        vec![
            events::MenuItem {
                id: "samosa".to_owned(),
                name: "Samosa".to_owned(),
                price: Money(350),
                stock: Some(5),
            },
            events::MenuItem {
                id: "naan".to_owned(),
                name: "Naan".to_owned(),
                price: Money(200),
                stock: None,
            },
            events::MenuItem {
                id: "dal".to_owned(),
                name: "Dal".to_owned(),
                price: Money(999),
                stock: Some(0),
            },
        ]
    );
    let m = &announced[1];
    assert_eq!(m.key.as_deref(), Some(other.as_str()));
    assert_eq!(m.payload["restaurantId"], other.as_str());
    events.nothing_more().await;

    let (status, v) = svc.get("/restaurants/nowhere").await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["restaurantId"], "nowhere");

    let (status, doc) = svc.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/restaurants"]["post"].is_object());
    assert!(doc["paths"]["/restaurants"]["get"].is_object());
    assert!(doc["paths"]["/restaurants/{id}"]["get"].is_object());
    svc.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_problem_naming_the_field() {
    let svc = Running::start().await;
    let mut events = svc.tap(destinations::RESTAURANT_EVENTS).await;
    let item = |extra: Value| {
        let mut i = json!({"id": "a", "name": "A", "price": "1.00"});
        for (k, v) in extra.as_object().unwrap() {
            i[k] = v.clone();
        }
        i
    };
    let cases = [
        (json!({}), 422, "name"),
        (json!({"name": "R"}), 422, "menu"),
        (json!({"name": 1, "menu": [item(json!({}))]}), 422, "name"),
        (json!({"name": "", "menu": [item(json!({}))]}), 400, "name"),
        (json!({"name": "R", "menu": []}), 400, "menu"),
        (json!({"name": "R", "menu": {}}), 422, "menu"),
        (
            json!({"name": "R", "menu": [{"name": "A", "price": "1"}]}),
            422,
            "menu[0].id",
        ),
        (
            json!({"name": "R", "menu": [item(json!({"id": " "}))]}),
            400,
            "menu[0].id",
        ),
        (
            json!({"name": "R", "menu": [item(json!({})), item(json!({"id": "a"}))]}),
            400,
            "menu[1].id",
        ),
        (
            json!({"name": "R", "menu": [item(json!({"name": ""}))]}),
            400,
            "menu[0].name",
        ),
        (
            json!({"name": "R", "menu": [item(json!({"price": "0"}))]}),
            400,
            "menu[0].price",
        ),
        (
            json!({"name": "R", "menu": [item(json!({"price": "0.00"}))]}),
            400,
            "menu[0].price",
        ),
        (
            json!({"name": "R", "menu": [item(json!({"price": "-1.00"}))]}),
            422,
            "menu[0].price",
        ),
        (
            json!({"name": "R", "menu": [item(json!({"price": 3}))]}),
            422,
            "menu[0].price",
        ),
        (
            json!({"name": "R", "menu": [item(json!({"price": "1.005"}))]}),
            422,
            "menu[0].price",
        ),
        (
            json!({"name": "R", "menu": [item(json!({})), item(json!({"id": "b", "stock": -1}))]}),
            422,
            "menu[1].stock",
        ),
        (
            json!({"name": "R", "menu": [item(json!({"stock": 1.5}))]}),
            422,
            "menu[0].stock",
        ),
        (
            json!({"name": "R", "menu": [item(json!({"stock": "3"}))]}),
            422,
            "menu[0].stock",
        ),
        (
            json!({"name": "R", "menu": [item(json!({"stock": 4_294_967_296_u64}))]}),
            422,
            "menu[0].stock",
        ),
        (
            json!({"name": "R", "menu": [item(json!({"qty": 1}))]}),
            422,
            "menu[0].qty",
        ),
        (json!("R"), 422, "body"),
    ];
    for (body, status, field) in cases {
        let (s, v) = svc.post("/restaurants", body.clone()).await;
        assert_eq!(s, status, "{body} → {v}");
        assert_eq!(v["field"], field, "{body} → {v}");
        if field != "body" {
            assert!(
                v["detail"].as_str().unwrap().contains(field),
                "{body} → {v}"
            );
        }
    }
    let (s, v) = svc
        .post_raw("/restaurants", "{\"name\":", Some("application/json"))
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = svc.post_raw("/restaurants", "{}", Some("text/plain")).await;
    assert_eq!(s, 415, "{v}");
    let (s, v) = svc
        .post_raw("/restaurants/x", "{}", Some("application/json"))
        .await;
    assert_eq!(s, 405, "{v}");
    // Nothing was created, so nothing was announced.
    let (_, v) = svc.get("/restaurants").await;
    assert_eq!(v, json!({"restaurants": []}));
    events.nothing_more().await;
    svc.stop().await;
}

#[tokio::test]
async fn stock_follows_approved_and_cancelled_orders_once() {
    let svc = Running::start().await;
    let r = svc.create(menu()).await;
    let mut events = svc.tap(destinations::RESTAURANT_EVENTS).await;
    assert_eq!(
        events.next().await.message_type(),
        Some(events::RESTAURANT_CREATED)
    );

    // Approved: samosa 2 + 1 (two lines) taken; naan is unlimited; an unknown item is ignored.
    let o1 = order(
        "o1",
        &r,
        &[("samosa", 2), ("naan", 4), ("samosa", 1), ("ghost", 1)],
    );
    let approved = order_event(events::ORDER_APPROVED, &o1);
    svc.publish(&approved).await;
    assert_eq!(
        stock_change(&mut events).await,
        (1, changes(&[("samosa", 2)]))
    );
    assert_eq!(
        svc.stock_of(&r).await,
        (1, vec![json!(2), Value::Null, json!(0)])
    );

    // The same event again (redelivered or republished: same id) changes nothing, and so does
    // another OrderApproved for the same order.
    svc.publish(&approved).await;
    let again = order_event(events::ORDER_APPROVED, &o1);
    svc.publish(&again).await;
    svc.handled(&again).await;
    assert_eq!(
        svc.stock_of(&r).await,
        (1, vec![json!(2), Value::Null, json!(0)])
    );

    // More than is left: stock ends at 0, never below.
    let o2 = order("o2", &r, &[("samosa", 5)]);
    svc.publish(&order_event(events::ORDER_APPROVED, &o2)).await;
    assert_eq!(
        stock_change(&mut events).await,
        (2, changes(&[("samosa", 0)]))
    );

    // Events that do not touch limited stock announce nothing (an order of unlimited
    // items, an order event of another type).
    svc.publish(&order_event(
        events::ORDER_APPROVED,
        &order("o3", &r, &[("naan", 9)]),
    ))
    .await;
    svc.publish(
        &Message::typed(
            destinations::ORDER_EVENTS,
            events::ORDER_REJECTED,
            SCHEMA_VERSION,
            &events::OrderRejected {
                order_id: "o4".to_owned(),
                reason: "PAYMENT_DECLINED".to_owned(),
            },
        )
        .unwrap()
        .with_key("o4"),
    )
    .await;

    // Cancelled: exactly what o1 took comes back (3), then what o2 took (2).
    let cancelled = order_event(events::ORDER_CANCELLED, &o1);
    svc.publish(&cancelled).await;
    assert_eq!(
        stock_change(&mut events).await,
        (3, changes(&[("samosa", 3)]))
    );
    svc.publish(&cancelled).await;
    let again = order_event(events::ORDER_CANCELLED, &o1);
    svc.publish(&again).await;
    svc.handled(&again).await;
    assert_eq!(
        svc.stock_of(&r).await,
        (3, vec![json!(3), Value::Null, json!(0)])
    );
    svc.publish(&order_event(events::ORDER_CANCELLED, &o2))
        .await;
    assert_eq!(
        stock_change(&mut events).await,
        (4, changes(&[("samosa", 5)]))
    );
    events.nothing_more().await;
    assert_eq!(
        svc.stock_of(&r).await,
        (4, vec![json!(5), Value::Null, json!(0)])
    );

    let (applied,): (i64,) =
        keel_store::sqlx::query_as("SELECT COUNT(*) FROM keel_inbox WHERE message_id IN ($1, $2)")
            .bind(&approved.id)
            .bind(&cancelled.id)
            .fetch_one(svc.store.pool())
            .await
            .unwrap();
    assert_eq!(applied, 2);
    svc.stop().await;
}

#[tokio::test]
async fn a_cancellation_before_its_approval_and_poison_events_take_nothing() {
    let svc = Running::start().await;
    let r = svc.create(menu()).await;
    let mut events = svc.tap(destinations::RESTAURANT_EVENTS).await;
    assert_eq!(
        events.next().await.message_type(),
        Some(events::RESTAURANT_CREATED)
    );
    let mut dead = svc.tap("order.events.dlq").await;

    // The cancellation arrives first: the late approval must not take stock for good.
    let o = order("late", &r, &[("samosa", 1)]);
    svc.publish(&order_event(events::ORDER_CANCELLED, &o)).await;
    svc.publish(&order_event(events::ORDER_APPROVED, &o)).await;

    // A payload that cannot be read is dead-lettered at once and blocks nothing.
    let poison = Message::new(destinations::ORDER_EVENTS, json!({"orderId": 7}))
        .with_header(headers::TYPE, events::ORDER_APPROVED)
        .with_key("p1");
    svc.publish(&poison).await;
    let d = dead.next().await;
    assert_eq!(d.id, poison.id);

    svc.publish(&order_event(
        events::ORDER_APPROVED,
        &order("ok", &r, &[("samosa", 4)]),
    ))
    .await;
    assert_eq!(
        stock_change(&mut events).await,
        (1, changes(&[("samosa", 1)]))
    );
    events.nothing_more().await;
    assert_eq!(
        svc.stock_of(&r).await,
        (1, vec![json!(1), Value::Null, json!(0)])
    );
    svc.stop().await;
}
