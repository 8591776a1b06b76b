//! The history view against the services it mirrors: the real order service (sagas,
//! outbox, order versions, consistency tokens) and the real kitchen, with stand-in
//! consumer and accounting participants on their own databases (accounting publishes the
//! contract's payment events as the real one does), all on one embedded bus, each behind
//! its HTTP API on a free port. After a mixed scenario — approved and accepted, unknown
//! consumer, declined card, cancelled — and again after a rebuild, the view agrees with
//! what the order service and the kitchen say.

use std::{sync::Arc, time::Duration};

use ftgo_contracts::{
    Money, SCHEMA_VERSION,
    commands::{self, AuthorizeCard, ValidateOrderByConsumer},
    destinations,
    events::{self, MenuItem, RestaurantCreated},
    payment_events as pe,
};
use ftgo_history::HistoryConfig;
use keel_chassis::{KeelConfig, Service};
use keel_messaging::{Bus, Consumer, Inbox, Message, Outbox, Subscription};
use keel_saga::{CommandError, command_handler};
use keel_store::{Store, Tx, testing::TempDir};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Serves `router` on a free port until `stop`; returns its base URL.
async fn serve<C>(
    name: &str,
    app: C,
    router: keel_chassis::axum::Router,
    stop: &CancellationToken,
) -> String
where
    C: serde::Serialize
        + serde::de::DeserializeOwned
        + Default
        + keel_chassis::Validate
        + Send
        + Sync
        + 'static,
{
    let mut keel = KeelConfig::<C> {
        app,
        ..KeelConfig::default()
    };
    keel.server.listen = "127.0.0.1:0".parse().unwrap();
    let bound = Service::from_config(name, keel)
        .handle_signals(false)
        .bind()
        .await
        .unwrap();
    let base = format!("http://{}", bound.local_addr().unwrap());
    let shutdown = bound.shutdown_handle();
    let s = stop.clone();
    tokio::spawn(async move {
        s.cancelled().await;
        shutdown.shutdown();
    });
    tokio::spawn(bound.serve(router));
    base
}

async fn publish_event(
    tx: &mut Tx,
    outbox: &Outbox,
    kind: &str,
    order_id: &str,
    body: &impl serde::Serialize,
) -> Result<(), CommandError> {
    let m = Message::typed(destinations::ACCOUNTING_EVENTS, kind, SCHEMA_VERSION, body)
        .map_err(|e| CommandError::Retry(e.to_string()))?
        .with_key(order_id);
    outbox
        .send(tx, &m)
        .await
        .map_err(|e| CommandError::Retry(e.to_string()))
}

