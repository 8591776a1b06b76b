//! Accounting authorizing through two real payment-network simulators (`van-a`, `van-b`)
//! on ephemeral ports, over the real embedded bus and SQLite: failover when van-a fails,
//! return when it recovers, and voiding of unknown outcomes — an order is never approved
//! at two networks.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ftgo_accounting::{AccountingConfig, PaymentsConfig, payments::BreakerSettings};
use ftgo_contracts::{
    DECLINED_CARD, Money,
    commands::{self, AuthorizeCard, OrderRef},
    destinations, events, payment_events,
};
use ftgo_van::VanConfig;
use keel_chassis::{KeelConfig, Service, ShutdownHandle};
use keel_messaging::{Bus, Message, Replies, Subscription, handler_fn};
use keel_saga::REPLY_OUTCOME;
use keel_store::testing::TempDir;
use serde_json::{Value, json};
use tokio::sync::mpsc;

struct Server {
    base: String,
    shutdown: ShutdownHandle,
    server: tokio::task::JoinHandle<Result<(), keel_chassis::Error>>,
}

impl Server {
    async fn stop(self) {
        self.shutdown.shutdown();
        self.server.await.unwrap().unwrap();
    }
}

async fn start_van(dir: &TempDir, network: &str, fee_bps: u32) -> Server {
    let app_config = VanConfig {
        network: network.to_owned(),
        database: dir.sqlite_url(&format!("{network}.db")),
        fee_bps,
        ..VanConfig::default()
    };
    let mut config = KeelConfig::<VanConfig>::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.app = app_config.clone();
    let bound = Service::from_config("van", config)
        .handle_signals(false)
        .bind()
        .await
        .unwrap();
    let base = format!("http://{}", bound.local_addr().unwrap());
    let app = ftgo_van::app(&app_config).await.unwrap();
    let shutdown = bound.shutdown_handle();
    let server = tokio::spawn(bound.serve(app.router));
    Server {
        base,
        shutdown,
        server,
    }
}

struct System {
    http: reqwest::Client,
    accounting: Server,
    van_a: Server,
    van_b: Server,
    bus: Arc<dyn Bus>,
    replies: Replies,
    _dir: TempDir,
}

