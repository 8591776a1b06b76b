//! Outbox → NATS → inbox, end to end: on SQLite always and on PostgreSQL when
//! `KEEL_TEST_DATABASE_URL` is set; skipped with a notice without `KEEL_TEST_NATS_URL`.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{bus_with, nats_url, settings};
use keel_bus_nats::Settings;
use keel_messaging::{
    Bus, Delivery, Handler, HandlerError, Inbox, Message, Outbox, Subscription, handler_fn,
};
use keel_store::{Migration, Store, testing::TempDir};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const APPLIED: &[Migration] = &[Migration::new(
    1,
    "applied",
    "CREATE TABLE applied (seq {auto_id}, msg_key TEXT NOT NULL, n {bigint} NOT NULL)",
)];

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

async fn until_count(store: &Store, sql: &'static str, n: i64) -> i64 {
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

/// The inbox-wrapped handler applying `n` to the `applied` table, and a count of deliveries
/// (duplicates included).
fn applier(inbox: Inbox, deliveries: Arc<AtomicUsize>) -> Arc<dyn Handler> {
    let inner = inbox.handler(|mut tx, d: Delivery| async move {
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
    });
    handler_fn(move |d: Delivery| {
        let inner = inner.clone();
        let deliveries = deliveries.clone();
        async move {
            deliveries.fetch_add(1, Ordering::SeqCst);
            inner.handle(d).await
        }
    })
}

/// Message `n` on `dest`, keyed by `n` mod 7 (so each key's messages are spread out).
fn numbered(dest: &str, n: i64) -> Message {
    Message::new(dest, json!({ "n": n })).with_key(format!("k{}", n % 7))
}

async fn assert_applied_once_in_key_order(store: &Store, n: i64, what: &str) {
    assert_eq!(
        count(store, "SELECT COUNT(*) FROM applied").await,
        n,
        "{what}: once each"
    );
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT msg_key, n FROM applied ORDER BY seq")
        .fetch_all(store.pool())
        .await
        .unwrap();
    let mut last = HashMap::new();
    for (k, n) in rows {
        if let Some(p) = last.insert(k.clone(), n) {
            assert!(n > p, "{what}: key {k}: {n} after {p}");
        }
    }
}

#[tokio::test]
async fn outbox_relays_through_nats_into_the_inbox_once_each_in_key_order() {
    let test = "outbox_relays_through_nats_into_the_inbox_once_each_in_key_order";
    let Some(url) = nats_url(test) else {
        return;
    };
    let dir = TempDir::new("nats-outbox");
    for store in stores(&dir, test).await {
        let backend = store.backend();
        store.migrate("t", APPLIED).await.unwrap();
        // A short duplicate window, so the broker can be made to deliver a message twice.
        let (bus, _cleanup) = bus_with(
            &url,
            Settings {
                duplicate_window: Duration::from_secs(1),
                ..settings()
            },
        )
        .await;
        let bus: Arc<dyn Bus> = Arc::new(bus);
        let dest = "orders.events";
        let deliveries = Arc::new(AtomicUsize::new(0));
        let inbox = Inbox::new(store.clone(), "kitchen.orders").await.unwrap();
        let c = bus
            .subscribe(
                Subscription::new(dest, "kitchen"),
                applier(inbox, deliveries.clone()),
            )
            .await
            .unwrap();

        let outbox = Outbox::new(store.clone()).await.unwrap();
        // A rolled-back transaction publishes nothing.
        let mut tx = store.begin().await.unwrap();
        outbox
            .send(&mut tx, &Message::new(dest, json!({"n": -1})).with_key("x"))
            .await
            .unwrap();
        tx.rollback().await.unwrap();

        // Two relays on one database: one publishes at a time.
        let stop = CancellationToken::new();
        tokio::spawn(outbox.clone().run_relay(bus.clone(), stop.clone()));
        let second = Outbox::new(store.clone()).await.unwrap();
        tokio::spawn(second.run_relay(bus.clone(), stop.clone()));
        for batch in 0..10 {
            let mut tx = store.begin().await.unwrap();
            for n in batch * 20..(batch + 1) * 20 {
                outbox.send(&mut tx, &numbered(dest, n)).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
        let got = until_count(&store, "SELECT COUNT(*) FROM applied", 200).await;
        assert_eq!(got, 200, "{backend:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_applied_once_in_key_order(&store, 200, &format!("{backend:?}")).await;
        assert_eq!(
            count(&store, "SELECT COUNT(*) FROM applied WHERE n < 0").await,
            0,
            "{backend:?}: the rolled-back message never arrived"
        );
        assert_eq!(outbox.backlog().await.unwrap(), 0);

        // A relay that crashed between publishing and deleting re-sends: within the broker's
        // duplicate window the broker drops it; after it, the inbox does. Fresh messages, so
        // the window runs from a send this test timed (the relay's sends above may be older
        // than the window on a slow machine).
        let before = deliveries.load(Ordering::SeqCst);
        let fresh: Vec<Message> = (200..205).map(|n| numbered(dest, n)).collect();
        assert_eq!(bus.publish_all(&fresh).await.0, 5);
        assert_eq!(bus.publish_all(&fresh).await.0, 5);
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(bus.publish_all(&fresh).await.0, 5);
        for _ in 0..400 {
            if deliveries.load(Ordering::SeqCst) >= before + 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            deliveries.load(Ordering::SeqCst),
            before + 10,
            "{backend:?}: the broker dropped the re-send within its window, delivered the later one"
        );
        assert_applied_once_in_key_order(&store, 205, &format!("{backend:?} after re-sends")).await;
        stop.cancel();
        c.stop().await;
    }
}

/// The broker (a server of the test's own) is killed: the outbox keeps accepting, nothing is
/// sent, and everything arrives once the broker is back.
#[tokio::test]
async fn the_outbox_keeps_accepting_while_nats_is_down_and_drains_after() {
    let test = "the_outbox_keeps_accepting_while_nats_is_down_and_drains_after";
    let Some(_) = nats_url(test) else {
        return;
    };
    let Some(mut server) = common::OwnServer::start("outbox-down").await else {
        return;
    };
    let dir = TempDir::new("nats-outbox-down");
    let store = Store::connect(&dir.sqlite_url("svc.db")).await.unwrap();
    store.migrate("t", APPLIED).await.unwrap();
    let (bus, _cleanup) = bus_with(&server.url(), settings()).await;
    let bus: Arc<dyn Bus> = Arc::new(bus);
    let inbox = Inbox::new(store.clone(), "t").await.unwrap();
    let c = bus
        .subscribe(
            Subscription::new("down", "g"),
            applier(inbox, Arc::default()),
        )
        .await
        .unwrap();
    let outbox = Outbox::new(store.clone()).await.unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(outbox.clone().run_relay(bus.clone(), stop.clone()));

    server.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 0..30 {
        let mut tx = store.begin().await.unwrap();
        let m = Message::new("down", json!({"n": n})).with_key(format!("k{}", n % 3));
        outbox.send(&mut tx, &m).await.unwrap();
        tx.commit().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        outbox.backlog().await.unwrap(),
        30,
        "nothing lost, nothing sent"
    );

    server.restart().await;
    assert_eq!(
        until_count(&store, "SELECT COUNT(*) FROM applied", 30).await,
        30
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_applied_once_in_key_order(&store, 30, "after the broker came back").await;
    assert_eq!(outbox.backlog().await.unwrap(), 0);
    stop.cancel();
    c.stop().await;
}
