//! Crash tests with real processes: a consumer is killed with SIGKILL mid-stream, a relay
//! is killed mid-batch, and — on PostgreSQL, when `KEEL_TEST_DATABASE_URL` is set — the
//! leader of two relay processes is killed while the service keeps committing; nothing is
//! lost, nothing is applied twice, per-key order holds.
//!
//! The worker processes are this test binary re-executed in a worker mode (selected by an
//! environment variable), so the tests need nothing but themselves.

use std::{collections::HashMap, process::Stdio, sync::Arc, time::Duration};

use keel_bus_sqlite::{Settings, SqliteBus};
use keel_messaging::{Bus, Delivery, HandlerError, Inbox, Message, Outbox, Subscription};
use keel_store::{Migration, Store, testing::TempDir};
use serde_json::json;

const APPLIED: &[Migration] = &[Migration::new(
    1,
    "applied",
    "CREATE TABLE applied (seq {auto_id}, msg_key TEXT NOT NULL, n {bigint} NOT NULL)",
)];

fn settings() -> Settings {
    Settings {
        poll: Duration::from_millis(50),
        member_timeout: Duration::from_millis(1000),
        partitions: 4,
        ..Settings::default()
    }
}

/// Worker mode: consume `work` with an inbox, recording every applied message.
async fn consumer_worker(bus_url: &str, store_url: &str) {
    let bus = SqliteBus::open_with(bus_url, settings()).await.unwrap();
    let store = Store::connect(store_url).await.unwrap();
    store.migrate("crash", APPLIED).await.unwrap();
    let inbox = Inbox::new(store, "crash-consumer").await.unwrap();
    let handler = inbox.handler(|mut tx, d: Delivery| async move {
        let n = d.message.payload["n"]
            .as_i64()
            .ok_or_else(|| HandlerError::reject("no n"))?;
        sqlx::query("INSERT INTO applied (msg_key, n) VALUES ($1, $2)")
            .bind(d.message.key.clone().unwrap_or_default())
            .bind(n)
            .execute(tx.conn())
            .await
            .map_err(HandlerError::retry)?;
        // Slow enough to be killed mid-stream.
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(tx)
    });
    let _c = bus
        .subscribe(Subscription::new("work", "workers"), handler)
        .await
        .unwrap();
    std::future::pending::<()>().await;
}

/// Worker mode: relay the outbox of `store_url` to the bus, slowly.
async fn relay_worker(bus_url: &str, store_url: &str) {
    let bus = SqliteBus::open_with(bus_url, settings()).await.unwrap();
    let store = Store::connect(store_url).await.unwrap();
    let outbox = Outbox::new(store).await.unwrap();
    let slow: Arc<dyn Bus> = Arc::new(Slow(bus));
    outbox
        .run_relay(slow, tokio_util::sync::CancellationToken::new())
        .await;
}

/// A bus that publishes one message at a time with a pause, so a kill lands mid-batch.
#[derive(Debug)]
struct Slow(SqliteBus);

impl Bus for Slow {
    fn publish<'a>(
        &'a self,
        m: &'a Message,
    ) -> futures::future::BoxFuture<'a, Result<(), keel_messaging::BusError>> {
        Box::pin(async move {
            // 10 ms: 300 messages take 3 s, so the kill lands mid-stream even when the test
            // process is slow to see the first 50 arrive.
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.0.publish(m).await
        })
    }
    fn subscribe(
        &self,
        s: Subscription,
        h: Arc<dyn keel_messaging::Handler>,
    ) -> futures::future::BoxFuture<'_, Result<keel_messaging::Consumer, keel_messaging::BusError>>
    {
        self.0.subscribe(s, h)
    }
    fn backend(&self) -> &'static str {
        "slow-sqlite"
    }
}

