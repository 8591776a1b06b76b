//! The order service through its real HTTP API (the chassis stack on a free port), its
//! own SQLite database and the embedded bus, with small stand-in consumer, kitchen and
//! accounting participants (keel-saga's `command_handler`, each on its own database)
//! answering per the contracts: the approved path, every rejection reason with its
//! compensations, cancellation (approved, refused by the kitchen, while pending), the
//! events with their order versions and the commands' consistency tokens, the
//! restaurant replica (duplicates applied once, stale stock ignored), bad input.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use ftgo_contracts::{
    LineItem, Money, SCHEMA_VERSION,
    commands::{self, AuthorizeCard, CreateTicket, OrderRef, ValidateOrderByConsumer},
    destinations,
    events::{self, MenuItem, MenuStock, MenuStockChanged, OrderDetails, RestaurantCreated},
};
use ftgo_order::{App, OrderConfig};
use keel_chassis::{KeelConfig, Service};
use keel_messaging::{Bus, Consumer, Inbox, Message, Outbox, Subscription, handler_fn};
use keel_saga::{CommandError, command_handler};
use keel_store::{Migration, Store, Tx, sqlx, testing::TempDir};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------- stand-in participants

/// Keys whose commands a stand-in holds back (a consumer id; `cancel:<order id>`) until
/// the test removes them.
type Hold = Arc<Mutex<HashSet<String>>>;

/// The consumer that does not exist.
const GHOST: &str = "ghost";
/// The consumer whose card is declined.
const DECLINER: &str = "decliner";
/// Every consumer's order limit.
const LIMIT: Money = Money(10_000);
/// A restaurant whose kitchen cannot cancel a ticket once confirmed.
const BUSY_KITCHEN: &str = "busy-kitchen";

const PARTICIPANT_TABLES: &[Migration] = &[Migration::new(
    1,
    "stand-in",
    "CREATE TABLE commands (seq {auto_id}, order_id TEXT NOT NULL, type TEXT NOT NULL);
     CREATE TABLE tickets (order_id TEXT PRIMARY KEY, ticket_id TEXT NOT NULL,
        restaurant_id TEXT NOT NULL, state TEXT NOT NULL, before_cancel TEXT);
     CREATE TABLE authorizations (order_id TEXT PRIMARY KEY, id TEXT NOT NULL,
        total {bigint} NOT NULL, state TEXT NOT NULL);",
)];

fn retry(e: impl std::fmt::Display) -> CommandError {
    CommandError::Retry(e.to_string())
}

async fn exec(tx: &mut Tx, sql: &'static str, binds: &[&str]) -> Result<u64, CommandError> {
    let mut q = sqlx::query(sql);
    for b in binds {
        q = q.bind(b.to_string());
    }
    Ok(q.execute(tx.conn()).await.map_err(retry)?.rows_affected())
}

async fn ticket_state(tx: &mut Tx, order: &str) -> Result<Option<String>, CommandError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT state FROM tickets WHERE order_id = $1")
        .bind(order)
        .fetch_optional(tx.conn())
        .await
        .map_err(retry)?;
    Ok(row.map(|r| r.0))
}

