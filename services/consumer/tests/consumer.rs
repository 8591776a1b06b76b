//! The consumer service through its real HTTP API and the real embedded bus: registration
//! and reading back, `ConsumerCreated` through the outbox, the `ValidateOrderByConsumer`
//! participant (success, both failures, a duplicate answered with the stored reply), and
//! bad input.

use std::sync::Arc;

use ftgo_consumer::{ConsumerConfig, app};
use ftgo_contracts::{
    Money, SCHEMA_VERSION,
    commands::{self, ValidateOrderByConsumer},
    destinations, events,
};
use ftgo_runtime::testing::{Server, Tap};
use keel_messaging::{Bus, Message, headers};
use keel_store::{Store, testing::TempDir};
use serde_json::{Value, json};

struct Running {
    server: Server,
    bus: Arc<dyn Bus>,
    store: Store,
    _dir: TempDir,
}

impl Running {
    async fn start() -> Self {
        let dir = TempDir::new("ftgo-consumer");
        let config = ConsumerConfig {
            database: dir.sqlite_url("consumer.db"),
            bus: dir.sqlite_url("bus.db"),
            registration: None,
        };
        let server = Server::start("consumer", config.clone(), |c, stop| async move {
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
        let (status, v) = self.post("/consumers", body).await;
        assert_eq!(status, 201, "{v}");
        v["consumerId"].as_str().unwrap().to_owned()
    }

    /// Receives every message published to `destination` from now on (and before: a new
    /// group starts at the oldest retained message).
    async fn tap(&self, destination: &str) -> Tap {
        Tap::new(&self.bus, destination).await
    }
}

fn validate(consumer: &str, order: &str, total: &str) -> Message {
    let cmd = ValidateOrderByConsumer {
        consumer_id: consumer.to_owned(),
        order_id: order.to_owned(),
        order_total: Money::parse(total).unwrap(),
    };
    Message::typed(
        destinations::CONSUMER_COMMANDS,
        commands::VALIDATE_ORDER_BY_CONSUMER,
        SCHEMA_VERSION,
        &cmd,
    )
    .unwrap()
    .with_key(order)
    .with_header(headers::REPLY_TO, "test.replies")
    .with_header(headers::CORRELATION_ID, format!("corr-{order}"))
}

fn outcome(m: &Message) -> &str {
    m.header(keel_saga::REPLY_OUTCOME).unwrap_or_default()
}

#[tokio::test]
async fn creates_reads_and_announces_consumers() {
    let svc = Running::start().await;
    let mut events = svc.tap(destinations::CONSUMER_EVENTS).await;

    let ada = svc
        .create(json!({"name": "  Ada  ", "orderLimit": "120.5", "card": "4000 0000 0000 0002"}))
        .await;
    let (status, v) = svc.get(&format!("/consumers/{ada}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        json!({"consumerId": ada, "name": "Ada", "orderLimit": "120.50", "card": "**** 0002"})
    );

    // Defaults: limit 500.00, the approved test card.
    let bob = svc.create(json!({"name": "Bob"})).await;
    assert_ne!(ada, bob);
    let (_, v) = svc.get(&format!("/consumers/{bob}")).await;
    assert_eq!(v["orderLimit"], "500.00");
    assert_eq!(v["card"], "**** 4242");

    // Each creation is announced once (no order between different keys), keyed by the
    // consumer, with the full card.
    let mut announced = [events.next().await, events.next().await];
    announced.sort_by_key(|m| m.key.as_deref() != Some(ada.as_str()));
    let m = &announced[0];
    assert_eq!(m.message_type(), Some(events::CONSUMER_CREATED));
    assert_eq!(m.header(headers::SCHEMA_VERSION), Some("1"));
    assert_eq!(m.key.as_deref(), Some(ada.as_str()));
    let created: events::ConsumerCreated = m.payload_as().unwrap();
    assert_eq!(
        created,
        events::ConsumerCreated {
            consumer_id: ada.clone(),
            name: "Ada".to_owned(),
            card: "4000000000000002".to_owned(),
        }
    );
    let m = &announced[1];
    assert_eq!(m.key.as_deref(), Some(bob.as_str()));
    assert_eq!(m.payload["consumerId"], bob.as_str());
    assert_eq!(m.payload["card"], "4242424242424242");
    events.nothing_more().await;

    let (status, v) = svc.get("/consumers/nobody").await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["consumerId"], "nobody");

    let (status, doc) = svc.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/consumers"]["post"].is_object());
    assert!(doc["paths"]["/consumers/{id}"]["get"].is_object());
    svc.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_problem_naming_the_field() {
    let svc = Running::start().await;
    let mut events = svc.tap(destinations::CONSUMER_EVENTS).await;
    let cases = [
        (json!({}), 422, "name"),
        (json!({"name": 7}), 422, "name"),
        (json!({"name": ""}), 400, "name"),
        (json!({"name": "   "}), 400, "name"),
        (json!({"name": "x".repeat(201)}), 400, "name"),
        (json!({"name": "A", "orderLimit": 12}), 422, "orderLimit"),
        (
            json!({"name": "A", "orderLimit": "-5.00"}),
            422,
            "orderLimit",
        ),
        (
            json!({"name": "A", "orderLimit": "1.234"}),
            422,
            "orderLimit",
        ),
        (json!({"name": "A", "orderLimit": "ten"}), 422, "orderLimit"),
        (
            json!({"name": "A", "card": 4242424242424242_u64}),
            422,
            "card",
        ),
        (json!({"name": "A", "card": "4242-abcd-4242"}), 400, "card"),
        (json!({"name": "A", "card": "42424242"}), 400, "card"),
        (
            json!({"name": "A", "card": "42424242424242424242"}),
            400,
            "card",
        ),
        (json!({"name": "A", "limit": "5"}), 422, "limit"),
        (json!(["A"]), 422, "body"),
    ];
    for (body, status, field) in cases {
        let (s, v) = svc.post("/consumers", body.clone()).await;
        assert_eq!(s, status, "{body} → {v}");
        assert_eq!(v["field"], field, "{body} → {v}");
        assert!(
            v["detail"].as_str().unwrap().contains(field) || field == "body",
            "{body} → {v}"
        );
    }
    let (s, v) = svc
        .post_raw("/consumers", "{bad", Some("application/json"))
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = svc.post_raw("/consumers", r#"{"name":"A"}"#, None).await;
    assert_eq!(s, 415, "{v}");
    let (s, _) = svc.get("/consumers").await;
    assert_eq!(s, 405);
    // Nothing was created, so nothing was announced.
    events.nothing_more().await;
    svc.stop().await;
}

#[tokio::test]
async fn validates_orders_for_the_saga() {
    let svc = Running::start().await;
    let mut replies = svc.tap("test.replies").await;
    let ada = svc
        .create(json!({"name": "Ada", "orderLimit": "100.00"}))
        .await;

    // At the limit: success, `{}`.
    svc.bus
        .publish(&validate(&ada, "o1", "100.00"))
        .await
        .unwrap();
    let r = replies.next().await;
    assert_eq!(outcome(&r), "SUCCESS");
    assert_eq!(r.correlation_id(), Some("corr-o1"));
    assert_eq!(r.key.as_deref(), Some("o1"));
    assert_eq!(r.payload, json!({}));

    // Over the limit.
    svc.bus
        .publish(&validate(&ada, "o2", "100.01"))
        .await
        .unwrap();
    let r = replies.next().await;
    assert_eq!(outcome(&r), "FAILURE");
    assert_eq!(r.message_type(), Some(commands::ORDER_LIMIT_EXCEEDED));
    assert_eq!(r.correlation_id(), Some("corr-o2"));
    assert_eq!(r.payload["limit"], "100.00");
    assert_eq!(r.payload["total"], "100.01");

    // Unknown consumer.
    svc.bus
        .publish(&validate("ghost", "o3", "1.00"))
        .await
        .unwrap();
    let r = replies.next().await;
    assert_eq!(outcome(&r), "FAILURE");
    assert_eq!(r.message_type(), Some(commands::UNKNOWN_CONSUMER));
    assert_eq!(r.payload["consumerId"], "ghost");

    // A command that is not understood still gets an answer, so no saga waits forever.
    let odd = Message::new(destinations::CONSUMER_COMMANDS, json!({"orderId": "o4"}))
        .with_header(headers::TYPE, "Frobnicate")
        .with_header(headers::REPLY_TO, "test.replies")
        .with_header(headers::CORRELATION_ID, "corr-o4");
    svc.bus.publish(&odd).await.unwrap();
    let r = replies.next().await;
    assert_eq!(
        (outcome(&r), r.message_type()),
        ("FAILURE", Some("UnknownCommand"))
    );
    let broken = Message::new(destinations::CONSUMER_COMMANDS, json!({"orderId": 5}))
        .with_header(headers::TYPE, commands::VALIDATE_ORDER_BY_CONSUMER)
        .with_header(headers::REPLY_TO, "test.replies")
        .with_header(headers::CORRELATION_ID, "corr-o5");
    svc.bus.publish(&broken).await.unwrap();
    let r = replies.next().await;
    assert_eq!(
        (outcome(&r), r.message_type()),
        ("FAILURE", Some("InvalidCommand"))
    );
    replies.nothing_more().await;
    svc.stop().await;
}

#[tokio::test]
async fn a_duplicate_command_is_answered_with_the_stored_reply() {
    let svc = Running::start().await;
    let mut replies = svc.tap("test.replies").await;
    let ada = svc.create(json!({"name": "Ada"})).await;

    let command = validate(&ada, "o1", "20.00");
    svc.bus.publish(&command).await.unwrap();
    let first = replies.next().await;
    assert_eq!(outcome(&first), "SUCCESS");

    // The consumer disappears behind the service's back; the same command (same message id:
    // an orchestrator's resend or a redelivery) is not evaluated again: the stored reply
    // is sent again, with the same id.
    keel_store::sqlx::query("DELETE FROM consumers WHERE id = $1")
        .bind(&ada)
        .execute(svc.store.pool())
        .await
        .unwrap();
    svc.bus.publish(&command).await.unwrap();
    let again = replies.next().await;
    assert_eq!(outcome(&again), "SUCCESS");
    assert_eq!(again.id, first.id);
    assert_eq!(again.payload, first.payload);

    // A new command about the same order is a new command: evaluated now.
    svc.bus
        .publish(&validate(&ada, "o1", "20.00"))
        .await
        .unwrap();
    let fresh = replies.next().await;
    assert_eq!(fresh.message_type(), Some(commands::UNKNOWN_CONSUMER));
    replies.nothing_more().await;

    let (handled,): (i64,) =
        keel_store::sqlx::query_as("SELECT COUNT(*) FROM keel_inbox WHERE message_id = $1")
            .bind(&command.id)
            .fetch_one(svc.store.pool())
            .await
            .unwrap();
    assert_eq!(handled, 1);
    svc.stop().await;
}
