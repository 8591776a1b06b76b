//! Accounting through its real interfaces: HTTP on a free port, and consumer events and
//! saga commands on the real embedded bus (a SQLite file in a temporary directory) — the
//! way the consumer and order services use it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use ftgo_accounting::{
    AccountingConfig, Approval, AuthorizationRequest, Authorizer, AuthorizerError, CardRule,
    Decision, ReversalRequest,
};
use ftgo_contracts::{
    DECLINED_CARD, Money,
    commands::{self, AuthorizeCard, OrderRef},
    destinations, events,
};
use ftgo_runtime::testing::{self, Reply, Server, collect};
use futures::future::BoxFuture;
use keel_messaging::{Bus, Message, Replies, Subscription};
use keel_saga::REPLY_OUTCOME;
use keel_store::testing::TempDir;
use serde_json::{Value, json};

struct Accounting {
    server: Server,
    bus: Arc<dyn Bus>,
    replies: Replies,
    _dir: TempDir,
}

impl Accounting {
    /// Starts accounting on a fresh database and bus, as `run` does.
    async fn start(account_wait_ms: u64, authorizer: Arc<dyn Authorizer>) -> Self {
        let dir = TempDir::new("accounting-test");
        let app_config = AccountingConfig {
            database: dir.sqlite_url("accounting.db"),
            bus: dir.sqlite_url("bus.db"),
            account_wait_ms,
            ..AccountingConfig::default()
        };
        let server = Server::start("accounting", app_config.clone(), |c, stop| async move {
            ftgo_accounting::app_with(&c, authorizer, stop).await
        })
        .await;
        let bus = keel_bus::connect(&app_config.bus).await.unwrap();
        let replies = Replies::start(bus.clone(), "accounting-test")
            .await
            .unwrap();
        server.wait_ready().await;
        Accounting {
            server,
            bus,
            replies,
            _dir: dir,
        }
    }

    async fn card_rule() -> Self {
        Self::start(0, Arc::new(CardRule)).await
    }