/// Stand-in consumer (`ghost` is unknown) or accounting (`decliner`'s card is declined).
async fn participant(
    who: &'static str,
    dir: &TempDir,
    bus: &Arc<dyn Bus>,
    stop: &CancellationToken,
) -> Consumer {
    let store = Store::connect(&dir.sqlite_url(&format!("{who}.db")))
        .await
        .unwrap();
    let outbox = Outbox::new(store.clone()).await.unwrap();
    tokio::spawn(outbox.clone().run_relay(bus.clone(), stop.clone()));
    let destination = format!("{who}.commands");
    let inbox = Inbox::new(store.clone(), &destination).await.unwrap();
    let events = outbox.clone();
    let handler = command_handler(inbox, outbox, move |tx, cmd| {
        let events = events.clone();
        Box::pin(async move {
            let bad = |e: serde_json::Error| {
                CommandError::failure("BadCommand", json!({"error": e.to_string()}))
            };
            match cmd.message_type().unwrap_or_default() {
                commands::VALIDATE_ORDER_BY_CONSUMER => {
                    let c: ValidateOrderByConsumer = cmd.payload_as().map_err(bad)?;
                    if c.consumer_id == "ghost" {
                        return Err(CommandError::failure(commands::UNKNOWN_CONSUMER, json!({})));
                    }
                    Ok(json!({}))
                }
                commands::AUTHORIZE_CARD => {
                    let c: AuthorizeCard = cmd.payload_as().map_err(bad)?;
                    if c.consumer_id == "decliner" {
                        return Err(CommandError::failure(commands::PAYMENT_DECLINED, json!({})));
                    }
                    let e = pe::PaymentAuthorized {
                        order_id: c.order_id.clone(),
                        consumer_id: c.consumer_id.clone(),
                        authorization_id: format!("a-{}", c.order_id),
                        amount: c.order_total,
                        network: "card-rule".to_owned(),
                    };
                    publish_event(tx, &events, pe::PAYMENT_AUTHORIZED, &c.order_id, &e).await?;
                    Ok(json!({"authorizationId": e.authorization_id}))
                }
                commands::REVERSE_AUTHORIZATION => {
                    let order_id = cmd.payload["orderId"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let e = pe::PaymentReversed {
                        order_id: order_id.clone(),
                        authorization_id: format!("a-{order_id}"),
                        amount: Money(0),
                    };
                    publish_event(tx, &events, pe::PAYMENT_REVERSED, &order_id, &e).await?;
                    Ok(json!({}))
                }
                other => Err(CommandError::failure(
                    "UnknownCommand",
                    json!({"type": other}),
                )),
            }
        })
    });
    bus.subscribe(Subscription::new(destination, who), handler)
        .await
        .unwrap()
}

struct System {
    http: reqwest::Client,
    order: String,
    kitchen: String,
    history: String,
}

impl System {
    async fn call(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method, url);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn place(&self, consumer: &str) -> (String, String) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                format!("{}/orders", self.order),
                Some(json!({"consumerId": consumer, "restaurantId": "pizzeria",
                    "lineItems": [{"menuItemId": "pizza", "quantity": 2}]})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["orderId"].as_str().unwrap().to_owned(),
            body["consistencyToken"].as_str().unwrap().to_owned(),
        )
    }

    async fn order(&self, id: &str) -> Value {
        self.call(
            reqwest::Method::GET,
            format!("{}/orders/{id}", self.order),
            None,
        )
        .await
        .1
    }

    async fn settled(&self, id: &str) -> Value {
        for _ in 0..400 {
            let o = self.order(id).await;
            if !o["state"]
                .as_str()
                .unwrap_or_default()
                .ends_with("_PENDING")
            {
                return o;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("order {id} never settled");
    }

    /// The history row, read with a consistency token (the view may take a moment).
    async fn history(&self, id: &str, token: &str) -> Value {
        let (status, row) = self
            .call(
                reqwest::Method::GET,
                format!("{}/orders/{id}?consistencyToken={token}", self.history),
                None,
            )
            .await;
        assert_eq!(status, 200, "{row}");
        row
    }

    /// Checks that the view agrees with the order service (and the kitchen) on `id`.
    async fn agrees(&self, id: &str) -> Value {
        let o = self.order(id).await;
        let token = format!("{id}:{}", o["version"]);
        let row = self.history(id, &token).await;
        for field in [
            "state",
            "orderTotal",
            "consumerId",
            "restaurantId",
            "lineItems",
            "version",
        ] {
            assert_eq!(
                row[field], o[field],
                "{field} of {id}: view {row} vs order {o}"
            );
        }
        assert_eq!(row.get("rejectionReason"), o.get("rejectionReason"), "{id}");
        row
    }
}

#[tokio::test]
async fn the_view_matches_the_services_after_a_mixed_scenario_and_after_a_rebuild() {
    let dir = TempDir::new("history-system");
    let stop = CancellationToken::new();
    let bus_url = dir.sqlite_url("bus.db");
    let bus = keel_bus::connect(&bus_url).await.unwrap();
    let _consumer = participant("consumer", &dir, &bus, &stop).await;
    let _accounting = participant("accounting", &dir, &bus, &stop).await;

    let kitchen_config = ftgo_kitchen::KitchenConfig {
        database: dir.sqlite_url("kitchen.db"),
        bus: bus_url.clone(),
        registration: None,
    };
    let kitchen = ftgo_kitchen::app(&kitchen_config, stop.clone())
        .await
        .unwrap();
    tokio::spawn(kitchen.background);
    let kitchen_base = serve("kitchen", kitchen_config, kitchen.router, &stop).await;

    let order_config = ftgo_order::OrderConfig {
        database: dir.sqlite_url("order.db"),
        bus: bus_url.clone(),
        registration: None,
    };
    let order = ftgo_order::app(&order_config, stop.clone()).await.unwrap();
    tokio::spawn(order.background.stopped());
    let order_base = serve("order", order_config, order.router, &stop).await;

    let history_config = HistoryConfig {
        database: dir.sqlite_url("history.db"),
        bus: bus_url.clone(),
        consistency_wait_ms: 5000,
        ..HistoryConfig::default()
    };
    let history = ftgo_history::app(&history_config, stop.clone())
        .await
        .unwrap();
    tokio::spawn(history.background);
    let history_base = serve("order-history", history_config, history.router, &stop).await;

    let restaurant = RestaurantCreated {
        restaurant_id: "pizzeria".to_owned(),
        name: "Pizzeria".to_owned(),
        menu: vec![MenuItem {
            id: "pizza".to_owned(),
            name: "Pizza".to_owned(),
            price: Money(1000),
            stock: None,
        }],
    };
    bus.publish(
        &Message::typed(
            destinations::RESTAURANT_EVENTS,
            events::RESTAURANT_CREATED,
            SCHEMA_VERSION,
            &restaurant,
        )
        .unwrap()
        .with_key("pizzeria"),
    )
    .await
    .unwrap();
    let s = System {
        http: reqwest::Client::new(),
        order: order_base,
        kitchen: kitchen_base,
        history: history_base,
    };
    // The order service's replica must know the restaurant.
    let mut placed = None;
    for _ in 0..200 {
        let (status, _) = s
            .call(
                reqwest::Method::POST,
                format!("{}/orders", s.order),
                Some(json!({"consumerId": "ann", "restaurantId": "pizzeria",
                    "lineItems": [{"menuItemId": "pizza", "quantity": 2}]})),
            )
            .await;
        if status == 201 {
            placed = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        placed.is_some(),
        "the order service never learned the restaurant"
    );

    // Read your own write: the token of POST /orders finds the new order in the view.
    let (accepted, token) = s.place("ann").await;
    let row = s.history(&accepted, &token).await;
    assert_eq!(row["consumerId"], "ann");
    let (ghost, _) = s.place("ghost").await;
    let (declined, _) = s.place("decliner").await;
    let (cancelled, _) = s.place("ann").await;
    for id in [&accepted, &ghost, &declined, &cancelled] {
        s.settled(id).await;
    }
    // The kitchen accepts one ticket; another order is cancelled (its token is the
    // cancellation's event).
    let ticket = s.order(&accepted).await["ticketId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, t) = s
        .call(
            reqwest::Method::POST,
            format!("{}/tickets/{ticket}/accept", s.kitchen),
            Some(json!({"readyBy": "2099-01-01T12:00:00Z"})),
        )
        .await;
    assert_eq!(status, 200, "{t}");
    let (status, c) = s
        .call(
            reqwest::Method::POST,
            format!("{}/orders/{cancelled}/cancel", s.order),
            None,
        )
        .await;
    assert_eq!(status, 202, "{c}");
    let row = s
        .history(&cancelled, c["consistencyToken"].as_str().unwrap())
        .await;
    assert!(
        ["CANCEL_PENDING", "CANCELLED"].contains(&row["state"].as_str().unwrap()),
        "{row}"
    );
    s.settled(&cancelled).await;

    let check = |label: &'static str| {
        let s = &s;
        let (accepted, ghost, declined, cancelled) = (&accepted, &ghost, &declined, &cancelled);
        async move {
            // The payment's and the kitchen's events may trail the order's (other
            // destinations, no order between them): wait for both parts.
            let mut a = s.agrees(accepted).await;
            for _ in 0..200 {
                if a["ticket"]["state"] == "ACCEPTED" && a["payment"]["status"] == "AUTHORIZED" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
                a = s.agrees(accepted).await;
            }
            assert_eq!(a["state"], "APPROVED", "{label}");
            assert_eq!(a["payment"]["status"], "AUTHORIZED", "{label}: {a}");
            let (_, k) = s
                .call(
                    reqwest::Method::GET,
                    format!("{}/tickets/by-order/{accepted}", s.kitchen),
                    None,
                )
                .await;
            assert_eq!(a["ticket"]["ticketId"], k["ticketId"], "{label}");
            assert_eq!(a["ticket"]["readyBy"], k["readyBy"], "{label}");
            assert_eq!(
                s.agrees(ghost).await["rejectionReason"],
                "UNKNOWN_CONSUMER",
                "{label}"
            );
            let d = s.agrees(declined).await;
            assert_eq!(d["rejectionReason"], "PAYMENT_DECLINED", "{label}");
            let c = s.agrees(cancelled).await;
            assert_eq!(c["state"], "CANCELLED", "{label}");
            assert_eq!(c["version"], 4, "{label}");
            // The payment events travel apart from the order's: wait for them. (A failure
            // reply rolls its transaction back, so the stand-in cannot announce a decline.)
            let mut ok = false;
            for _ in 0..200 {
                if s.agrees(cancelled).await["payment"]["status"] == "REVERSED" {
                    ok = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            assert!(ok, "{label}: {cancelled} payment never REVERSED");
            let (_, d) = s
                .call(
                    reqwest::Method::GET,
                    format!("{}/dashboard", s.history),
                    None,
                )
                .await;
            // ann's first (probe) order is approved too: 2 × 20.00.
            assert_eq!(d["byState"]["APPROVED"], 2, "{label}: {d}");
            assert_eq!(d["byState"]["REJECTED"], 2, "{label}: {d}");
            assert_eq!(d["byState"]["CANCELLED"], 1, "{label}: {d}");
            assert_eq!(d["revenue"], "40.00", "{label}: {d}");
            d
        }
    };
    let before = check("after the scenario").await;

    let (status, r) = s
        .call(
            reqwest::Method::POST,
            format!("{}/admin/rebuild", s.history),
            None,
        )
        .await;
    assert_eq!(status, 202, "{r}");
    // Wait for the replay to bring every order back, then check again.
    for _ in 0..400 {
        let (_, d) = s
            .call(
                reqwest::Method::GET,
                format!("{}/dashboard", s.history),
                None,
            )
            .await;
        if d == before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let after = check("after the rebuild").await;
    assert_eq!(after, before);
    stop.cancel();
}