impl System {
    /// Two networks and accounting configured with fixed URLs, a 300 ms call timeout and
    /// a breaker that opens after 4 calls (≥ 50 % failed) and waits 1 s.
    async fn start(void_attempts: u32) -> Self {
        let dir = TempDir::new("payment-networks-test");
        let van_a = start_van(&dir, "van-a", 150).await;
        let van_b = start_van(&dir, "van-b", 250).await;
        let app_config = AccountingConfig {
            database: dir.sqlite_url("accounting.db"),
            bus: dir.sqlite_url("bus.db"),
            account_wait_ms: 0,
            payments: PaymentsConfig {
                networks: vec!["van-a".to_owned(), "van-b".to_owned()],
                urls: BTreeMap::from([
                    ("van-a".to_owned(), van_a.base.clone()),
                    ("van-b".to_owned(), van_b.base.clone()),
                ]),
                timeout_ms: 300,
                void_attempts,
                breaker: BreakerSettings {
                    window_s: 60,
                    minimum_calls: 4,
                    failure_rate: 50.0,
                    open_ms: 1_000,
                    half_open_calls: 1,
                },
                ..PaymentsConfig::default()
            },
            ..AccountingConfig::default()
        };
        let mut config = KeelConfig::<AccountingConfig>::default();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.app = app_config.clone();
        let bound = Service::from_config("accounting", config)
            .handle_signals(false)
            .bind()
            .await
            .unwrap();
        let base = format!("http://{}", bound.local_addr().unwrap());
        let app = ftgo_accounting::app(&app_config, bound.shutdown_token())
            .await
            .unwrap();
        bound.spawn(app.background);
        let shutdown = bound.shutdown_handle();
        let server = tokio::spawn(bound.serve(app.router));
        let bus = keel_bus::connect(&app_config.bus).await.unwrap();
        let replies = Replies::start(bus.clone(), "payment-networks-test")
            .await
            .unwrap();
        let system = System {
            http: reqwest::Client::new(),
            accounting: Server {
                base,
                shutdown,
                server,
            },
            van_a,
            van_b,
            bus,
            replies,
            _dir: dir,
        };
        for _ in 0..200 {
            if system.get(&system.accounting, "/health/ready").await.0 == 200 {
                return system;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("accounting did not become ready");
    }

    async fn stop(self) {
        self.accounting.stop().await;
        self.van_a.stop().await;
        self.van_b.stop().await;
    }

    async fn get(&self, server: &Server, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn faults(&self, van: &Server, faults: Value) {
        let r = self
            .http
            .put(format!("{}/admin/faults", van.base))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    async fn consumer(&self, consumer_id: &str, card: &str) {
        let event = Message::typed(
            destinations::CONSUMER_EVENTS,
            events::CONSUMER_CREATED,
            1,
            &events::ConsumerCreated {
                consumer_id: consumer_id.to_owned(),
                name: "Ada".to_owned(),
                card: card.to_owned(),
            },
        )
        .unwrap()
        .with_key(consumer_id);
        self.bus.publish(&event).await.unwrap();
        for _ in 0..250 {
            if self
                .get(&self.accounting, &format!("/accounts/{consumer_id}"))
                .await
                .0
                == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no account for {consumer_id}");
    }

    async fn command(&self, kind: &str, order_id: &str, payload: Value) -> (String, Value) {
        let message = Message::new(destinations::ACCOUNTING_COMMANDS, payload)
            .with_header("correlation-id", keel_messaging::new_id())
            .with_header("type", kind)
            .with_header("schema-version", "1")
            .with_key(order_id);
        let reply = self
            .replies
            .request(message, Duration::from_secs(30))
            .await
            .expect("a reply");
        (
            reply.header(REPLY_OUTCOME).unwrap_or_default().to_owned(),
            reply.payload,
        )
    }

    async fn authorize(&self, order_id: &str, consumer_id: &str) -> (String, Value) {
        self.command(
            commands::AUTHORIZE_CARD,
            order_id,
            json!(AuthorizeCard {
                consumer_id: consumer_id.to_owned(),
                order_id: order_id.to_owned(),
                order_total: Money::parse("12.50").unwrap(),
            }),
        )
        .await
    }

    /// The order's authorizations at `van` (tombstones included).
    async fn at(&self, van: &Server, order_id: &str) -> Vec<Value> {
        let (status, body) = self
            .get(van, &format!("/authorizations?orderId={order_id}"))
            .await;
        assert_eq!(status, 200);
        body["authorizations"].as_array().unwrap().clone()
    }

    /// Statuses of the order's authorizations at both networks, and how many are APPROVED.
    async fn across(&self, order_id: &str) -> (Vec<String>, Vec<String>, usize) {
        let statuses = |v: Vec<Value>| -> Vec<String> {
            v.iter()
                .map(|a| a["status"].as_str().unwrap().to_owned())
                .collect()
        };
        let a = statuses(self.at(&self.van_a, order_id).await);
        let b = statuses(self.at(&self.van_b, order_id).await);
        let approved = a.iter().chain(&b).filter(|s| *s == "APPROVED").count();
        (a, b, approved)
    }

    async fn payment_network(&self, order_id: &str) -> String {
        let (status, p) = self
            .get(&self.accounting, &format!("/payments/{order_id}"))
            .await;
        assert_eq!(status, 200, "{p}");
        p["network"].as_str().unwrap_or_default().to_owned()
    }

    async fn network_state(&self) -> Value {
        self.get(&self.accounting, "/payment-networks").await.1
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.accounting.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn breaker_of(state: &Value, network: &str) -> String {
    state["networks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == network)
        .map(|n| n["breaker"].as_str().unwrap().to_owned())
        .unwrap()
}

const CARD: &str = "4111111111111111";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_van_b_and_returns_to_van_a() {
    let s = System::start(3).await;
    s.consumer("c-1", CARD).await;

    // Healthy: the primary authorizes.
    assert_eq!(s.authorize("o-1", "c-1").await.0, "SUCCESS");
    assert_eq!(s.payment_network("o-1").await, "van-a");
    let state = s.network_state().await;
    assert_eq!(state["preferred"], "van-a");
    assert_eq!(state["selection"], "ordered");
    assert_eq!(breaker_of(&state, "van-a"), "CLOSED");

    // van-a fails every request: approvals continue through van-b, and its breaker opens.
    s.faults(&s.van_a, json!({"errorRate": 1.0})).await;
    for n in 2..=8 {
        let order = format!("o-{n}");
        let (outcome, reply) = s.authorize(&order, "c-1").await;
        assert_eq!(outcome, "SUCCESS", "{order}: {reply}");
        assert_eq!(s.payment_network(&order).await, "van-b", "{order}");
        let (a, b, approved) = s.across(&order).await;
        assert_eq!((a.len(), b, approved), (0, vec!["APPROVED".to_owned()], 1));
    }
    let state = s.network_state().await;
    assert_eq!(breaker_of(&state, "van-a"), "OPEN", "{state}");
    assert_eq!(state["preferred"], "van-b");
    let van_a = &state["networks"][0];
    assert!(van_a["recentFailures"].as_u64().unwrap() >= 3, "{state}");
    assert!(van_a["notPermittedCalls"].as_u64().unwrap() >= 1, "{state}");
    assert!(
        van_a["lastError"].as_str().unwrap().contains("503"),
        "{state}"
    );
    assert_eq!(van_a["feeBps"], 150, "learnt from its answers");
    let metrics = s.metrics().await;
    for line in [
        r#"keel_payment_network_breaker_state{network="van-a"} 1"#,
        r#"keel_payment_failovers_total{from="van-a",to="van-b"}"#,
        r#"keel_payment_network_requests_total{network="van-a",outcome="not_permitted"}"#,
        r#"keel_payment_network_requests_total{network="van-b",outcome="approved"}"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }

    // van-a recovers: after the breaker's wait a trial call closes it, traffic returns.
    s.faults(&s.van_a, json!({})).await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(s.authorize("o-9", "c-1").await.0, "SUCCESS");
    assert_eq!(s.payment_network("o-9").await, "van-a");
    assert_eq!(s.authorize("o-10", "c-1").await.0, "SUCCESS");
    assert_eq!(s.payment_network("o-10").await, "van-a");
    let state = s.network_state().await;
    assert_eq!(breaker_of(&state, "van-a"), "CLOSED", "{state}");
    assert_eq!(state["preferred"], "van-a");
    assert!(
        s.metrics()
            .await
            .contains(r#"keel_payment_network_breaker_state{network="van-a"} 0"#)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_is_network_cancelled_before_failing_over() {
    let s = System::start(3).await;
    s.consumer("c-1", CARD).await;
    // van-a answers after accounting's 300 ms timeout — but stores the authorization first.
    s.faults(&s.van_a, json!({"latencyMs": 800})).await;
    let (outcome, reply) = s.authorize("o-u", "c-1").await;
    assert_eq!(outcome, "SUCCESS", "{reply}");
    assert_eq!(s.payment_network("o-u").await, "van-b");
    let at_a = s.at(&s.van_a, "o-u").await;
    assert_eq!(at_a.len(), 1, "{at_a:?}");
    assert_eq!(at_a[0]["status"], "VOIDED");
    assert_eq!(at_a[0]["key"], "o-u:1");
    let (_, b, approved) = s.across("o-u").await;
    assert_eq!((b, approved), (vec!["APPROVED".to_owned()], 1));
    assert!(
        s.metrics()
            .await
            .contains(r#"keel_payment_network_requests_total{network="van-a",outcome="voided"}"#)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_void_holds_the_order_until_the_network_answers() {
    let s = System::start(1).await;
    s.consumer("c-1", CARD).await;
    // van-a is slow for everything, network-cancels included: the void of the unknown
    // outcome cannot be confirmed, so no other network may be tried.
    s.faults(
        &s.van_a,
        json!({"latencyMs": 800, "operations": ["authorize", "network-cancel"]}),
    )
    .await;
    let pending = {
        let replies = s.replies.clone();
        tokio::spawn(async move {
            let message = Message::new(
                destinations::ACCOUNTING_COMMANDS,
                json!(AuthorizeCard {
                    consumer_id: "c-1".to_owned(),
                    order_id: "o-x".to_owned(),
                    order_total: Money::parse("12.50").unwrap(),
                }),
            )
            .with_header("correlation-id", keel_messaging::new_id())
            .with_header("type", commands::AUTHORIZE_CARD)
            .with_header("schema-version", "1")
            .with_key("o-x");
            replies
                .request(message, Duration::from_secs(30))
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(s.at(&s.van_b, "o-x").await.is_empty(), "van-b never asked");
    assert_eq!(s.get(&s.accounting, "/payments/o-x").await.0, 404);
    // van-a answers again: the redelivered command voids the first attempt, then
    // authorizes — at van-a, the preferred network — under a new key.
    s.faults(&s.van_a, json!({})).await;
    let reply = tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.header(REPLY_OUTCOME), Some("SUCCESS"), "{reply:?}");
    let at_a = s.at(&s.van_a, "o-x").await;
    let by_key: BTreeMap<&str, &str> = at_a
        .iter()
        .map(|a| (a["key"].as_str().unwrap(), a["status"].as_str().unwrap()))
        .collect();
    assert_eq!(by_key.get("o-x:1"), Some(&"VOIDED"), "{at_a:?}");
    let (_, b, approved) = s.across("o-x").await;
    assert!(b.is_empty());
    assert_eq!(approved, 1, "{at_a:?}");
    assert_eq!(s.payment_network("o-x").await, "van-a");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declines_are_decisions_and_reversals_cancel_at_the_network() {
    let s = System::start(3).await;
    let (tx, mut events) = mpsc::unbounded_channel();
    let listener = s
        .bus
        .subscribe(
            Subscription::new(destinations::ACCOUNTING_EVENTS, "payment-networks-test"),
            handler_fn(move |d| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(d.message);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    s.consumer("c-1", CARD).await;
    s.consumer("c-d", DECLINED_CARD).await;

    // The network declines: no failover to van-b.
    let (outcome, reply) = s.authorize("o-d", "c-d").await;
    assert_eq!(outcome, "FAILURE");
    assert_eq!(reply["reason"], "CARD_DECLINED");
    assert_eq!(s.at(&s.van_a, "o-d").await[0]["status"], "DECLINED");
    assert!(s.at(&s.van_b, "o-d").await.is_empty());

    // Approved at van-a, then reversed there.
    assert_eq!(s.authorize("o-r", "c-1").await.0, "SUCCESS");
    let (_, p) = s.get(&s.accounting, "/payments/o-r").await;
    let network_id = p["networkAuthorizationId"].as_str().unwrap().to_owned();
    assert!(network_id.starts_with("van-a-"));
    let (outcome, _) = s
        .command(
            commands::REVERSE_AUTHORIZATION,
            "o-r",
            json!(OrderRef {
                order_id: "o-r".to_owned()
            }),
        )
        .await;
    assert_eq!(outcome, "SUCCESS");
    let at_a = s.at(&s.van_a, "o-r").await;
    assert_eq!(
        (at_a[0]["id"].as_str(), at_a[0]["status"].as_str()),
        (Some(network_id.as_str()), Some("CANCELLED"))
    );
    assert_eq!(
        s.get(&s.accounting, "/payments/o-r").await.1["state"],
        "REVERSED"
    );

    // The payment events, keyed by order.
    let mut seen = BTreeMap::new();
    while seen.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("payment events")
            .unwrap();
        seen.insert(m.message_type().unwrap_or_default().to_owned(), m);
    }
    let declined: payment_events::PaymentDeclined =
        seen[payment_events::PAYMENT_DECLINED].payload_as().unwrap();
    assert_eq!(
        (declined.order_id.as_str(), declined.reason.as_str()),
        ("o-d", "CARD_DECLINED")
    );
    let authorized = &seen[payment_events::PAYMENT_AUTHORIZED];
    assert_eq!(authorized.key.as_deref(), Some("o-r"));
    let authorized: payment_events::PaymentAuthorized = authorized.payload_as().unwrap();
    assert_eq!(
        (authorized.network.as_str(), authorized.amount),
        ("van-a", Money(1250))
    );
    let reversed: payment_events::PaymentReversed =
        seen[payment_events::PAYMENT_REVERSED].payload_as().unwrap();
    assert_eq!(reversed.authorization_id, authorized.authorization_id);
    listener.stop().await;
    s.stop().await;
}
