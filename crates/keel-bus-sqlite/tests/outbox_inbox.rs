//! The outbox and the inbox on both stores (SQLite always; PostgreSQL when
//! `KEEL_TEST_DATABASE_URL` is set), relaying to the embedded bus.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use keel_bus_sqlite::{Settings, SqliteBus};
use keel_messaging::{
    Bus, BusError, Consumer, Delivery, Handler, HandlerError, Inbox, Message, Outbox, Processed,
    Subscription,
};
use keel_store::{Migration, Store, testing::TempDir};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const APPLIED: &[Migration] = &[Migration::new(
    1,
    "applied",
    "CREATE TABLE applied (seq {auto_id}, msg_key TEXT NOT NULL, n {bigint} NOT NULL)",
)];

/// The real bus behind a switch that makes it unavailable (fault injection).
#[derive(Debug)]
struct Switchable {
    bus: SqliteBus,
    down: AtomicBool,
}

impl Bus for Switchable {
    fn publish<'a>(&'a self, m: &'a Message) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(BusError::Unavailable("broker is down (test)".into()));
            }
            self.bus.publish(m).await
        })
    }
    fn subscribe(
        &self,
        s: Subscription,
        h: Arc<dyn Handler>,
    ) -> BoxFuture<'_, Result<Consumer, BusError>> {
        self.bus.subscribe(s, h)
    }
    fn backend(&self) -> &'static str {
        "switchable"
    }
}

async fn stores(dir: &TempDir, test: &str) -> Vec<Store> {
    let mut v = vec![Store::connect(&dir.sqlite_url("svc.db")).await.unwrap()];
    if let Some((pg, _)) = keel_store::testing::fresh_postgres(test).await.unwrap() {
        v.push(pg);
    }
    v
}

async fn count(store: &Store, sql: &'static str) -> i64 {
    sqlx::query_as::<_, (i64,)>(sql)
        .fetch_one(store.pool())
        .await
        .map(|r| r.0)
        .unwrap_or(-1)
}

