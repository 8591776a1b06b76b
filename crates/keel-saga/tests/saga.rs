//! The create-order saga with three participants over the embedded bus: success, failure
//! at each step (compensating exactly the completed steps, in reverse), duplicate and
//! stale replies, step timeouts and resends (applied once), local steps and compensations
//! rolled back to their savepoint on error, compensation retries, resource locks, the query
//! API, definitions refused. The main scenarios run on SQLite files with the embedded bus;
//! when `KEEL_TEST_DATABASE_URL` is set, on PostgreSQL (a fresh schema per service) with the
//! embedded bus; and when `KEEL_TEST_NATS_URL` is set too, on PostgreSQL with NATS
//! JetStream (a prefix of the test's own, its streams deleted afterwards).

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use keel_messaging::{Bus, Message, Outbox, headers};
use keel_saga::{
    Command, Orchestrator, REPLY_OUTCOME, SagaDefinition, SagaError, SagaState, Step, query,
};
use keel_store::{Store, testing::TempDir};
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct World {
    _dir: TempDir,
    _consumers: Vec<keel_messaging::Consumer>,
    bus: Arc<dyn Bus>,
    order: Store,
    orch: Orchestrator<OrderData>,
    consumer: Store,
    kitchen: Store,
    accounting: Store,
    stop: CancellationToken,
    /// Last: deletes the NATS streams once everything else is gone.
    _cleanup: Option<NatsCleanup>,
}

async fn world(name: &str) -> World {
    world_on(name, Env::Sqlite).await.unwrap()
}

/// The four services in `env` (`None`, after a `NOTICE:` line, when its servers are not
/// configured).
async fn world_on(name: &str, env: Env) -> Option<World> {
    if !available(name, env) {
        return None;
    }
    let dir = TempDir::new(name);
    let urls = store_urls(
        name,
        &dir,
        env.postgres(),
        &["consumer", "kitchen", "accounting", "order"],
    )
    .await?;
    let TestBus { bus, cleanup } = test_bus(&dir, env).await;
    let stop = CancellationToken::new();
    let (consumer, _c1) = participant("consumer", bus.clone(), &urls[0], stop.clone()).await;
    let (kitchen, _c2) = participant("kitchen", bus.clone(), &urls[1], stop.clone()).await;
    let (accounting, _c3) = participant("accounting", bus.clone(), &urls[2], stop.clone()).await;
    let (order, orch) = order_service(bus.clone(), &urls[3], stop.clone()).await;
    tokio::time::sleep(Duration::from_millis(600)).await; // partition assignment
    Some(World {
        _dir: dir,
        _consumers: vec![_c1, _c2, _c3],
        bus,
        order,
        orch,
        consumer,
        kitchen,
        accounting,
        stop,
        _cleanup: cleanup,
    })
}

fn data(id: &str, fail_at: &str) -> OrderData {
    OrderData {
        order_id: id.to_owned(),
        total: 1250,
        fail_at: fail_at.to_owned(),
        ticket_id: None,
        authorization: None,
        rejection: None,
        flaky_at: String::new(),
    }
}

async fn start(w: &World, d: OrderData) -> String {
    let mut tx = w.order.begin().await.unwrap();
    let id = w.orch.start(&mut tx, d).await.unwrap();
    tx.commit().await.unwrap();
    id
}