#[tokio::test]
async fn worker_entry() {
    let (Ok(mode), Ok(bus), Ok(store)) = (
        std::env::var("KEEL_CRASH_WORKER"),
        std::env::var("KEEL_CRASH_BUS"),
        std::env::var("KEEL_CRASH_STORE"),
    ) else {
        return; // not a worker: nothing to do in a normal test run
    };
    match mode.as_str() {
        "consumer" => consumer_worker(&bus, &store).await,
        "relay" => relay_worker(&bus, &store).await,
        _ => {}
    }
}

fn spawn_worker(mode: &str, bus: &str, store: &str) -> tokio::process::Child {
    tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["worker_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env("KEEL_CRASH_WORKER", mode)
        .env("KEEL_CRASH_BUS", bus)
        .env("KEEL_CRASH_STORE", store)
        .env("KEEL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(store.pool())
        .await
        .map(|r| r.0)
        .unwrap_or(0)
}

async fn wait_count(store: &Store, sql: &str, n: i64, secs: u64) -> i64 {
    let mut last = 0;
    for _ in 0..secs * 20 {
        last = count(store, sql).await;
        if last >= n {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

async fn assert_exactly_once_in_order(store: &Store, total: i64) {
    assert_eq!(
        count(store, "SELECT COUNT(*) FROM applied").await,
        total,
        "no effect applied twice"
    );
    assert_eq!(
        count(store, "SELECT COUNT(DISTINCT n) FROM applied").await,
        total,
        "nothing lost"
    );
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT msg_key, n FROM applied ORDER BY seq")
        .fetch_all(store.pool())
        .await
        .unwrap();
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    for (k, n) in rows {
        if let Some(prev) = last.insert(k.clone(), n) {
            assert!(n > prev, "key {k}: {n} applied after {prev}");
        }
    }
}

#[tokio::test]
async fn a_consumer_killed_mid_stream_loses_nothing_and_applies_nothing_twice() {
    let dir = TempDir::new("crash-consumer");
    let bus_url = dir.sqlite_url("bus.db");
    let store_url = dir.sqlite_url("service.db");
    let bus = SqliteBus::open_with(&bus_url, settings()).await.unwrap();
    let store = Store::connect(&store_url).await.unwrap();
    store.migrate("crash", APPLIED).await.unwrap();
    let total = 400;
    let batch: Vec<Message> = (0..total)
        .map(|n| Message::new("work", json!({ "n": n })).with_key(format!("k{}", n % 8)))
        .collect();
    let (published, err) = bus.publish_all(&batch).await;
    assert_eq!((published, err.is_none()), (total as usize, true));

    let mut a = spawn_worker("consumer", &bus_url, &store_url);
    let mut b = spawn_worker("consumer", &bus_url, &store_url);
    let got = wait_count(&store, "SELECT COUNT(*) FROM applied", 80, 30).await;
    assert!(got >= 80, "workers started consuming ({got})");
    a.start_kill().unwrap(); // SIGKILL
    let _ = a.wait().await;
    let done = wait_count(&store, "SELECT COUNT(DISTINCT n) FROM applied", total, 60).await;
    assert_eq!(
        done, total,
        "the survivor took the dead worker's partitions over"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_exactly_once_in_order(&store, total).await;
    b.start_kill().unwrap();
    let _ = b.wait().await;
}

#[tokio::test]
async fn a_relay_killed_mid_batch_loses_nothing_and_duplicates_are_dropped() {
    let dir = TempDir::new("crash-relay");
    let bus_url = dir.sqlite_url("bus.db");
    let producer_url = dir.sqlite_url("producer.db");
    let consumer_url = dir.sqlite_url("consumer.db");
    let producer = Store::connect(&producer_url).await.unwrap();
    let outbox = Outbox::new(producer.clone()).await.unwrap();
    let total = 300;
    for chunk in 0..3 {
        let mut tx = producer.begin().await.unwrap();
        for n in chunk * 100..(chunk + 1) * 100 {
            let m = Message::new("work", json!({ "n": n })).with_key(format!("k{}", n % 8));
            outbox.send(&mut tx, &m).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    // The consumer lives in this process (with its inbox); the relay is a separate process.
    let bus = SqliteBus::open_with(&bus_url, settings()).await.unwrap();
    let consumer = Store::connect(&consumer_url).await.unwrap();
    consumer.migrate("crash", APPLIED).await.unwrap();
    let inbox = Inbox::new(consumer.clone(), "crash-consumer")
        .await
        .unwrap();
    let handler = inbox.handler(|mut tx, d: Delivery| async move {
        let n = d.message.payload["n"]
            .as_i64()
            .ok_or_else(|| HandlerError::reject("no n"))?;
        sqlx::query("INSERT INTO applied (msg_key, n) VALUES ($1, $2)")
            .bind(d.message.key.clone().unwrap_or_default())
            .bind(n)
            .execute(tx.conn())
            .await
            .map_err(HandlerError::retry)?;
        Ok(tx)
    });
    let c = bus
        .subscribe(Subscription::new("work", "workers"), handler)
        .await
        .unwrap();

    let mut relay = spawn_worker("relay", &bus_url, &producer_url);
    let got = wait_count(&consumer, "SELECT COUNT(*) FROM applied", 50, 30).await;
    assert!(got >= 50, "relay started ({got})");
    relay.start_kill().unwrap(); // mid-batch: published rows not yet deleted
    let _ = relay.wait().await;
    assert!(
        outbox.backlog().await.unwrap() > 0,
        "the kill left rows behind"
    );
    let mut relay2 = spawn_worker("relay", &bus_url, &producer_url);
    let done = wait_count(
        &consumer,
        "SELECT COUNT(DISTINCT n) FROM applied",
        total,
        60,
    )
    .await;
    assert_eq!(done, total);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_exactly_once_in_order(&consumer, total).await;
    assert_eq!(outbox.backlog().await.unwrap(), 0);
    relay2.start_kill().unwrap();
    let _ = relay2.wait().await;
    c.stop().await;
}

/// Which of `relays` is the active relay of `outbox`: on PostgreSQL the session holding the
/// advisory lock names it (`application_name`); on SQLite the lease row names its process.
async fn relay_leader(
    store: &Store,
    outbox: &Outbox,
    relays: &HashMap<&'static str, tokio::process::Child>,
) -> Option<&'static str> {
    match outbox.relay_lock_key() {
        Some(key) => {
            let (app,) = sqlx::query_as::<_, (String,)>(
                "SELECT COALESCE(a.application_name, '') FROM pg_locks l \
                 JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted \
                   AND l.classid::bigint = $1 AND l.objid::bigint = $2",
            )
            .bind(key >> 32)
            .bind(key & 0xffff_ffff)
            .fetch_optional(store.pool())
            .await
            .unwrap()?;
            relays.keys().copied().find(|name| *name == app)
        }
        None => {
            let (holder,) = sqlx::query_as::<_, (String,)>(
                "SELECT holder FROM keel_outbox_relay WHERE lease_until > $1",
            )
            .bind(keel_store::now_ms())
            .fetch_optional(store.pool())
            .await
            .unwrap()?;
            let pid: u32 = holder.split(':').next()?.parse().ok()?;
            relays
                .iter()
                .find(|(_, child)| child.id() == Some(pid))
                .map(|(name, _)| *name)
        }
    }
}

#[tokio::test]
async fn two_relay_processes_on_sqlite_survive_killing_the_leader() {
    let dir = TempDir::new("crash-sqlite-relays");
    let url = dir.sqlite_url("service.db");
    let producer = Store::connect(&url).await.unwrap();
    two_relay_processes_survive_killing_the_leader(&dir, producer, |_| url.clone()).await;
}

#[tokio::test]
async fn two_relay_processes_on_postgres_survive_killing_the_leader() {
    let Some((producer, url)) =
        keel_store::testing::fresh_postgres("two_relay_processes_on_postgres")
            .await
            .unwrap()
    else {
        return;
    };
    let dir = TempDir::new("crash-pg-relays");
    // Each relay names its sessions, so the lock holder tells which process leads.
    two_relay_processes_survive_killing_the_leader(&dir, producer, |name| {
        format!("{url}&application_name={name}")
    })
    .await;
}

/// Two relay processes on one outbox while the service keeps committing; the leader is
/// killed with SIGKILL mid-stream. The standby takes over: nothing lost, per-key order
/// kept, and whatever the dead leader had published but not yet deleted (published again
/// by the survivor) is dropped by the consumer's inbox.
async fn two_relay_processes_survive_killing_the_leader(
    dir: &TempDir,
    producer: Store,
    relay_url: impl Fn(&str) -> String,
) {
    let bus_url = dir.sqlite_url("bus.db");
    let outbox = Outbox::new(producer.clone()).await.unwrap();
    // The consumer (this process) applies through its inbox, in the service's store.
    producer.migrate("crash", APPLIED).await.unwrap();
    let bus = SqliteBus::open_with(&bus_url, settings()).await.unwrap();
    let inbox = Inbox::new(producer.clone(), "crash-consumer")
        .await
        .unwrap();
    let c = inbox
        .subscribe(
            &bus,
            Subscription::new("work", "workers"),
            |mut tx, d: Delivery| async move {
                let n = d.message.payload["n"]
                    .as_i64()
                    .ok_or_else(|| HandlerError::reject("no n"))?;
                sqlx::query("INSERT INTO applied (msg_key, n) VALUES ($1, $2)")
                    .bind(d.message.key.clone().unwrap_or_default())
                    .bind(n)
                    .execute(tx.conn())
                    .await
                    .map_err(HandlerError::retry)?;
                Ok(tx)
            },
        )
        .await
        .unwrap();

    let mut relays = HashMap::new();
    for name in ["relay-a", "relay-b"] {
        relays.insert(name, spawn_worker("relay", &bus_url, &relay_url(name)));
    }
    let total = 600;
    let writer = {
        let (producer, outbox) = (producer.clone(), outbox.clone());
        tokio::spawn(async move {
            for chunk in 0..total / 20 {
                let mut tx = producer.begin().await.unwrap();
                for n in chunk * 20..(chunk + 1) * 20 {
                    let m = Message::new("work", json!({ "n": n })).with_key(format!("k{}", n % 8));
                    outbox.send(&mut tx, &m).await.unwrap();
                }
                tx.commit().await.unwrap();
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let got = wait_count(&producer, "SELECT COUNT(*) FROM applied", 100, 30).await;
    assert!(got >= 100, "relaying started ({got})");
    let leader = relay_leader(&producer, &outbox, &relays)
        .await
        .expect("one relay leads");
    let mut dead = relays.remove(leader).unwrap();
    dead.start_kill().unwrap(); // SIGKILL, mid-stream (and most likely mid-batch)
    let _ = dead.wait().await;
    writer.await.unwrap();

    let done = wait_count(
        &producer,
        "SELECT COUNT(DISTINCT n) FROM applied",
        total,
        60,
    )
    .await;
    assert_eq!(done, total, "the standby took over: nothing lost");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once_in_order(&producer, total).await;
    assert_eq!(outbox.backlog().await.unwrap(), 0);
    let survivor = *relays.keys().next().unwrap();
    assert_eq!(
        relay_leader(&producer, &outbox, &relays).await,
        Some(survivor)
    );
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT message_id) FROM bus_messages WHERE destination = 'work'",
    )
    .fetch_one(bus.store().pool())
    .await
    .unwrap();
    assert_eq!(distinct, total);
    eprintln!(
        "{:?}: killed {leader}: {} of {total} messages published twice, each applied once",
        producer.backend(),
        rows - distinct
    );
    for (_, mut r) in relays {
        r.start_kill().unwrap();
        let _ = r.wait().await;
    }
    c.stop().await;
}