async fn until(store: &Store, sql: &'static str, n: i64) -> i64 {
    let mut last = 0;
    for _ in 0..800 {
        last = count(store, sql).await;
        if last >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    last
}

fn applier(inbox: Inbox) -> Arc<dyn Handler> {
    inbox.handler(|mut tx, d: Delivery| async move {
        let n = d.message.payload["n"]
            .as_i64()
            .ok_or_else(|| HandlerError::reject("payload has no n"))?;
        sqlx::query("INSERT INTO applied (msg_key, n) VALUES ($1, $2)")
            .bind(d.message.key.clone().unwrap_or_default())
            .bind(n)
            .execute(tx.conn())
            .await
            .map_err(HandlerError::retry)?;
        Ok(tx)
    })
}

#[tokio::test]
async fn outbox_publishes_committed_messages_only_in_order_with_two_relays() {
    let dir = TempDir::new("outbox");
    for store in stores(&dir, "outbox_publishes_committed_messages_only").await {
        let backend = store.backend();
        store.migrate("t", APPLIED).await.unwrap();
        let bus = SqliteBus::open_with(
            &dir.sqlite_url(&format!("bus-{backend:?}.db")),
            Settings::default(),
        )
        .await
        .unwrap();
        let dest = format!("orders-{backend:?}").to_lowercase();
        let inbox = Inbox::new(store.clone(), "t").await.unwrap();
        let c = bus
            .subscribe(Subscription::new(dest.clone(), "g"), applier(inbox))
            .await
            .unwrap();

        let outbox = Outbox::new(store.clone()).await.unwrap();
        // A rolled-back transaction publishes nothing.
        let mut tx = store.begin().await.unwrap();
        outbox
            .send(
                &mut tx,
                &Message::new(dest.clone(), json!({"n": -1})).with_key("x"),
            )
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(outbox.backlog().await.unwrap(), 0);

        // Two relays on one database: one publishes at a time, order holds, nothing doubles.
        let stop = CancellationToken::new();
        let bus_arc: Arc<dyn Bus> = Arc::new(bus.clone());
        tokio::spawn(outbox.clone().run_relay(bus_arc.clone(), stop.clone()));
        let second = Outbox::new(store.clone()).await.unwrap();
        tokio::spawn(second.run_relay(bus_arc, stop.clone()));
        for batch in 0..10 {
            let mut tx = store.begin().await.unwrap();
            for n in batch * 20..(batch + 1) * 20 {
                let m = Message::new(dest.clone(), json!({"n": n})).with_key(format!("k{}", n % 7));
                outbox.send(&mut tx, &m).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
        let got = until(&store, "SELECT COUNT(*) FROM applied", 200).await;
        assert_eq!(got, 200, "{backend:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM applied").await,
            200,
            "{backend:?}: once each"
        );
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT msg_key, n FROM applied ORDER BY seq")
                .fetch_all(store.pool())
                .await
                .unwrap();
        let mut last = std::collections::HashMap::new();
        for (k, n) in rows {
            if let Some(p) = last.insert(k.clone(), n) {
                assert!(n > p, "{backend:?}: key {k} out of order");
            }
        }
        assert!(
            rows_absent_negative(&store).await,
            "{backend:?}: the rolled-back message never arrived"
        );
        stop.cancel();
        c.stop().await;
    }
}

async fn rows_absent_negative(store: &Store) -> bool {
    count(store, "SELECT COUNT(*) FROM applied WHERE n < 0").await == 0
}

#[tokio::test]
async fn outbox_keeps_accepting_while_the_bus_is_down_and_drains_after() {
    let dir = TempDir::new("outbox-down");
    for store in stores(&dir, "outbox_keeps_accepting_while_the_bus_is_down").await {
        let backend = store.backend();
        store.migrate("t", APPLIED).await.unwrap();
        let bus = SqliteBus::open(&dir.sqlite_url(&format!("bus-down-{backend:?}.db")))
            .await
            .unwrap();
        let flaky = Arc::new(Switchable {
            bus: bus.clone(),
            down: AtomicBool::new(true),
        });
        let dest = format!("down-{backend:?}").to_lowercase();
        let inbox = Inbox::new(store.clone(), "t").await.unwrap();
        let c = bus
            .subscribe(Subscription::new(dest.clone(), "g"), applier(inbox))
            .await
            .unwrap();
        let outbox = Outbox::new(store.clone()).await.unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(outbox.clone().run_relay(flaky.clone(), stop.clone()));
        for n in 0..50 {
            let mut tx = store.begin().await.unwrap();
            outbox
                .send(
                    &mut tx,
                    &Message::new(dest.clone(), json!({"n": n})).with_key("k"),
                )
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            outbox.backlog().await.unwrap(),
            50,
            "{backend:?}: nothing lost, nothing sent"
        );
        flaky.down.store(false, Ordering::SeqCst);
        assert_eq!(
            until(&store, "SELECT COUNT(*) FROM applied", 50).await,
            50,
            "{backend:?}"
        );
        assert_eq!(outbox.backlog().await.unwrap(), 0);
        stop.cancel();
        c.stop().await;
    }
}

#[tokio::test]
async fn inbox_drops_duplicates_on_both_stores() {
    let dir = TempDir::new("inbox");
    for store in stores(&dir, "inbox_drops_duplicates_on_both_stores").await {
        let backend = store.backend();
        store.migrate("t", APPLIED).await.unwrap();
        let inbox = Inbox::new(store.clone(), "consumer-a").await.unwrap();
        let apply = |n: i64| {
            move |mut tx: keel_store::Tx| async move {
                sqlx::query("INSERT INTO applied (msg_key, n) VALUES ($1, $2)")
                    .bind("k")
                    .bind(n)
                    .execute(tx.conn())
                    .await
                    .map_err(HandlerError::retry)?;
                Ok(tx)
            }
        };
        assert_eq!(
            inbox.process("m-1", apply(1)).await.unwrap(),
            Processed::Applied
        );
        assert_eq!(
            inbox.process("m-1", apply(1)).await.unwrap(),
            Processed::Duplicate
        );
        // A failed handler records nothing: the retry applies it.
        let failing = |tx: keel_store::Tx| async move {
            drop(tx);
            Err::<keel_store::Tx, _>(HandlerError::retry("boom"))
        };
        assert!(inbox.process("m-2", failing).await.is_err());
        assert_eq!(
            inbox.process("m-2", apply(2)).await.unwrap(),
            Processed::Applied
        );
        // Another consumer has its own record of the same message.
        let other = Inbox::new(store.clone(), "consumer-b").await.unwrap();
        assert_eq!(
            other.process("m-1", apply(3)).await.unwrap(),
            Processed::Applied
        );
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM applied").await,
            3,
            "{backend:?}"
        );
        assert_eq!(inbox.prune(-1_000).await.unwrap(), 2);
    }
}

#[tokio::test]
async fn concurrent_transactions_committing_out_of_order_lose_nothing() {
    let dir = TempDir::new("outbox-concurrent");
    for store in stores(&dir, "concurrent_transactions_committing_out_of_order").await {
        let backend = store.backend();
        store.migrate("t", APPLIED).await.unwrap();
        let bus = SqliteBus::open(&dir.sqlite_url(&format!("bus-conc-{backend:?}.db")))
            .await
            .unwrap();
        let dest = format!("conc-{backend:?}").to_lowercase();
        let inbox = Inbox::new(store.clone(), "t").await.unwrap();
        let c = bus
            .subscribe(Subscription::new(dest.clone(), "g"), applier(inbox))
            .await
            .unwrap();
        let outbox = Outbox::new(store.clone()).await.unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(
            outbox
                .clone()
                .run_relay(Arc::new(bus.clone()), stop.clone()),
        );
        // Each transaction takes its sequence number, then lingers a random while before
        // committing, so later numbers often commit (and are relayed) first.
        let mut tasks = Vec::new();
        for p in 0..4i64 {
            let (store, outbox, dest) = (store.clone(), outbox.clone(), dest.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..40i64 {
                    let n = p * 1000 + i;
                    let mut tx = store.begin().await.unwrap();
                    outbox
                        .send(
                            &mut tx,
                            &Message::new(dest.clone(), json!({"n": n})).with_key(format!("p{p}")),
                        )
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis((n * 7 % 5) as u64)).await;
                    tx.commit().await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            until(&store, "SELECT COUNT(*) FROM applied", 160).await,
            160,
            "{backend:?}: nothing lost"
        );
        assert_eq!(outbox.backlog().await.unwrap(), 0);
        stop.cancel();
        c.stop().await;
    }
}

#[tokio::test]
async fn inbox_subscribe_applies_a_republished_message_once() {
    let dir = TempDir::new("inbox-subscribe");
    for store in stores(&dir, "inbox_subscribe_applies_a_republished_message_once").await {
        let backend = store.backend();
        store.migrate("t", APPLIED).await.unwrap();
        let bus = SqliteBus::open(&dir.sqlite_url(&format!("bus-sub-{backend:?}.db")))
            .await
            .unwrap();
        let dest = format!("sub-{backend:?}").to_lowercase();
        let inbox = Inbox::new(store.clone(), "kitchen").await.unwrap();
        let c = inbox
            .subscribe(
                &bus,
                Subscription::new(dest.clone(), "kitchen"),
                |mut tx, d: Delivery| async move {
                    sqlx::query("INSERT INTO applied (msg_key, n) VALUES ($1, $2)")
                        .bind(d.message.key.clone().unwrap_or_default())
                        .bind(d.message.payload["n"].as_i64().unwrap_or(-1))
                        .execute(tx.conn())
                        .await
                        .map_err(HandlerError::retry)?;
                    Ok(tx)
                },
            )
            .await
            .unwrap();
        // The same message three times (a relay crash between publish and delete, a
        // replay), then another one.
        let m = Message::new(dest.clone(), json!({"n": 1})).with_key("k");
        for _ in 0..3 {
            bus.publish(&m).await.unwrap();
        }
        bus.publish(&Message::new(dest.clone(), json!({"n": 2})).with_key("k"))
            .await
            .unwrap();
        assert_eq!(
            until(&store, "SELECT COUNT(*) FROM applied WHERE n = 2", 1).await,
            1,
            "{backend:?}"
        );
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM applied").await,
            2,
            "{backend:?}: the duplicates were dropped"
        );
        c.stop().await;
    }
}

tokio::task_local! {
    /// The test's stand-in for the chassis's current trace context.
    static TRACE: keel_messaging::trace::TraceHeaders;
}

fn current_trace() -> Option<keel_messaging::trace::TraceHeaders> {
    TRACE.try_with(Clone::clone).ok()
}

#[tokio::test]
async fn outbox_and_publish_carry_the_current_trace_context() {
    use keel_messaging::headers::{TRACEPARENT, TRACESTATE};
    keel_messaging::trace::set_source(current_trace);
    let cx = keel_messaging::trace::TraceHeaders {
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        tracestate: Some("keel=t".into()),
    };
    let dir = TempDir::new("trace");
    for store in stores(&dir, "outbox_and_publish_carry_the_current_trace_context").await {
        let backend = store.backend();
        let bus = SqliteBus::open(&dir.sqlite_url(&format!("bus-trace-{backend:?}.db")))
            .await
            .unwrap();
        let dest = format!("trace-{backend:?}").to_lowercase();
        let got: Arc<std::sync::Mutex<Vec<Message>>> = Arc::default();
        let g = got.clone();
        let c = bus
            .subscribe(
                Subscription::new(dest.clone(), "g"),
                keel_messaging::handler_fn(move |d: Delivery| {
                    let g = g.clone();
                    async move {
                        g.lock().unwrap().push(d.message);
                        Ok(())
                    }
                }),
            )
            .await
            .unwrap();
        let outbox = Outbox::new(store.clone()).await.unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(
            outbox
                .clone()
                .run_relay(Arc::new(bus.clone()), stop.clone()),
        );
        let msg = |n: i64| Message::new(dest.clone(), json!({"n": n})).with_key("k");
        TRACE
            .scope(cx.clone(), async {
                // Sent through the outbox inside a traced request: the relay (another task,
                // later) publishes it with the request's context.
                let mut tx = store.begin().await.unwrap();
                outbox.send(&mut tx, &msg(0)).await.unwrap();
                // One that belongs to a trace already keeps it.
                outbox
                    .send(&mut tx, &msg(1).with_header(TRACEPARENT, "00-own-01"))
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                // Published directly.
                bus.publish(&msg(2)).await.unwrap();
            })
            .await;
        // Outside any trace: nothing added.
        bus.publish(&msg(3)).await.unwrap();
        for _ in 0..400 {
            if got.lock().unwrap().len() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let mut got = got.lock().unwrap().clone();
        assert_eq!(got.len(), 4, "{backend:?}");
        got.sort_by_key(|m| m.payload["n"].as_i64());
        let tp = |m: &Message| m.header(TRACEPARENT).map(str::to_owned);
        assert_eq!(tp(&got[0]), Some(cx.traceparent.clone()), "{backend:?}");
        assert_eq!(got[0].header(TRACESTATE), Some("keel=t"));
        assert_eq!(tp(&got[1]).as_deref(), Some("00-own-01"));
        assert_eq!(got[1].header(TRACESTATE), None);
        assert_eq!(tp(&got[2]), Some(cx.traceparent.clone()));
        assert_eq!(tp(&got[3]), None);
        stop.cancel();
        c.stop().await;
    }
}

/// A handled message's number and the trace context current while it was handled.
type Seen = (i64, Option<keel_messaging::trace::TraceHeaders>);

type Work<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(), keel_messaging::HandlerError>> + Send + 'a>,
>;

/// The test's scope: the carried context becomes the task's current one (the chassis's
/// scope does the same with its own task-local, plus a span).
fn test_scope(cx: keel_messaging::trace::TraceHeaders, work: Work<'_>) -> Work<'_> {
    Box::pin(TRACE.scope(cx, work))
}

#[tokio::test]
async fn handlers_run_in_the_trace_the_message_carries() {
    use keel_messaging::headers::{TRACEPARENT, TRACESTATE};
    keel_messaging::trace::set_scope(test_scope);
    let dir = TempDir::new("trace-scope");
    let bus = SqliteBus::open(&dir.sqlite_url("bus.db")).await.unwrap();
    let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Arc::default();
    let s = seen.clone();
    let c = bus
        .subscribe(
            Subscription::new("scoped", "g"),
            keel_messaging::handler_fn(move |d: Delivery| {
                let s = s.clone();
                async move {
                    let n = d.message.payload["n"].as_i64().unwrap_or(-1);
                    s.lock().unwrap().push((n, current_trace()));
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    let traced = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    bus.publish(
        &Message::new("scoped", json!({"n": 1}))
            .with_key("k")
            .with_header(TRACEPARENT, traced)
            .with_header(TRACESTATE, "keel=t"),
    )
    .await
    .unwrap();
    bus.publish(&Message::new("scoped", json!({"n": 2})).with_key("k"))
        .await
        .unwrap();
    for _ in 0..400 {
        if seen.lock().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (
                1,
                Some(keel_messaging::trace::TraceHeaders {
                    traceparent: traced.into(),
                    tracestate: Some("keel=t".into()),
                })
            ),
            // Without a context in the message, none while handling it.
            (2, None),
        ]
    );
    c.stop().await;
}