async fn wait_final(store: &Store, id: &str) -> keel_saga::SagaDetail {
    for _ in 0..400 {
        let d = query::get(store, id).await.unwrap().unwrap();
        if d.summary.state.is_final() {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "saga {id} did not end: {:?}",
        query::get(store, id).await.unwrap()
    );
}

fn kinds(d: &keel_saga::SagaDetail) -> Vec<String> {
    d.timeline
        .iter()
        .map(|e| match &e.step_name {
            Some(s) => format!("{} {}", e.kind, s),
            None => e.kind.clone(),
        })
        .collect()
}

#[tokio::test]
async fn all_steps_succeed() {
    check_all_steps_succeed(world("saga-ok").await).await;
}

#[tokio::test]
async fn all_steps_succeed_on_postgres() {
    if let Some(w) = world_on("saga-ok-pg", Env::Postgres).await {
        check_all_steps_succeed(w).await;
    }
}

#[tokio::test]
async fn all_steps_succeed_on_postgres_and_nats() {
    if let Some(w) = world_on("saga-ok-nats", Env::PostgresNats).await {
        check_all_steps_succeed(w).await;
    }
}

async fn check_all_steps_succeed(w: World) {
    let id = start(&w, data("o1", "")).await;
    let d = wait_final(&w.order, &id).await;
    assert_eq!(d.summary.state, SagaState::Completed, "{:#?}", d.timeline);
    assert_eq!(
        order_state(&w.order, "o1").await.as_deref(),
        Some("APPROVED")
    );
    assert_eq!(effects(&w.consumer, "o1").await, vec!["validated"]);
    assert_eq!(
        effects(&w.kitchen, "o1").await,
        vec!["ticket created", "ticket confirmed"]
    );
    assert_eq!(effects(&w.accounting, "o1").await, vec!["authorized"]);
    assert_eq!(d.data["ticket_id"], "t-o1");
    assert_eq!(d.data["authorization"], "a-o1");
    let k = kinds(&d);
    assert_eq!(k.first().map(String::as_str), Some("STARTED"));
    assert_eq!(k.last().map(String::as_str), Some("COMPLETED"));
    assert!(
        k.contains(&"COMMAND_SENT authorize payment".to_owned()),
        "{k:?}"
    );
    w.stop.cancel();
}

#[tokio::test]
async fn a_failure_at_each_step_compensates_exactly_the_completed_steps_in_reverse() {
    check_failures_compensate(world("saga-fail").await).await;
}

#[tokio::test]
async fn a_failure_at_each_step_compensates_exactly_the_completed_steps_on_postgres() {
    if let Some(w) = world_on("saga-fail-pg", Env::Postgres).await {
        check_failures_compensate(w).await;
    }
}

#[tokio::test]
async fn a_failure_at_each_step_compensates_exactly_the_completed_steps_on_postgres_and_nats() {
    if let Some(w) = world_on("saga-fail-nats", Env::PostgresNats).await {
        check_failures_compensate(w).await;
    }
}

/// (The kitchen and accounting write an effect before refusing: the participant helper's
/// savepoint must undo it, so they show no effect.)
async fn check_failures_compensate(w: World) {
    // consumer refuses: only the local order creation is undone.
    let a = start(&w, data("a", "consumer")).await;
    // kitchen refuses: nothing of the kitchen to undo.
    let b = start(&w, data("b", "kitchen")).await;
    // accounting (the pivot) refuses: the ticket is cancelled, then the order rejected.
    let c = start(&w, data("c", "accounting")).await;

    let da = wait_final(&w.order, &a).await;
    assert_eq!(
        da.summary.state,
        SagaState::Compensated,
        "{:#?}",
        da.timeline
    );
    assert_eq!(da.data["rejection"], "OrderLimitExceeded");
    assert_eq!(
        order_state(&w.order, "a").await.as_deref(),
        Some("REJECTED")
    );
    assert!(effects(&w.kitchen, "a").await.is_empty());

    let db = wait_final(&w.order, &b).await;
    assert_eq!(db.summary.state, SagaState::Compensated);
    assert_eq!(db.data["rejection"], "MenuItemUnavailable");
    assert_eq!(effects(&w.consumer, "b").await, vec!["validated"]);
    assert!(
        effects(&w.kitchen, "b").await.is_empty(),
        "a refused ticket needs no cancel"
    );
    assert_eq!(
        order_state(&w.order, "b").await.as_deref(),
        Some("REJECTED")
    );

    let dc = wait_final(&w.order, &c).await;
    assert_eq!(
        dc.summary.state,
        SagaState::Compensated,
        "{:#?}",
        dc.timeline
    );
    assert_eq!(dc.data["rejection"], "PaymentDeclined");
    assert_eq!(
        effects(&w.kitchen, "c").await,
        vec!["ticket created", "ticket cancelled"]
    );
    assert!(effects(&w.accounting, "c").await.is_empty());
    assert_eq!(
        order_state(&w.order, "c").await.as_deref(),
        Some("REJECTED")
    );
    // Reverse order: the ticket is compensated before the order.
    let k = kinds(&dc);
    let ticket = k
        .iter()
        .position(|s| s == "COMPENSATED create ticket")
        .unwrap();
    let order = k
        .iter()
        .position(|s| s == "COMPENSATED create order")
        .unwrap();
    assert!(ticket < order, "{k:?}");
    w.stop.cancel();
}

#[tokio::test]
async fn duplicate_and_stale_replies_are_ignored() {
    check_duplicates(world("saga-dup").await).await;
}

#[tokio::test]
async fn duplicate_and_stale_replies_are_ignored_on_postgres_and_nats() {
    if let Some(w) = world_on("saga-dup-nats", Env::PostgresNats).await {
        check_duplicates(w).await;
    }
}

/// (On NATS the server itself drops the second publish of a message id within its
/// duplicate window; on the embedded bus the orchestrator's inbox does.)
async fn check_duplicates(w: World) {
    let id = start(&w, data("d1", "")).await;
    let d = wait_final(&w.order, &id).await;
    assert_eq!(d.summary.state, SagaState::Completed);
    // A stale reply (an old correlation id, a new message id so the inbox lets it through)
    // arrives after the saga moved on: it is recorded and ignored.
    let stale = Message::new(w.orch.reply_destination(), json!({"ticketId": "forged"}))
        .with_key(id.clone())
        .with_header(headers::CORRELATION_ID, format!("{id}|2|0|f"))
        .with_header(headers::TYPE, "CreateTicketReply")
        .with_header(REPLY_OUTCOME, "FAILURE");
    w.bus.publish(&stale).await.unwrap();
    // The same message again: dropped by the inbox before the engine sees it.
    w.bus.publish(&stale).await.unwrap();
    let mut ignored = 0;
    for _ in 0..800 {
        let d = query::get(&w.order, &id).await.unwrap().unwrap();
        ignored = d
            .timeline
            .iter()
            .filter(|e| e.kind == "REPLY_IGNORED")
            .count();
        if ignored > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = query::get(&w.order, &id).await.unwrap().unwrap();
    assert_eq!(
        d.timeline
            .iter()
            .filter(|e| e.kind == "REPLY_IGNORED")
            .count(),
        1,
        "duplicate dropped by the inbox"
    );
    assert_eq!(ignored, 1);
    assert_eq!(d.summary.state, SagaState::Completed);
    assert_eq!(d.data["ticket_id"], "t-d1");
    w.stop.cancel();
}

#[tokio::test]
async fn a_step_without_an_answer_times_out_and_compensates() {
    check_timeout("saga-timeout", Env::Sqlite).await;
}

#[tokio::test]
async fn a_step_without_an_answer_times_out_and_compensates_on_postgres() {
    check_timeout("saga-timeout-pg", Env::Postgres).await;
}

#[tokio::test]
async fn a_step_without_an_answer_times_out_and_compensates_on_postgres_and_nats() {
    check_timeout("saga-timeout-nats", Env::PostgresNats).await;
}

async fn check_timeout(name: &str, env: Env) {
    if !available(name, env) {
        return;
    }
    let dir = TempDir::new(name);
    let Some(urls) = store_urls(name, &dir, env.postgres(), &["svc"]).await else {
        return;
    };
    let TestBus {
        bus,
        cleanup: _cleanup,
    } = test_bus(&dir, env).await;
    let store = Store::connect(&urls[0]).await.unwrap();
    store.migrate("t", ORDER_TABLES).await.unwrap();
    let outbox = Outbox::new(store.clone()).await.unwrap();
    let stop = CancellationToken::new();
    relay(outbox.clone(), bus.clone(), stop.clone());
    let def = SagaDefinition::<OrderData>::new("silent")
        .step(
            Step::local("create order", |tx, d: &mut OrderData| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO orders (id, state) VALUES ($1, 'APPROVAL_PENDING')")
                        .bind(&d.order_id)
                        .execute(tx.conn())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            })
            .compensate_locally(|tx, d: &mut OrderData| {
                Box::pin(async move {
                    sqlx::query("UPDATE orders SET state = 'REJECTED' WHERE id = $1")
                        .bind(&d.order_id)
                        .execute(tx.conn())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            }),
        )
        .step(
            Step::command("ask nobody", |_d: &OrderData| {
                Command::new("nobody.commands", "Hello", json!({}))
            })
            .timeout(Duration::from_millis(300))
            .attempts(2),
        );
    let orch = Orchestrator::new(def, store.clone(), outbox, "svc")
        .await
        .unwrap();
    let o = orch.clone();
    let s = stop.clone();
    tokio::spawn(async move { o.run(bus, s).await });
    let mut tx = store.begin().await.unwrap();
    let id = orch.start(&mut tx, data("t1", "")).await.unwrap();
    tx.commit().await.unwrap();
    let d = wait_final(&store, &id).await;
    assert_eq!(d.summary.state, SagaState::Compensated);
    let k = kinds(&d);
    assert_eq!(
        k.iter().filter(|s| s.starts_with("TIMEOUT")).count(),
        2,
        "two attempts: {k:?}"
    );
    assert_eq!(order_state(&store, "t1").await.as_deref(), Some("REJECTED"));
    assert!(d.summary.error.unwrap().contains("timed out"));
    stop.cancel();
}

#[tokio::test]
async fn a_locked_resource_refuses_a_second_saga_until_the_first_ends() {
    check_locks(world("saga-lock").await).await;
}

#[tokio::test]
async fn a_locked_resource_refuses_a_second_saga_until_the_first_ends_on_postgres() {
    if let Some(w) = world_on("saga-lock-pg", Env::Postgres).await {
        check_locks(w).await;
    }
}

async fn check_locks(w: World) {
    // Two concurrent starts on one resource: the second waits for the first transaction
    // (PostgreSQL: on the lock row; SQLite: in the writer queue), then is refused with
    // `Locked` — never a store error.
    let mut tx1 = w.order.begin().await.unwrap();
    let held = w
        .orch
        .start_locked(&mut tx1, data("l0", ""), "order:l0")
        .await
        .unwrap();
    let second = tokio::spawn({
        let (order, orch) = (w.order.clone(), w.orch.clone());
        async move {
            let mut tx2 = order.begin().await.unwrap();
            let r = orch
                .start_locked(&mut tx2, data("l0b", ""), "order:l0")
                .await;
            tx2.rollback().await.unwrap();
            r
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx1.commit().await.unwrap();
    match second.await.unwrap() {
        Err(SagaError::Locked { resource, holder }) => {
            assert_eq!(resource, "order:l0");
            assert_eq!(holder, held);
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    wait_final(&w.order, &held).await;

    let mut tx = w.order.begin().await.unwrap();
    let first = w
        .orch
        .start_locked(&mut tx, data("l1", ""), "order:l1")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = w.order.begin().await.unwrap();
    let err = w
        .orch
        .start_locked(&mut tx, data("l1b", ""), "order:l1")
        .await
        .unwrap_err();
    tx.rollback().await.unwrap();
    assert!(matches!(err, SagaError::Locked { .. }), "{err}");
    wait_final(&w.order, &first).await;
    let mut tx = w.order.begin().await.unwrap();
    w.orch
        .start_locked(&mut tx, data("l1c", ""), "order:l1")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    w.stop.cancel();
}

#[tokio::test]
async fn sagas_are_listed_and_inspected_over_http() {
    let w = world("saga-http").await;
    let ok = start(&w, data("h1", "")).await;
    let bad = start(&w, data("h2", "consumer")).await;
    wait_final(&w.order, &ok).await;
    wait_final(&w.order, &bad).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, query::router(w.order.clone())).await });
    let http = reqwest::Client::new();
    let list: serde_json::Value = http
        .get(format!(
            "http://{addr}/sagas?type=create-order&state=compensated"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![bad.as_str()]);
    let one: serde_json::Value = http
        .get(format!("http://{addr}/sagas/{ok}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["state"], "COMPLETED");
    assert_eq!(one["data"]["order_id"], "h1");
    assert!(one["timeline"].as_array().unwrap().len() >= 10);
    let missing = http
        .get(format!("http://{addr}/sagas/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    let bad_state = http
        .get(format!("http://{addr}/sagas?state=sleeping"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_state.status(), 400);
    w.stop.cancel();
    let _ = (&w.consumer, &w.kitchen, &w.accounting);
}

#[test]
fn definitions_that_break_the_structure_are_refused() {
    let after_pivot = SagaDefinition::<OrderData>::new("bad")
        .step(Step::command("pay", |_d: &OrderData| Command::new("a", "A", json!({}))).pivot())
        .step(Step::command("ship", |_d: &OrderData| {
            Command::new("b", "B", json!({}))
        }));
    let e = after_pivot.validate().unwrap_err();
    assert!(
        e.to_string().contains("after the pivot must be retriable"),
        "{e}"
    );
    let two_pivots = SagaDefinition::<OrderData>::new("bad")
        .step(Step::command("a", |_d: &OrderData| Command::new("a", "A", json!({}))).pivot())
        .step(Step::command("b", |_d: &OrderData| Command::new("b", "B", json!({}))).pivot());
    assert!(two_pivots.validate().is_err());
    let compensated_pivot = SagaDefinition::<OrderData>::new("bad").step(
        Step::command("a", |_d: &OrderData| Command::new("a", "A", json!({})))
            .compensate_with(|_d: &OrderData| Command::new("a", "Undo", json!({})))
            .pivot(),
    );
    assert!(compensated_pivot.validate().is_err());
    let retriable_before_pivot = SagaDefinition::<OrderData>::new("bad")
        .step(Step::command("a", |_d: &OrderData| Command::new("a", "A", json!({}))).retriable())
        .step(Step::command("b", |_d: &OrderData| Command::new("b", "B", json!({}))).pivot());
    let e = retriable_before_pivot.validate().unwrap_err();
    assert!(
        e.to_string()
            .contains("retriable steps come after the pivot"),
        "{e}"
    );
    assert_eq!(e.step, "a");
    let retriable_then_compensatable = SagaDefinition::<OrderData>::new("bad")
        .step(Step::command("a", |_d: &OrderData| Command::new("a", "A", json!({}))).retriable())
        .step(Step::command("b", |_d: &OrderData| {
            Command::new("b", "B", json!({}))
        }));
    assert!(retriable_then_compensatable.validate().is_err());
    // Without a pivot, retriable steps may end the saga.
    let retriable_tail = SagaDefinition::<OrderData>::new("ok")
        .step(Step::command("a", |_d: &OrderData| {
            Command::new("a", "A", json!({}))
        }))
        .step(Step::command("b", |_d: &OrderData| Command::new("b", "B", json!({}))).retriable());
    assert!(retriable_tail.validate().is_ok());
    assert!(create_order_saga().validate().is_ok());
}

/// A kitchen step with a short timeout and many attempts, then the pivot.
fn resend_saga() -> SagaDefinition<OrderData> {
    SagaDefinition::new("resend")
        .step(
            Step::command("create ticket", |d: &OrderData| {
                Command::new(
                    "kitchen.commands",
                    "CreateTicket",
                    json!({"orderId": d.order_id}),
                )
            })
            .on_reply(|d, r| d.ticket_id = r.payload["ticketId"].as_str().map(str::to_owned))
            .compensate_with(|d: &OrderData| {
                Command::new(
                    "kitchen.commands",
                    "CancelTicket",
                    json!({"orderId": d.order_id}),
                )
            })
            .timeout(Duration::from_millis(300))
            .attempts(100),
        )
        .step(
            Step::command("authorize payment", |d: &OrderData| {
                Command::new(
                    "accounting.commands",
                    "Authorize",
                    json!({"orderId": d.order_id}),
                )
            })
            .pivot()
            .timeout(Duration::from_secs(20)),
        )
}

#[tokio::test]
async fn a_command_resent_after_a_timeout_is_applied_once() {
    check_resend("saga-resend", false).await;
}

#[tokio::test]
async fn a_command_resent_after_a_timeout_is_applied_once_on_postgres() {
    check_resend("saga-resend-pg", true).await;
}

/// The kitchen (its own store) is down for several step timeouts: the orchestrator resends
/// the command each time. Back up, the kitchen applies the first copy and only answers the
/// resends (the same message id, so its inbox knows them) with the stored reply — one
/// ticket — and the saga completes.
async fn check_resend(name: &str, postgres: bool) {
    let dir = TempDir::new(name);
    let Some(urls) = store_urls(name, &dir, postgres, &["kitchen", "accounting", "order"]).await
    else {
        return;
    };
    let bus = open_bus(&dir.sqlite_url("bus.db")).await;
    let stop = CancellationToken::new();
    let kitchen_stop = CancellationToken::new();
    let (_, kitchen_consumer) =
        participant("kitchen", bus.clone(), &urls[0], kitchen_stop.clone()).await;
    let (accounting, _c) = participant("accounting", bus.clone(), &urls[1], stop.clone()).await;
    let (order, orch) =
        order_service_with(resend_saga(), bus.clone(), &urls[2], stop.clone()).await;
    // Every reply the orchestrator is sent, seen by a group of its own.
    let replies: Arc<std::sync::Mutex<Vec<Message>>> = Arc::default();
    let _spy = bus
        .subscribe(
            keel_messaging::Subscription::new(orch.reply_destination(), "spy"),
            keel_messaging::handler_fn({
                let replies = replies.clone();
                move |d| {
                    replies.lock().unwrap().push(d.message);
                    async { Ok(()) }
                }
            }),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;

    kitchen_consumer.stop().await;
    kitchen_stop.cancel();
    let id = {
        let mut tx = order.begin().await.unwrap();
        let id = orch.start(&mut tx, data("r1", "")).await.unwrap();
        tx.commit().await.unwrap();
        id
    };
    tokio::time::sleep(Duration::from_millis(1500)).await; // five step timeouts
    let (kitchen, _c2) = participant("kitchen", bus.clone(), &urls[0], stop.clone()).await;

    let d = wait_final(&order, &id).await;
    assert_eq!(d.summary.state, SagaState::Completed, "{:#?}", d.timeline);
    let k = kinds(&d);
    assert!(
        k.iter().filter(|s| s.starts_with("TIMEOUT")).count() >= 2,
        "resent after timeouts: {k:?}"
    );
    assert_eq!(
        effects(&kitchen, "r1").await,
        vec!["ticket created"],
        "applied once"
    );
    assert_eq!(effects(&accounting, "r1").await, vec!["authorized"]);
    assert_eq!(d.data["ticket_id"], "t-r1");
    assert!(
        !k.iter().any(|s| s.starts_with("REPLY_IGNORED")),
        "answers to resends carry the first reply's id: the inbox drops them: {k:?}"
    );
    // The resends were answered (with the stored reply, under the same id).
    let mut ticket_replies = Vec::new();
    for _ in 0..100 {
        ticket_replies = replies
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.message_type() == Some("CreateTicketReply"))
            .map(|m| m.id.clone())
            .collect::<Vec<_>>();
        if ticket_replies.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ticket_replies.len() >= 2, "{ticket_replies:?}");
    assert!(
        ticket_replies.iter().all(|r| *r == ticket_replies[0]),
        "{ticket_replies:?}"
    );
    stop.cancel();
}

static COMPENSATION_CALLS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Local steps only: the second writes, changes the data, then fails; the first step's
/// compensation writes and fails twice before it succeeds.
fn local_saga() -> SagaDefinition<OrderData> {
    SagaDefinition::new("local")
        .step(
            Step::local("create order", |tx, d: &mut OrderData| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO orders (id, state) VALUES ($1, 'APPROVAL_PENDING')")
                        .bind(&d.order_id)
                        .execute(tx.conn())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            })
            .compensate_locally(|tx, d: &mut OrderData| {
                Box::pin(async move {
                    let calls = {
                        let mut c = COMPENSATION_CALLS.lock().unwrap();
                        c.push(d.order_id.clone());
                        c.iter().filter(|o| **o == d.order_id).count()
                    };
                    if calls <= 2 {
                        sqlx::query("INSERT INTO orders (id, state) VALUES ($1, 'JUNK')")
                            .bind(format!("junk-{}-{calls}", d.order_id))
                            .execute(tx.conn())
                            .await
                            .map_err(|e| e.to_string())?;
                        d.rejection = Some("dirty".into());
                        return Err(format!("transient failure {calls}"));
                    }
                    sqlx::query("UPDATE orders SET state = 'REJECTED' WHERE id = $1")
                        .bind(&d.order_id)
                        .execute(tx.conn())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            }),
        )
        .step(Step::local("reserve stock", |tx, d: &mut OrderData| {
            Box::pin(async move {
                sqlx::query("INSERT INTO orders (id, state) VALUES ($1, 'RESERVED')")
                    .bind(format!("reserved-{}", d.order_id))
                    .execute(tx.conn())
                    .await
                    .map_err(|e| e.to_string())?;
                d.rejection = Some("dirty".into());
                Err("out of stock".to_owned())
            })
        }))
}

#[tokio::test]
async fn failing_local_steps_and_compensations_leave_no_writes_and_are_retried() {
    check_local_rollback("saga-local", false, "lr").await;
}

#[tokio::test]
async fn failing_local_steps_and_compensations_leave_no_writes_on_postgres() {
    check_local_rollback("saga-local-pg", true, "lr-pg").await;
}

async fn check_local_rollback(name: &str, postgres: bool, order_id: &str) {
    let dir = TempDir::new(name);
    let Some(urls) = store_urls(name, &dir, postgres, &["order"]).await else {
        return;
    };
    let bus = open_bus(&dir.sqlite_url("bus.db")).await;
    let stop = CancellationToken::new();
    let (order, orch) = order_service_with(local_saga(), bus, &urls[0], stop.clone()).await;
    let mut tx = order.begin().await.unwrap();
    let id = orch.start(&mut tx, data(order_id, "")).await.unwrap();
    tx.commit().await.unwrap();
    let d = wait_final(&order, &id).await;
    assert_eq!(d.summary.state, SagaState::Compensated, "{:#?}", d.timeline);
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, state FROM orders ORDER BY id")
        .fetch_all(order.pool())
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![(order_id.to_owned(), "REJECTED".to_owned())],
        "the failed step's and the failed compensations' writes are rolled back"
    );
    assert_eq!(
        d.data["rejection"],
        serde_json::Value::Null,
        "data restored"
    );
    let k = kinds(&d);
    assert_eq!(
        k.iter()
            .filter(|s| *s == "RETRY_SCHEDULED create order")
            .count(),
        2,
        "{k:?}"
    );
    assert!(k.contains(&"STEP_FAILED reserve stock".to_owned()), "{k:?}");
    assert!(d.summary.error.unwrap().contains("out of stock"));
    stop.cancel();
}