async fn wait_while_held(hold: &Hold, key: &str) {
    while hold.lock().unwrap().contains(key) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one stand-in does with one command (inside its transaction).
async fn handle(who: &str, tx: &mut Tx, cmd: &Message, hold: &Hold) -> Result<Value, CommandError> {
    let t = cmd.message_type().unwrap_or_default().to_owned();
    let bad =
        |e: serde_json::Error| CommandError::failure("BadCommand", json!({"error": e.to_string()}));
    let order = cmd.payload["orderId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    match (who, t.as_str()) {
        ("consumer", commands::VALIDATE_ORDER_BY_CONSUMER) => {
            let c: ValidateOrderByConsumer = cmd.payload_as().map_err(bad)?;
            wait_while_held(hold, &c.consumer_id).await;
            exec(
                tx,
                "INSERT INTO commands (order_id, type) VALUES ($1, $2)",
                &[&order, &t],
            )
            .await?;
            if c.consumer_id == GHOST {
                return Err(CommandError::failure(commands::UNKNOWN_CONSUMER, json!({})));
            }
            if c.order_total > LIMIT {
                return Err(CommandError::failure(
                    commands::ORDER_LIMIT_EXCEEDED,
                    json!({"orderLimit": LIMIT}),
                ));
            }
            Ok(json!({}))
        }
        ("kitchen", _) => {
            exec(
                tx,
                "INSERT INTO commands (order_id, type) VALUES ($1, $2)",
                &[&order, &t],
            )
            .await?;
            let state = ticket_state(tx, &order).await?;
            match t.as_str() {
                commands::CREATE_TICKET => {
                    let c: CreateTicket = cmd.payload_as().map_err(bad)?;
                    let ticket = format!("t-{order}");
                    exec(
                        tx,
                        "INSERT INTO tickets (order_id, ticket_id, restaurant_id, state) VALUES ($1, $2, $3, 'CREATE_PENDING')",
                        &[&order, &ticket, &c.restaurant_id],
                    )
                    .await?;
                    Ok(json!({"ticketId": ticket}))
                }
                commands::CANCEL_CREATE_TICKET => {
                    let _: OrderRef = cmd.payload_as().map_err(bad)?;
                    exec(tx, "UPDATE tickets SET state = 'CANCELLED' WHERE order_id = $1 AND state = 'CREATE_PENDING'", &[&order]).await?;
                    Ok(json!({}))
                }
                commands::CONFIRM_CREATE_TICKET => {
                    exec(tx, "UPDATE tickets SET state = 'AWAITING_ACCEPTANCE' WHERE order_id = $1 AND state = 'CREATE_PENDING'", &[&order]).await?;
                    Ok(json!({}))
                }
                commands::BEGIN_CANCEL_TICKET => {
                    wait_while_held(hold, &format!("cancel:{order}")).await;
                    let (restaurant,): (String,) =
                        sqlx::query_as("SELECT restaurant_id FROM tickets WHERE order_id = $1")
                            .bind(&order)
                            .fetch_one(tx.conn())
                            .await
                            .map_err(retry)?;
                    if restaurant == BUSY_KITCHEN || state.as_deref() != Some("AWAITING_ACCEPTANCE")
                    {
                        return Err(CommandError::failure(
                            commands::TICKET_NOT_CANCELLABLE,
                            json!({"state": state}),
                        ));
                    }
                    exec(tx, "UPDATE tickets SET before_cancel = state, state = 'CANCEL_PENDING' WHERE order_id = $1", &[&order]).await?;
                    Ok(json!({}))
                }
                commands::UNDO_BEGIN_CANCEL_TICKET => {
                    exec(tx, "UPDATE tickets SET state = before_cancel WHERE order_id = $1 AND state = 'CANCEL_PENDING'", &[&order]).await?;
                    Ok(json!({}))
                }
                commands::CONFIRM_CANCEL_TICKET => {
                    exec(tx, "UPDATE tickets SET state = 'CANCELLED' WHERE order_id = $1 AND state = 'CANCEL_PENDING'", &[&order]).await?;
                    Ok(json!({}))
                }
                _ => Err(CommandError::failure("UnknownCommand", json!({"type": t}))),
            }
        }
        ("accounting", commands::AUTHORIZE_CARD) => {
            let c: AuthorizeCard = cmd.payload_as().map_err(bad)?;
            exec(
                tx,
                "INSERT INTO commands (order_id, type) VALUES ($1, $2)",
                &[&order, &t],
            )
            .await?;
            if c.consumer_id == DECLINER {
                return Err(CommandError::failure(commands::PAYMENT_DECLINED, json!({})));
            }
            let id = format!("a-{order}");
            sqlx::query("INSERT INTO authorizations (order_id, id, total, state) VALUES ($1, $2, $3, 'AUTHORIZED')")
                .bind(&order)
                .bind(&id)
                .bind(c.order_total.0)
                .execute(tx.conn())
                .await
                .map_err(retry)?;
            Ok(json!({"authorizationId": id}))
        }
        ("accounting", commands::REVERSE_AUTHORIZATION) => {
            let _: OrderRef = cmd.payload_as().map_err(bad)?;
            exec(
                tx,
                "INSERT INTO commands (order_id, type) VALUES ($1, $2)",
                &[&order, &t],
            )
            .await?;
            exec(
                tx,
                "UPDATE authorizations SET state = 'REVERSED' WHERE order_id = $1",
                &[&order],
            )
            .await?;
            Ok(json!({}))
        }
        _ => Err(CommandError::failure("UnknownCommand", json!({"type": t}))),
    }
}

/// Starts a stand-in `who` (`consumer`, `kitchen`, `accounting`) on its own database.
async fn participant(
    who: &'static str,
    dir: &TempDir,
    bus: &Arc<dyn Bus>,
    hold: &Hold,
    stop: &CancellationToken,
) -> (Store, Consumer) {
    let store = Store::connect(&dir.sqlite_url(&format!("{who}.db")))
        .await
        .unwrap();
    store.migrate(who, PARTICIPANT_TABLES).await.unwrap();
    let outbox = Outbox::new(store.clone()).await.unwrap();
    tokio::spawn(outbox.clone().run_relay(bus.clone(), stop.clone()));
    let destination = format!("{who}.commands");
    let inbox = Inbox::new(store.clone(), &destination).await.unwrap();
    let hold = hold.clone();
    let handler = command_handler(inbox, outbox, move |tx, cmd| {
        let hold = hold.clone();
        Box::pin(async move { handle(who, tx, cmd, &hold).await })
    });
    let consumer = bus
        .subscribe(Subscription::new(destination, who), handler)
        .await
        .unwrap();
    (store, consumer)
}

// ---------------------------------------------------------------- the world

struct World {
    dir: TempDir,
    config: OrderConfig,
    base: String,
    http: reqwest::Client,
    bus: Arc<dyn Bus>,
    order: Store,
    /// Stops the order service alone (a child of `stop`).
    order_stop: CancellationToken,
    order_tasks: Vec<JoinHandle<()>>,
    consumer: Store,
    kitchen: Store,
    accounting: Store,
    events: Arc<Mutex<Vec<Message>>>,
    hold: Hold,
    stop: CancellationToken,
    _consumers: Vec<Consumer>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A restaurant every test can order from: pizza 10.00 (unlimited), salad 4.50 (3 left).
const PIZZERIA: &str = "pizzeria";

async fn world(name: &str) -> World {
    let dir = TempDir::new(&format!("order-{name}"));
    let stop = CancellationToken::new();
    let bus_url = dir.sqlite_url("bus.db");
    let bus: Arc<dyn Bus> = keel_bus::connect(&bus_url).await.unwrap();
    let hold: Hold = Arc::default();
    let (consumer, c1) = participant("consumer", &dir, &bus, &hold, &stop).await;
    let (kitchen, c2) = participant("kitchen", &dir, &bus, &hold, &stop).await;
    let (accounting, c3) = participant("accounting", &dir, &bus, &hold, &stop).await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let c4 = bus
        .subscribe(
            Subscription::new(destinations::ORDER_EVENTS, "test"),
            handler_fn(move |d| {
                sink.lock().unwrap().push(d.message);
                async { Ok(()) }
            }),
        )
        .await
        .unwrap();

    let config = OrderConfig {
        database: dir.sqlite_url("order.db"),
        bus: bus_url,
        registration: None,
    };
    let order_stop = stop.child_token();
    let (base, store, order_tasks) = start_order(&config, &order_stop).await;

    let w = World {
        dir,
        config,
        base,
        http: reqwest::Client::new(),
        bus,
        order: store,
        order_stop,
        order_tasks,
        consumer,
        kitchen,
        accounting,
        events,
        hold,
        stop,
        _consumers: vec![c1, c2, c3, c4],
    };
    w.publish_restaurant(
        &Message::typed(
            destinations::RESTAURANT_EVENTS,
            events::RESTAURANT_CREATED,
            SCHEMA_VERSION,
            &pizzeria(PIZZERIA, "Pizzeria"),
        )
        .unwrap(),
    )
    .await;
    w.publish_restaurant(
        &Message::typed(
            destinations::RESTAURANT_EVENTS,
            events::RESTAURANT_CREATED,
            SCHEMA_VERSION,
            &pizzeria(BUSY_KITCHEN, "Busy kitchen"),
        )
        .unwrap(),
    )
    .await;
    w.wait_for(
        || async {
            w.restaurant_name(BUSY_KITCHEN).await.is_some()
                && w.restaurant_name(PIZZERIA).await.is_some()
        },
        "the replica",
    )
    .await;
    w
}

/// Starts the order service — [`ftgo_order::app`] behind the chassis's HTTP stack — on a
/// free port until `stop`: its base URL, its store, and its tasks (done once stopped).
async fn start_order(
    config: &OrderConfig,
    stop: &CancellationToken,
) -> (String, Store, Vec<JoinHandle<()>>) {
    let App {
        router,
        store,
        background,
        ..
    } = ftgo_order::app(config, stop.clone()).await.unwrap();
    let mut keel = KeelConfig {
        app: config.clone(),
        ..KeelConfig::default()
    };
    keel.server.listen = "127.0.0.1:0".parse().unwrap();
    let service = Service::from_config("order", keel).handle_signals(false);
    let bound = service.bind().await.unwrap();
    let base = format!("http://{}", bound.local_addr().unwrap());
    let shutdown = bound.shutdown_handle();
    let s = stop.clone();
    let tasks = vec![
        tokio::spawn(background.stopped()),
        tokio::spawn(async move {
            s.cancelled().await;
            shutdown.shutdown();
        }),
        tokio::spawn(async move { bound.serve(router).await.unwrap() }),
    ];
    (base, store, tasks)
}

fn pizzeria(id: &str, name: &str) -> RestaurantCreated {
    RestaurantCreated {
        restaurant_id: id.to_owned(),
        name: name.to_owned(),
        menu: vec![
            MenuItem {
                id: "pizza".to_owned(),
                name: "Pizza".to_owned(),
                price: Money(1000),
                stock: None,
            },
            MenuItem {
                id: "salad".to_owned(),
                name: "Salad".to_owned(),
                price: Money(450),
                stock: Some(3),
            },
        ],
    }
}

impl World {
    /// Stops the order service (all its tasks end), then starts it again on the same
    /// database and bus.
    async fn restart_order(&mut self) {
        self.order_stop.cancel();
        for t in self.order_tasks.drain(..) {
            t.await.unwrap();
        }
        self.order.close().await;
        self.order_stop = self.stop.child_token();
        let (base, store, tasks) = start_order(&self.config, &self.order_stop).await;
        (self.base, self.order, self.order_tasks) = (base, store, tasks);
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn publish_restaurant(&self, m: &Message) {
        let key = m.payload["restaurantId"].as_str().unwrap().to_owned();
        self.bus.publish(&m.clone().with_key(key)).await.unwrap();
    }

    async fn wait_for<F, Fut>(&self, mut ok: F, what: &str)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        for _ in 0..600 {
            if ok().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// Places an order; returns its id (asserting the 201).
    async fn place(
        &self,
        consumer: &str,
        restaurant: &str,
        items: &[(&str, i64)],
    ) -> (String, Value) {
        let lines: Vec<Value> = items
            .iter()
            .map(|(id, q)| json!({"menuItemId": id, "quantity": q}))
            .collect();
        let (status, body) = self
            .post(
                "/orders",
                json!({"consumerId": consumer, "restaurantId": restaurant, "lineItems": lines,
                       "deliveryAddress": "1 Main St", "deliveryTime": "2030-01-01T12:00:00Z"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (body["orderId"].as_str().unwrap().to_owned(), body)
    }

    /// Waits until the order is in a state other than `pending`, and returns it.
    async fn settled(&self, id: &str, pending: &str) -> Value {
        for _ in 0..600 {
            let (status, o) = self.get(&format!("/orders/{id}")).await;
            assert_eq!(status, 200, "{o}");
            if o["state"] != pending {
                return o;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("order {id} stayed {pending}");
    }

    /// The one saga of `saga_type` for `order`, once it has ended.
    async fn saga(&self, saga_type: &str, order: &str) -> Value {
        for _ in 0..600 {
            let (_, list) = self
                .get(&format!("/sagas?type={saga_type}&limit=1000"))
                .await;
            for s in list.as_array().unwrap() {
                let (_, d) = self
                    .get(&format!("/sagas/{}", s["id"].as_str().unwrap()))
                    .await;
                if d["data"]["orderId"] == order
                    && ["COMPLETED", "COMPENSATED", "FAILED"]
                        .contains(&d["state"].as_str().unwrap())
                {
                    return d;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no ended {saga_type} saga for {order}");
    }

    async fn commands(store: &Store, order: &str) -> Vec<String> {
        sqlx::query_as::<_, (String,)>("SELECT type FROM commands WHERE order_id = $1 ORDER BY seq")
            .bind(order)
            .fetch_all(store.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.0)
            .collect()
    }

    async fn ticket(&self, order: &str) -> Option<String> {
        sqlx::query_as::<_, (String,)>("SELECT state FROM tickets WHERE order_id = $1")
            .bind(order)
            .fetch_optional(self.kitchen.pool())
            .await
            .unwrap()
            .map(|r| r.0)
    }

    async fn authorization(&self, order: &str) -> Option<(String, i64)> {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT state, total FROM authorizations WHERE order_id = $1",
        )
        .bind(order)
        .fetch_optional(self.accounting.pool())
        .await
        .unwrap()
    }

    /// The events published for `order` so far: (type, message).
    fn events_of(&self, order: &str) -> Vec<(String, Message)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.payload["orderId"] == order)
            .map(|m| (m.message_type().unwrap_or_default().to_owned(), m.clone()))
            .collect()
    }

    async fn wait_event(&self, order: &str, event_type: &str) -> Message {
        for _ in 0..400 {
            if let Some((_, m)) = self
                .events_of(order)
                .into_iter()
                .find(|(t, _)| t == event_type)
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no {event_type} for {order}: {:?}", self.events_of(order));
    }

    async fn restaurant_name(&self, id: &str) -> Option<String> {
        sqlx::query_as::<_, (String,)>("SELECT name FROM restaurants WHERE id = $1")
            .bind(id)
            .fetch_optional(self.order.pool())
            .await
            .unwrap()
            .map(|r| r.0)
    }

    async fn stock(&self, restaurant: &str, item: &str) -> (Option<i64>, i64) {
        let (stock,): (Option<i64>,) =
            sqlx::query_as("SELECT stock FROM menu_items WHERE restaurant_id = $1 AND id = $2")
                .bind(restaurant)
                .bind(item)
                .fetch_one(self.order.pool())
                .await
                .unwrap();
        let (version,): (i64,) =
            sqlx::query_as("SELECT stock_version FROM restaurants WHERE id = $1")
                .bind(restaurant)
                .fetch_one(self.order.pool())
                .await
                .unwrap();
        (stock, version)
    }
}

fn line_items(o: &Value) -> Vec<LineItem> {
    serde_json::from_value(o["lineItems"].clone()).unwrap()
}

// ---------------------------------------------------------------- the approved path

#[tokio::test]
async fn a_valid_order_is_approved_with_ticket_and_authorization_and_announced() {
    let w = world("approved").await;
    let (id, created) = w
        .place("alice", PIZZERIA, &[("pizza", 2), ("salad", 3)])
        .await;
    assert_eq!(created["state"], "APPROVAL_PENDING");

    let o = w.settled(&id, "APPROVAL_PENDING").await;
    assert_eq!(o["state"], "APPROVED", "{o}");
    assert_eq!(o["orderTotal"], "33.50");
    assert_eq!(o["consumerId"], "alice");
    assert_eq!(o["restaurantId"], PIZZERIA);
    assert_eq!(o["ticketId"], format!("t-{id}"));
    assert_eq!(o["authorizationId"], format!("a-{id}"));
    assert_eq!(o["deliveryAddress"], "1 Main St");
    assert!(o.get("rejectionReason").is_none(), "{o}");
    let items = line_items(&o);
    assert_eq!(
        items,
        vec![
            LineItem {
                menu_item_id: "pizza".into(),
                name: "Pizza".into(),
                quantity: 2,
                price: Money(1000)
            },
            LineItem {
                menu_item_id: "salad".into(),
                name: "Salad".into(),
                quantity: 3,
                price: Money(450)
            },
        ]
    );

    // The participants saw the contract's commands, each once, in saga order.
    assert_eq!(
        World::commands(&w.consumer, &id).await,
        vec!["ValidateOrderByConsumer"]
    );
    assert_eq!(
        World::commands(&w.kitchen, &id).await,
        vec!["CreateTicket", "ConfirmCreateTicket"]
    );
    assert_eq!(
        World::commands(&w.accounting, &id).await,
        vec!["AuthorizeCard"]
    );
    assert_eq!(w.ticket(&id).await.as_deref(), Some("AWAITING_ACCEPTANCE"));
    assert_eq!(
        w.authorization(&id).await,
        Some(("AUTHORIZED".into(), 3350))
    );

    let m = w.wait_event(&id, events::ORDER_APPROVED).await;
    assert_eq!(m.key.as_deref(), Some(id.as_str()));
    assert_eq!(m.header("schema-version"), Some("1"));
    let e: OrderDetails = m.payload_as().unwrap();
    assert_eq!(e.order_total, Money(3350));
    assert_eq!(e.consumer_id, "alice");
    assert_eq!(e.line_items, items);

    let saga = w.saga("create-order", &id).await;
    assert_eq!(saga["state"], "COMPLETED", "{saga}");
    assert_eq!(saga["data"]["ticketId"], format!("t-{id}"));
    // Only the approval: no rejection event.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The creation and the approval, each with the order's version after it.
    let types: Vec<String> = w.events_of(&id).into_iter().map(|(t, _)| t).collect();
    assert_eq!(types, vec![events::ORDER_CREATED, events::ORDER_APPROVED]);
    let c: events::OrderCreated = w
        .wait_event(&id, events::ORDER_CREATED)
        .await
        .payload_as()
        .unwrap();
    assert_eq!((c.version, c.order_total), (1, Money(3350)));
    assert_eq!(c.delivery_address.as_deref(), Some("1 Main St"));
    let a: events::Versioned<OrderDetails> = m.payload_as().unwrap();
    assert_eq!(a.version, 2);
    assert_eq!(o["version"], 2);
}

#[tokio::test]
async fn commands_answer_with_the_consistency_token_of_their_event() {
    let w = world("tokens").await;
    let lines = json!([{"menuItemId": "pizza", "quantity": 1}]);
    let resp = w
        .http
        .post(format!("{}/orders", w.base))
        .json(&json!({"consumerId": "gina", "restaurantId": PIZZERIA, "lineItems": lines}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let header = resp.headers()["keel-consistency-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = resp.json().await.unwrap();
    let id = body["orderId"].as_str().unwrap().to_owned();
    assert_eq!(body["consistencyToken"], format!("{id}:1"));
    assert_eq!(header, format!("{id}:1"));
    assert_eq!(
        w.settled(&id, "APPROVAL_PENDING").await["state"],
        "APPROVED"
    );

    let resp = w
        .http
        .post(format!("{}/orders/{id}/cancel", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(
        resp.headers()["keel-consistency-token"],
        format!("{id}:3").as_str()
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["consistencyToken"], format!("{id}:3"));
    // The token names the event the command published: OrderCancellationStarted, version 3.
    let m = w.wait_event(&id, events::ORDER_CANCELLATION_STARTED).await;
    let e: events::OrderCancellation = m.payload_as().unwrap();
    assert_eq!((e.version, e.reason), (3, None));
    assert_eq!(w.settled(&id, "CANCEL_PENDING").await["version"], 4);
    let c: events::Versioned<OrderDetails> = w
        .wait_event(&id, events::ORDER_CANCELLED)
        .await
        .payload_as()
        .unwrap();
    assert_eq!(c.version, 4);

    // An order rejected in the request's own transaction: the token is the rejection's.
    let (r, created) = w.place("gina", PIZZERIA, &[("sushi", 1)]).await;
    assert_eq!(created["state"], "REJECTED");
    assert_eq!(created["consistencyToken"], format!("{r}:2"));
    let rejected: events::Versioned<events::OrderRejected> = w
        .wait_event(&r, events::ORDER_REJECTED)
        .await
        .payload_as()
        .unwrap();
    assert_eq!(rejected.version, 2);
}

// ---------------------------------------------------------------- rejections

#[tokio::test]
async fn an_unknown_consumer_is_rejected_before_any_ticket() {
    let w = world("unknown-consumer").await;
    let (id, _) = w.place(GHOST, PIZZERIA, &[("pizza", 1)]).await;
    let o = w.settled(&id, "APPROVAL_PENDING").await;
    assert_eq!(o["state"], "REJECTED", "{o}");
    assert_eq!(o["rejectionReason"], "UNKNOWN_CONSUMER");
    assert!(o.get("ticketId").is_none());
    assert!(World::commands(&w.kitchen, &id).await.is_empty());
    assert!(World::commands(&w.accounting, &id).await.is_empty());
    let m = w.wait_event(&id, events::ORDER_REJECTED).await;
    assert_eq!(m.payload["reason"], "UNKNOWN_CONSUMER");
    assert_eq!(m.key.as_deref(), Some(id.as_str()));
    let saga = w.saga("create-order", &id).await;
    assert_eq!(saga["state"], "COMPENSATED");
    assert_eq!(saga["data"]["failure"], "UnknownConsumer");
}

#[tokio::test]
async fn an_order_above_the_limit_is_rejected() {
    let w = world("limit").await;
    let (id, _) = w.place("bob", PIZZERIA, &[("pizza", 11)]).await;
    let o = w.settled(&id, "APPROVAL_PENDING").await;
    assert_eq!(o["state"], "REJECTED", "{o}");
    assert_eq!(o["rejectionReason"], "ORDER_LIMIT_EXCEEDED");
    assert_eq!(o["orderTotal"], "110.00");
    assert!(World::commands(&w.kitchen, &id).await.is_empty());
    let m = w.wait_event(&id, events::ORDER_REJECTED).await;
    assert_eq!(m.payload["reason"], "ORDER_LIMIT_EXCEEDED");
}

#[tokio::test]
async fn an_unknown_or_out_of_stock_item_is_rejected_at_once_without_commands() {
    let w = world("unavailable").await;
    // Unknown item.
    let (a, created) = w
        .place("carol", PIZZERIA, &[("pizza", 1), ("sushi", 1)])
        .await;
    // The saga's first steps ran in the request's transaction.
    assert_eq!(created["state"], "REJECTED", "{created}");
    assert_eq!(created["rejectionReason"], "MENU_ITEM_UNAVAILABLE");
    // More salads than the 3 in stock, over two lines.
    let (b, _) = w
        .place("carol", PIZZERIA, &[("salad", 2), ("salad", 2)])
        .await;
    for id in [&a, &b] {
        let o = w.settled(id, "APPROVAL_PENDING").await;
        assert_eq!(o["state"], "REJECTED", "{o}");
        assert_eq!(o["rejectionReason"], "MENU_ITEM_UNAVAILABLE");
        let m = w.wait_event(id, events::ORDER_REJECTED).await;
        assert_eq!(m.payload["reason"], "MENU_ITEM_UNAVAILABLE");
        let saga = w.saga("create-order", id).await;
        assert_eq!(saga["state"], "COMPENSATED", "{saga}");
        let kinds: Vec<&str> = saga["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert!(!kinds.contains(&"COMMAND_SENT"), "{kinds:?}");
    }
    assert_eq!(
        w.get(&format!("/orders/{a}")).await.1["lineItems"][1]["name"],
        ""
    );
    assert_eq!(
        w.saga("create-order", &a).await["data"]["unavailable"],
        json!(["sushi"])
    );
    assert_eq!(
        w.saga("create-order", &b).await["data"]["unavailable"],
        json!(["salad"])
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in [&a, &b] {
        for s in [&w.consumer, &w.kitchen, &w.accounting] {
            assert!(World::commands(s, id).await.is_empty());
        }
    }
    // Exactly the stock is fine.
    let (c, _) = w.place("carol", PIZZERIA, &[("salad", 3)]).await;
    assert_eq!(w.settled(&c, "APPROVAL_PENDING").await["state"], "APPROVED");
}

#[tokio::test]
async fn a_declined_card_is_rejected_and_its_ticket_cancelled() {
    let w = world("declined").await;
    let (id, _) = w.place(DECLINER, PIZZERIA, &[("pizza", 1)]).await;
    let o = w.settled(&id, "APPROVAL_PENDING").await;
    assert_eq!(o["state"], "REJECTED", "{o}");
    assert_eq!(o["rejectionReason"], "PAYMENT_DECLINED");
    // The ticket was created, so it was cancelled (CancelCreateTicket) before the order
    // was rejected.
    assert_eq!(o["ticketId"], format!("t-{id}"));
    assert!(o.get("authorizationId").is_none());
    assert_eq!(w.ticket(&id).await.as_deref(), Some("CANCELLED"));
    assert_eq!(
        World::commands(&w.kitchen, &id).await,
        vec!["CreateTicket", "CancelCreateTicket"]
    );
    assert_eq!(w.authorization(&id).await, None);
    let m = w.wait_event(&id, events::ORDER_REJECTED).await;
    assert_eq!(m.payload["reason"], "PAYMENT_DECLINED");
    let saga = w.saga("create-order", &id).await;
    assert_eq!(saga["state"], "COMPENSATED");
    let compensated: Vec<&str> = saga["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "COMPENSATED" && e.get("stepName").is_some())
        .map(|e| e["stepName"].as_str().unwrap())
        .collect();
    assert_eq!(compensated, vec!["create ticket", "create order"]);
}

// ---------------------------------------------------------------- cancellation

#[tokio::test]
async fn cancelling_an_approved_order_reverses_the_payment_and_cancels_the_ticket() {
    let w = world("cancel").await;
    let (id, _) = w.place("dave", PIZZERIA, &[("pizza", 1)]).await;
    assert_eq!(
        w.settled(&id, "APPROVAL_PENDING").await["state"],
        "APPROVED"
    );

    let (status, body) = w.post(&format!("/orders/{id}/cancel"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body,
        json!({"orderId": id, "state": "CANCEL_PENDING", "consistencyToken": format!("{id}:3")})
    );
    let o = w.settled(&id, "CANCEL_PENDING").await;
    assert_eq!(o["state"], "CANCELLED", "{o}");
    assert_eq!(w.authorization(&id).await, Some(("REVERSED".into(), 1000)));
    assert_eq!(w.ticket(&id).await.as_deref(), Some("CANCELLED"));
    assert_eq!(
        World::commands(&w.kitchen, &id).await,
        vec![
            "CreateTicket",
            "ConfirmCreateTicket",
            "BeginCancelTicket",
            "ConfirmCancelTicket"
        ]
    );
    assert_eq!(
        World::commands(&w.accounting, &id).await,
        vec!["AuthorizeCard", "ReverseAuthorization"]
    );
    let m = w.wait_event(&id, events::ORDER_CANCELLED).await;
    let e: OrderDetails = m.payload_as().unwrap();
    assert_eq!(e.order_total, Money(1000));
    assert_eq!(m.key.as_deref(), Some(id.as_str()));
    assert_eq!(w.saga("cancel-order", &id).await["state"], "COMPLETED");

    // Cancelled is final.
    let (status, p) = w.post(&format!("/orders/{id}/cancel"), json!({})).await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(p["state"], "CANCELLED");
}

#[tokio::test]
async fn pending_orders_are_locked_against_cancellation() {
    let w = world("locks").await;
    // The consumer service takes its time: the order stays APPROVAL_PENDING.
    w.hold.lock().unwrap().insert("erin".to_owned());
    let (id, _) = w.place("erin", PIZZERIA, &[("pizza", 1)]).await;
    let (status, p) = w.post(&format!("/orders/{id}/cancel"), json!({})).await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(p["state"], "APPROVAL_PENDING");
    assert!(
        p["detail"].as_str().unwrap().contains("APPROVAL_PENDING"),
        "{p}"
    );
    assert_eq!(
        w.get(&format!("/orders/{id}")).await.1["state"],
        "APPROVAL_PENDING"
    );
    w.hold.lock().unwrap().remove("erin");
    assert_eq!(
        w.settled(&id, "APPROVAL_PENDING").await["state"],
        "APPROVED"
    );

    // The kitchen takes its time with the cancellation: CANCEL_PENDING is a lock too.
    w.hold.lock().unwrap().insert(format!("cancel:{id}"));
    let (status, _) = w.post(&format!("/orders/{id}/cancel"), json!({})).await;
    assert_eq!(status, 202);
    let (status, p) = w.post(&format!("/orders/{id}/cancel"), json!({})).await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(p["state"], "CANCEL_PENDING");
    w.hold.lock().unwrap().remove(&format!("cancel:{id}"));
    assert_eq!(w.settled(&id, "CANCEL_PENDING").await["state"], "CANCELLED");
    // Exactly one cancel-order saga ran.
    let (_, sagas) = w.get("/sagas?type=cancel-order").await;
    assert_eq!(sagas.as_array().unwrap().len(), 1, "{sagas}");

    // A rejected order cannot be cancelled either.
    let (r, _) = w.place(GHOST, PIZZERIA, &[("pizza", 1)]).await;
    assert_eq!(w.settled(&r, "APPROVAL_PENDING").await["state"], "REJECTED");
    let (status, p) = w.post(&format!("/orders/{r}/cancel"), json!({})).await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(p["state"], "REJECTED");
}

#[tokio::test]
async fn a_ticket_that_can_no_longer_be_cancelled_leaves_the_order_approved() {
    let w = world("not-cancellable").await;
    let (id, _) = w.place("frank", BUSY_KITCHEN, &[("pizza", 1)]).await;
    assert_eq!(
        w.settled(&id, "APPROVAL_PENDING").await["state"],
        "APPROVED"
    );
    let (status, _) = w.post(&format!("/orders/{id}/cancel"), json!({})).await;
    assert_eq!(status, 202);
    let o = w.settled(&id, "CANCEL_PENDING").await;
    assert_eq!(o["state"], "APPROVED", "{o}");
    let saga = w.saga("cancel-order", &id).await;
    assert_eq!(saga["state"], "COMPENSATED", "{saga}");
    assert_eq!(saga["data"]["failure"], "TicketNotCancellable");
    assert!(
        saga["error"]
            .as_str()
            .unwrap()
            .contains("TicketNotCancellable"),
        "{saga}"
    );
    // Nothing else was touched: the payment stands, the ticket too.
    assert_eq!(
        w.authorization(&id).await,
        Some(("AUTHORIZED".into(), 1000))
    );
    assert_eq!(w.ticket(&id).await.as_deref(), Some("AWAITING_ACCEPTANCE"));
    assert_eq!(
        World::commands(&w.accounting, &id).await,
        vec!["AuthorizeCard"]
    );
    // The failed cancellation is announced with the order's new version.
    let m = w.wait_event(&id, events::ORDER_CANCELLATION_FAILED).await;
    let e: events::OrderCancellation = m.payload_as().unwrap();
    assert_eq!(e.version, 4);
    assert_eq!(e.reason.as_deref(), Some("TicketNotCancellable"));
    assert_eq!(o["version"], 4);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        w.events_of(&id)
            .iter()
            .all(|(t, _)| t != events::ORDER_CANCELLED)
    );
}

// ---------------------------------------------------------------- crash safety

#[tokio::test]
async fn sagas_resume_after_the_order_service_restarts() {
    let mut w = world("restart").await;
    w.hold.lock().unwrap().insert("ivan".to_owned());
    let (id, _) = w.place("ivan", PIZZERIA, &[("pizza", 1)]).await;
    // The command has left the order service; the consumer holds it.
    w.wait_for(
        || async {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM keel_outbox")
                .fetch_one(w.order.pool())
                .await
                .unwrap();
            n == 0
        },
        "the outbox to drain",
    )
    .await;
    // The order service goes down; the consumer's reply arrives while nobody listens.
    w.order_stop.cancel();
    for t in w.order_tasks.drain(..) {
        t.await.unwrap();
    }
    w.hold.lock().unwrap().remove("ivan");
    w.wait_for(
        || async { !World::commands(&w.consumer, &id).await.is_empty() },
        "the consumer's answer",
    )
    .await;
    w.restart_order().await;
    let o = w.settled(&id, "APPROVAL_PENDING").await;
    assert_eq!(o["state"], "APPROVED", "{o}");
    assert_eq!(w.saga("create-order", &id).await["state"], "COMPLETED");
    assert_eq!(
        World::commands(&w.kitchen, &id).await,
        vec!["CreateTicket", "ConfirmCreateTicket"]
    );
    w.wait_event(&id, events::ORDER_APPROVED).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // OrderCreated and OrderApproved, each once.
    assert_eq!(w.events_of(&id).len(), 2);
}

// ---------------------------------------------------------------- the replica

#[tokio::test]
async fn restaurant_events_are_applied_once_and_stale_stock_is_ignored() {
    let w = world("replica").await;
    let created = Message::typed(
        destinations::RESTAURANT_EVENTS,
        events::RESTAURANT_CREATED,
        SCHEMA_VERSION,
        &pizzeria("trattoria", "Trattoria"),
    )
    .unwrap();
    let stock = |version: u64, salad: u32| {
        Message::typed(
            destinations::RESTAURANT_EVENTS,
            events::MENU_STOCK_CHANGED,
            SCHEMA_VERSION,
            &MenuStockChanged {
                restaurant_id: "trattoria".into(),
                stock: vec![MenuStock {
                    menu_item_id: "salad".into(),
                    stock: salad,
                }],
                version,
            },
        )
        .unwrap()
    };
    let v2 = stock(2, 1);
    let mut renamed = pizzeria("trattoria", "Trattoria Nuova");
    renamed.menu[1].price = Money(500);
    renamed.menu[1].stock = Some(50);
    let marker = Message::typed(
        destinations::RESTAURANT_EVENTS,
        events::RESTAURANT_CREATED,
        SCHEMA_VERSION,
        &renamed,
    )
    .unwrap();
    // The creation twice (the same message: a relay's republish), the stock at version 2
    // twice, then version 1 (late, stale), then a late copy of the creation with other
    // values: stock must stay at version 2's.
    for m in [&created, &created, &v2, &v2, &stock(1, 9), &marker] {
        w.publish_restaurant(m).await;
    }
    w.wait_for(
        || async { w.restaurant_name("trattoria").await.as_deref() == Some("Trattoria Nuova") },
        "the last restaurant event",
    )
    .await;
    assert_eq!(w.stock("trattoria", "salad").await, (Some(1), 2));
    assert_eq!(w.stock("trattoria", "pizza").await, (None, 2));
    let (handled,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM keel_inbox WHERE consumer = 'order.restaurant-events' AND message_id IN ($1, $2)",
    )
    .bind(&created.id)
    .bind(&v2.id)
    .fetch_one(w.order.pool())
    .await
    .unwrap();
    assert_eq!(handled, 2);

    // The replica decides: 2 salads are more than the 1 left; the new price applies.
    let (a, _) = w.place("gina", "trattoria", &[("salad", 2)]).await;
    assert_eq!(
        w.settled(&a, "APPROVAL_PENDING").await["rejectionReason"],
        "MENU_ITEM_UNAVAILABLE"
    );
    w.publish_restaurant(&stock(3, 5)).await;
    w.wait_for(
        || async { w.stock("trattoria", "salad").await == (Some(5), 3) },
        "stock version 3",
    )
    .await;
    let (b, _) = w.place("gina", "trattoria", &[("salad", 2)]).await;
    let o = w.settled(&b, "APPROVAL_PENDING").await;
    assert_eq!(o["state"], "APPROVED", "{o}");
    assert_eq!(o["orderTotal"], "10.00");
}

// ---------------------------------------------------------------- bad input

#[tokio::test]
async fn bad_input_is_a_problem_naming_the_field() {
    let w = world("bad-input").await;
    let good = json!({"consumerId": "hal", "restaurantId": PIZZERIA,
        "lineItems": [{"menuItemId": "pizza", "quantity": 1}]});
    let with = |path: &[&str], v: Value| {
        let mut b = good.clone();
        let mut at = &mut b;
        for p in &path[..path.len() - 1] {
            at = match p.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*p],
            };
        }
        at[path[path.len() - 1]] = v;
        b
    };
    let without = |field: &str| {
        let mut b = good.clone();
        b.as_object_mut().unwrap().remove(field);
        b
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (without("consumerId"), 422, "consumerId"),
        (without("lineItems"), 422, "lineItems"),
        (with(&["consumerId"], json!(42)), 422, "consumerId"),
        (with(&["consumerId"], json!("  ")), 400, "consumerId"),
        (with(&["restaurantId"], json!("")), 400, "restaurantId"),
        (
            with(&["restaurantId"], json!("nowhere")),
            422,
            "restaurantId",
        ),
        (with(&["lineItems"], json!([])), 400, "lineItems"),
        (with(&["lineItems"], json!({"pizza": 1})), 422, "lineItems"),
        (
            with(&["lineItems", "0", "quantity"], json!(-1)),
            400,
            "lineItems[0].quantity",
        ),
        (
            with(&["lineItems", "0", "quantity"], json!(0)),
            400,
            "lineItems[0].quantity",
        ),
        (
            with(&["lineItems", "0", "quantity"], json!(1.5)),
            422,
            "lineItems[0].quantity",
        ),
        (
            with(&["lineItems", "0", "quantity"], json!("two")),
            422,
            "lineItems[0].quantity",
        ),
        (
            with(&["lineItems", "0", "menuItemId"], json!("")),
            400,
            "lineItems[0].menuItemId",
        ),
        (
            with(&["lineItems", "0", "price"], json!("1.00")),
            422,
            "lineItems[0].price",
        ),
        (with(&["deliveryAddress"], json!(7)), 422, "deliveryAddress"),
        (with(&["extra"], json!(true)), 422, "extra"),
        (json!([good.clone()]), 422, "[0]"),
    ];
    for (body, status, field) in cases {
        let r = w
            .http
            .post(w.url("/orders"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{body}"
        );
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["field"], field, "{body} → {p}");
        assert!(
            p["detail"]
                .as_str()
                .unwrap()
                .contains(field.trim_start_matches("[0]")),
            "{p}"
        );
    }
    // Not JSON at all, or not said to be.
    let r = w
        .http
        .post(w.url("/orders"))
        .header("content-type", "application/json")
        .body("{consumerId")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = w
        .http
        .post(w.url("/orders"))
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    // Unknown ids.
    let (status, p) = w.get("/orders/nope").await;
    assert_eq!((status, p["orderId"].as_str()), (404, Some("nope")));
    let (status, _) = w.post("/orders/nope/cancel", json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = w.get("/sagas/nope").await;
    assert_eq!(status, 404);
    let (status, _) = w.get("/sagas?state=SLEEPING").await;
    assert_eq!(status, 400);

    // None of it left an order or a saga behind, and the service still takes orders.
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM orders")
        .fetch_one(w.order.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
    let (_, sagas) = w.get("/sagas").await;
    assert_eq!(sagas, json!([]));
    let (id, _) = w.place("hal", PIZZERIA, &[("pizza", 1)]).await;
    assert_eq!(
        w.settled(&id, "APPROVAL_PENDING").await["state"],
        "APPROVED"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_the_endpoints() {
    let w = world("openapi").await;
    let (status, doc) = w.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    for (path, method) in [
        ("/orders", "post"),
        ("/orders/{orderId}", "get"),
        ("/orders/{orderId}/cancel", "post"),
        ("/sagas", "get"),
        ("/sagas/{sagaId}", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{path} {method}");
    }
    assert!(w.dir.0.join("order.db").exists());
}