    async fn stop(self) {
        self.server.stop().await;
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    async fn send(&self, message: Message) -> Reply {
        Reply::request(&self.replies, message).await
    }

    async fn authorize(&self, order_id: &str, consumer_id: &str, total: &str) -> Reply {
        self.send(authorize_command(order_id, consumer_id, total))
            .await
    }

    async fn reverse(&self, order_id: &str) -> Reply {
        self.send(command(
            commands::REVERSE_AUTHORIZATION,
            json!(OrderRef {
                order_id: order_id.to_owned()
            }),
        ))
        .await
    }

    /// Publishes a consumer event (as the consumer service's relay does).
    async fn publish_event(&self, message: &Message) {
        self.bus.publish(message).await.unwrap();
    }

    async fn consumer_created(&self, consumer_id: &str, card: &str) {
        self.publish_event(&consumer_created(consumer_id, "Ada", card))
            .await;
        self.wait_for(&format!("/accounts/{consumer_id}")).await;
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.server.get_strict(path).await
    }

    /// Polls `path` until it answers 200 (what an event or a decline record leads to).
    async fn wait_for(&self, path: &str) -> Value {
        for _ in 0..250 {
            let (status, body) = self.get(path).await;
            if status == 200 {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{path} never appeared");
    }
}

fn command(kind: &str, payload: Value) -> Message {
    testing::command(destinations::ACCOUNTING_COMMANDS, kind, payload)
}

fn authorize_command(order_id: &str, consumer_id: &str, total: &str) -> Message {
    command(
        commands::AUTHORIZE_CARD,
        json!(AuthorizeCard {
            consumer_id: consumer_id.to_owned(),
            order_id: order_id.to_owned(),
            order_total: Money::parse(total).unwrap(),
        }),
    )
}

fn consumer_created(consumer_id: &str, name: &str, card: &str) -> Message {
    Message::typed(
        destinations::CONSUMER_EVENTS,
        events::CONSUMER_CREATED,
        1,
        &events::ConsumerCreated {
            consumer_id: consumer_id.to_owned(),
            name: name.to_owned(),
            card: card.to_owned(),
        },
    )
    .unwrap()
    .with_key(consumer_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_created_opens_an_account_once() {
    let a = Accounting::card_rule().await;
    let (status, p) = a.get("/accounts/c-1").await;
    assert_eq!(status, 404);
    assert_eq!(p["consumerId"], "c-1");

    let event = consumer_created("c-1", "Ada", "4111111111111111");
    a.publish_event(&event).await;
    // The same event again, then another ConsumerCreated for the same consumer: the first
    // one wins.
    a.publish_event(&event).await;
    a.publish_event(&consumer_created("c-1", "Bob", "5555555555554444"))
        .await;
    // Events of other types are skipped; a broken ConsumerCreated is dead-lettered; neither
    // holds back what follows.
    a.publish_event(
        &Message::typed(
            destinations::CONSUMER_EVENTS,
            "ConsumerRenamed",
            1,
            &json!({"consumerId": "c-2"}),
        )
        .unwrap()
        .with_key("c-2"),
    )
    .await;
    let broken = Message::typed(
        destinations::CONSUMER_EVENTS,
        events::CONSUMER_CREATED,
        1,
        &json!({"consumerId": "c-2", "name": 7}),
    )
    .unwrap()
    .with_key("c-2");
    let (dead_letters, mut dlq) = collect(
        &a.bus,
        Subscription::new("consumer.events.dlq", "accounting-test"),
    )
    .await;
    a.publish_event(&broken).await;
    a.publish_event(&consumer_created("c-2", "Cy", "")).await;

    assert_eq!(
        a.wait_for("/accounts/c-1").await,
        json!({"consumerId": "c-1", "name": "Ada", "cardLast4": "1111"})
    );
    assert_eq!(
        a.wait_for("/accounts/c-2").await,
        json!({"consumerId": "c-2", "name": "Cy", "cardLast4": null})
    );
    let dead = tokio::time::timeout(Duration::from_secs(10), dlq.recv())
        .await
        .expect("the broken event is dead-lettered")
        .unwrap();
    assert_eq!(dead.id, broken.id);
    // Give the duplicates time to arrive: the account is unchanged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.get("/accounts/c-1").await.1["name"], "Ada");
    dead_letters.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorize_card_once_per_order() {
    let a = Accounting::card_rule().await;
    a.consumer_created("c-1", "4111111111111234").await;
    let message = authorize_command("o-1", "c-1", "25.50");
    let first = a.send(message.clone()).await;
    assert_eq!(
        (first.outcome.as_str(), first.kind.as_str()),
        ("SUCCESS", "AuthorizeCardReply"),
        "{first:?}"
    );
    let id = first.payload["authorizationId"]
        .as_str()
        .unwrap()
        .to_owned();

    // Delivered again: the stored reply.
    let again = a.send(message).await;
    assert_eq!(
        (again.id.as_str(), &again.payload),
        (first.id.as_str(), &first.payload)
    );
    // A new AuthorizeCard for the same order: the same authorization, never a second one.
    let other = a.authorize("o-1", "c-1", "25.50").await;
    assert_eq!(other.payload["authorizationId"], id.as_str());

    let (status, payment) = a.get("/payments/o-1").await;
    assert_eq!(status, 200);
    assert_eq!(
        payment,
        json!({
            "orderId": "o-1",
            "authorizationId": id,
            "consumerId": "c-1",
            "state": "AUTHORIZED",
            "amount": "25.50",
            "cardLast4": "1234"
        })
    );
    let (status, p) = a.get("/payments/o-none").await;
    assert_eq!(status, 404);
    assert_eq!(p["orderId"], "o-none");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declines_are_replied_and_recorded() {
    let a = Accounting::card_rule().await;
    a.consumer_created("c-d", DECLINED_CARD).await;
    a.consumer_created("c-n", "").await;

    let message = authorize_command("o-d", "c-d", "12.00");
    let r = a.send(message.clone()).await;
    assert_eq!(
        (r.outcome.as_str(), r.kind.as_str()),
        ("FAILURE", "PaymentDeclined")
    );
    assert_eq!(
        r.payload,
        json!({"orderId": "o-d", "reason": "CARD_DECLINED"})
    );
    assert_eq!(
        a.wait_for("/payments/o-d").await,
        json!({
            "orderId": "o-d",
            "authorizationId": null,
            "consumerId": "c-d",
            "state": "DECLINED",
            "amount": "12.00",
            "cardLast4": "0002",
            "reason": "CARD_DECLINED"
        })
    );
    assert_eq!(a.send(message).await.id, r.id, "the stored reply");

    let r = a.authorize("o-n", "c-n", "3.00").await;
    assert_eq!(
        (r.kind.as_str(), r.payload["reason"].as_str()),
        ("PaymentDeclined", Some("NO_CARD"))
    );
    assert_eq!(a.wait_for("/payments/o-n").await["cardLast4"], Value::Null);

    // No account at all (and no wait configured): declined at once.
    let r = a.authorize("o-x", "c-unknown", "3.00").await;
    assert_eq!(
        (r.kind.as_str(), r.payload["reason"].as_str()),
        ("PaymentDeclined", Some("NO_ACCOUNT"))
    );
    let p = a.wait_for("/payments/o-x").await;
    assert_eq!(
        (p["state"].as_str(), p["reason"].as_str()),
        (Some("DECLINED"), Some("NO_ACCOUNT"))
    );

    // Nothing was authorized: reversing a decline changes nothing.
    assert_eq!(a.reverse("o-d").await.outcome, "SUCCESS");
    assert_eq!(a.get("/payments/o-d").await.1["state"], "DECLINED");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_a_late_account_before_declining() {
    let a = Accounting::start(10_000, Arc::new(CardRule)).await;
    // The order is paid for before accounting has seen the consumer.
    let pending = {
        let replies = a.replies.clone();
        tokio::spawn(async move {
            replies
                .request(
                    authorize_command("o-late", "c-late", "9.99"),
                    Duration::from_secs(20),
                )
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(a.get("/payments/o-late").await.0, 404, "not decided yet");
    a.publish_event(&consumer_created("c-late", "Late", "4111111111119999"))
        .await;
    let reply = tokio::time::timeout(Duration::from_secs(15), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.header(REPLY_OUTCOME), Some("SUCCESS"), "{reply:?}");
    let p = a.get("/payments/o-late").await.1;
    assert_eq!(
        (p["state"].as_str(), p["cardLast4"].as_str()),
        (Some("AUTHORIZED"), Some("9999"))
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_authorization() {
    let a = Accounting::card_rule().await;
    a.consumer_created("c-1", "4111111111111111").await;
    let id = a.authorize("o-r", "c-1", "10.00").await.payload["authorizationId"]
        .as_str()
        .unwrap()
        .to_owned();
    let reverse = command(commands::REVERSE_AUTHORIZATION, json!({"orderId": "o-r"}));
    let r = a.send(reverse.clone()).await;
    assert_eq!(
        (r.outcome.as_str(), r.kind.as_str()),
        ("SUCCESS", "ReverseAuthorizationReply")
    );
    let p = a.get("/payments/o-r").await.1;
    assert_eq!(
        (p["state"].as_str(), p["authorizationId"].as_str()),
        (Some("REVERSED"), Some(id.as_str()))
    );
    assert_eq!(a.send(reverse).await.id, r.id, "the stored reply");
    // Reversed already, or never authorized: success.
    assert_eq!(a.reverse("o-r").await.outcome, "SUCCESS");
    assert_eq!(a.reverse("o-never").await.outcome, "SUCCESS");
    assert_eq!(a.get("/payments/o-never").await.0, 404);
    // Authorizing the reversed order again does not authorize it twice.
    let again = a.authorize("o-r", "c-1", "10.00").await;
    assert_eq!(again.payload["authorizationId"], id.as_str());
    assert_eq!(a.get("/payments/o-r").await.1["state"], "REVERSED");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commands_get_failure_replies() {
    let a = Accounting::card_rule().await;
    a.consumer_created("c-1", "4111111111111111").await;
    for payload in [
        json!({"orderId": "o-b", "consumerId": "c-1"}),
        json!({"orderId": "o-b", "consumerId": "c-1", "orderTotal": "-1.00"}),
        json!({"orderId": "o-b", "consumerId": "c-1", "orderTotal": 12}),
        json!({"orderId": "", "consumerId": "c-1", "orderTotal": "1.00"}),
    ] {
        let r = a
            .send(command(commands::AUTHORIZE_CARD, payload.clone()))
            .await;
        assert_eq!(
            (r.outcome.as_str(), r.kind.as_str()),
            ("FAILURE", "InvalidCommand"),
            "{payload}"
        );
        assert!(r.payload["reason"].is_string());
    }
    let r = a
        .send(command(
            commands::REVERSE_AUTHORIZATION,
            json!({"order": "o-b"}),
        ))
        .await;
    assert_eq!(r.kind, "InvalidCommand");
    let r = a
        .send(command("ChargeTwice", json!({"orderId": "o-b"})))
        .await;
    assert_eq!(
        (r.outcome.as_str(), r.kind.as_str()),
        ("FAILURE", "UnknownCommand")
    );
    assert_eq!(a.get("/payments/o-b").await.0, 404);
    // Still works.
    assert_eq!(a.authorize("o-b", "c-1", "1.00").await.outcome, "SUCCESS");
    a.stop().await;
}

/// An authorizer that declines above a limit, fails transiently on its first call for
/// `o-flaky`, and counts its calls.
#[derive(Debug, Default)]
struct Limit {
    calls: AtomicU32,
    reversals: AtomicU32,
    flaked: AtomicU32,
}

impl Authorizer for Limit {
    fn authorize<'a>(
        &'a self,
        request: &'a AuthorizationRequest,
    ) -> BoxFuture<'a, Result<Decision, AuthorizerError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if request.order_id == "o-flaky" && self.flaked.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(AuthorizerError("network unreachable".to_owned()));
            }
            Ok(if request.amount > Money(10_000) {
                Decision::Declined {
                    reason: "OVER_LIMIT".to_owned(),
                }
            } else {
                Decision::Approved(Approval::local())
            })
        })
    }

    fn reverse<'a>(
        &'a self,
        _request: &'a ReversalRequest,
    ) -> BoxFuture<'a, Result<(), AuthorizerError>> {
        Box::pin(async move {
            self.reversals.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_is_the_authorizers() {
    let limit = Arc::new(Limit::default());
    let a = Accounting::start(0, limit.clone()).await;
    // The authorizer, not the card rule, decides: the "declined" test card is approved.
    a.consumer_created("c-1", DECLINED_CARD).await;
    let r = a.authorize("o-1", "c-1", "20.00").await;
    assert_eq!(r.outcome, "SUCCESS", "{r:?}");
    let r = a.authorize("o-2", "c-1", "100.01").await;
    assert_eq!(r.payload["reason"], "OVER_LIMIT");
    assert_eq!(a.wait_for("/payments/o-2").await["reason"], "OVER_LIMIT");
    // A transient error: retried by the bus, then authorized.
    let r = a.authorize("o-flaky", "c-1", "5.00").await;
    assert_eq!(r.outcome, "SUCCESS", "{r:?}");
    assert_eq!(limit.calls.load(Ordering::SeqCst), 4);
    // An authorized order is never put to the authorizer again.
    a.authorize("o-1", "c-1", "20.00").await;
    assert_eq!(limit.calls.load(Ordering::SeqCst), 4);
    // Reversal goes through the authorizer once.
    a.reverse("o-1").await;
    a.reverse("o-1").await;
    assert_eq!(limit.reversals.load(Ordering::SeqCst), 1);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_its_openapi_document() {
    let a = Accounting::card_rule().await;
    let (status, doc) = a.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    for path in [
        "/payments/{orderId}",
        "/accounts/{consumerId}",
        "/payment-networks",
    ] {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    // No networks configured: the card rule decides.
    let (status, n) = a.get("/payment-networks").await;
    assert_eq!(
        (status, n),
        (
            200,
            json!({"selection": "card-rule", "preferred": null, "networks": []})
        )
    );
    let (status, p) = a.get("/payments").await;
    assert_eq!(status, 404);
    assert_eq!(p["status"], 404);
    let r = a
        .server
        .http
        .post(a.url("/payments/o-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    a.stop().await;
}
