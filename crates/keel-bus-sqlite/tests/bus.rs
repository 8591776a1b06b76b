//! The embedded bus through its real interface, on real SQLite files.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use keel_bus_sqlite::{Settings, SqliteBus};
use keel_messaging::{Bus, Delivery, HandlerError, Message, Subscription, handler_fn, headers};
use keel_store::testing::TempDir;
use serde_json::json;

/// A short poll; the default-length member timeout, so a stalled machine does not make a
/// live member look dead (members here leave by stopping; crash.rs tests takeovers).
fn fast() -> Settings {
    Settings {
        poll: Duration::from_millis(50),
        member_timeout: Duration::from_secs(5),
        partitions: 4,
        ..Settings::default()
    }
}

type Log = Arc<Mutex<Vec<(String, i64)>>>;

fn recorder(log: Log) -> Arc<dyn keel_messaging::Handler> {
    handler_fn(move |d: Delivery| {
        let log = log.clone();
        async move {
            let n = d.message.payload["n"].as_i64().unwrap_or(-1);
            log.lock()
                .unwrap()
                .push((d.message.key.clone().unwrap_or_default(), n));
            Ok(())
        }
    })
}

async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not within 10 s: {what}");
}

fn msg(dest: &str, key: &str, n: i64) -> Message {
    Message::new(dest, json!({ "n": n })).with_key(key)
}

#[tokio::test]
async fn every_group_gets_every_message_in_per_key_order() {
    let dir = TempDir::new("bus-groups");
    let bus = SqliteBus::open_with(&dir.sqlite_url("bus.db"), fast())
        .await
        .unwrap();
    let a: Log = Arc::default();
    let b: Log = Arc::default();
    let ca = bus
        .subscribe(Subscription::new("orders", "kitchen"), recorder(a.clone()))
        .await
        .unwrap();
    let cb = bus
        .subscribe(
            Subscription::new("orders", "accounting"),
            recorder(b.clone()),
        )
        .await
        .unwrap();
    for n in 0..60 {
        bus.publish(&msg("orders", &format!("k{}", n % 5), n))
            .await
            .unwrap();
    }
    until("both groups got all 60", || {
        a.lock().unwrap().len() == 60 && b.lock().unwrap().len() == 60
    })
    .await;
    for log in [&a, &b] {
        let mut per_key: HashMap<String, Vec<i64>> = HashMap::new();
        for (k, n) in log.lock().unwrap().iter() {
            per_key.entry(k.clone()).or_default().push(*n);
        }
        for (k, ns) in per_key {
            let mut sorted = ns.clone();
            sorted.sort();
            assert_eq!(ns, sorted, "key {k} out of order");
        }
    }
    ca.stop().await;
    cb.stop().await;
}

#[tokio::test]
async fn members_of_a_group_compete_and_offsets_survive_restarts() {
    let dir = TempDir::new("bus-compete");
    let url = dir.sqlite_url("bus.db");
    let bus = SqliteBus::open_with(&url, fast()).await.unwrap();
    let log: Log = Arc::default();
    let c1 = bus
        .subscribe(Subscription::new("ev", "g"), recorder(log.clone()))
        .await
        .unwrap();
    let c2 = bus
        .subscribe(Subscription::new("ev", "g"), recorder(log.clone()))
        .await
        .unwrap();
    for n in 0..100 {
        bus.publish(&msg("ev", &format!("k{n}"), n)).await.unwrap();
    }
    until("100 delivered", || log.lock().unwrap().len() >= 100).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ns: Vec<i64> = log.lock().unwrap().iter().map(|(_, n)| *n).collect();
    ns.sort();
    ns.dedup();
    assert_eq!(ns.len(), 100);
    assert_eq!(
        log.lock().unwrap().len(),
        100,
        "each message handled once within the group"
    );
    c1.stop().await;
    c2.stop().await;

    // New messages while nobody listens; a new member (another bus handle: another
    // process's view of the file) continues from the committed offsets.
    for n in 100..110 {
        bus.publish(&msg("ev", "later", n)).await.unwrap();
    }
    let again = SqliteBus::open_with(&url, fast()).await.unwrap();
    let log2: Log = Arc::default();
    let c3 = again
        .subscribe(Subscription::new("ev", "g"), recorder(log2.clone()))
        .await
        .unwrap();
    until("the 10 new ones", || log2.lock().unwrap().len() >= 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Vec<i64> = log2.lock().unwrap().iter().map(|(_, n)| *n).collect();
    assert_eq!(got, (100..110).collect::<Vec<_>>());
    c3.stop().await;
}

#[tokio::test]
async fn failures_are_redelivered_with_backoff_then_dead_lettered() {
    let dir = TempDir::new("bus-dlq");
    let bus = SqliteBus::open_with(&dir.sqlite_url("bus.db"), fast())
        .await
        .unwrap();
    let attempts: Arc<Mutex<Vec<(i64, u32)>>> = Arc::default();
    let a = attempts.clone();
    let handler = handler_fn(move |d: Delivery| {
        let a = a.clone();
        async move {
            let n = d.message.payload["n"].as_i64().unwrap();
            a.lock().unwrap().push((n, d.attempt));
            match n {
                0 => Err(HandlerError::retry("database is down")),
                1 => Err(HandlerError::reject(
                    "payload does not match OrderCreated v1",
                )),
                _ => Ok(()),
            }
        }
    });
    let sub = Subscription::new("pay", "acct")
        .max_attempts(3)
        .backoff(Duration::from_millis(20), Duration::from_millis(80));
    let c = bus.subscribe(sub, handler).await.unwrap();
    let dead: Log = Arc::default();
    let dl = bus
        .subscribe(Subscription::new("pay.dlq", "ops"), recorder(dead.clone()))
        .await
        .unwrap();
    let dlq_headers: Arc<Mutex<Vec<Message>>> = Arc::default();
    let dh = dlq_headers.clone();
    let dl2 = bus
        .subscribe(
            Subscription::new("pay.dlq", "inspect"),
            handler_fn(move |d: Delivery| {
                let dh = dh.clone();
                async move {
                    dh.lock().unwrap().push(d.message);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    // Same key: 2 must wait until 0 is dead-lettered (order), 1 is rejected at once.
    for n in 0..3 {
        bus.publish(&msg("pay", "same", n)).await.unwrap();
    }
    until("both failures dead-lettered", || {
        dead.lock().unwrap().len() == 2
    })
    .await;
    until("2 delivered after them", || {
        attempts.lock().unwrap().iter().any(|(n, _)| *n == 2)
    })
    .await;
    let seen = attempts.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(0, 1), (0, 2), (0, 3), (1, 1), (2, 1)],
        "in order, 3 attempts, reject at once"
    );
    until("the second dead-letter group got both too", || {
        dlq_headers.lock().unwrap().len() == 2
    })
    .await;
    let dl_msgs = dlq_headers.lock().unwrap().clone();
    assert_eq!(dl_msgs[0].header(headers::ERROR), Some("database is down"));
    assert_eq!(dl_msgs[0].header(headers::ATTEMPTS), Some("3"));
    assert_eq!(
        dl_msgs[0].header(headers::ORIGINAL_DESTINATION),
        Some("pay")
    );
    assert!(
        dl_msgs[1]
            .header(headers::ERROR)
            .unwrap()
            .contains("rejected")
    );
    c.stop().await;
    dl.stop().await;
    dl2.stop().await;
}

#[tokio::test]
async fn commands_get_replies_matched_by_correlation_id() {
    use keel_messaging::{Replies, reply};
    let dir = TempDir::new("bus-reply");
    let bus = SqliteBus::open_with(&dir.sqlite_url("bus.db"), fast())
        .await
        .unwrap();
    let shared: Arc<dyn Bus> = Arc::new(bus.clone());
    // The command handler (another service) answers on the reply channel.
    let responder = shared.clone();
    let handler = bus
        .subscribe(
            Subscription::new("kitchen.commands", "kitchen"),
            handler_fn(move |d: Delivery| {
                let responder = responder.clone();
                async move {
                    let n = d.message.payload["n"].as_i64().unwrap_or(0);
                    if let Some(r) = reply(&d.message, None, json!({ "doubled": n * 2 })) {
                        responder.publish(&r).await.map_err(HandlerError::retry)?;
                    }
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    let replies = Replies::start(shared.clone(), "order").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (a, b) = tokio::join!(
        replies.request(
            Message::new("kitchen.commands", json!({"n": 21})).with_header(headers::TYPE, "Double"),
            Duration::from_secs(10)
        ),
        replies.request(
            Message::new("kitchen.commands", json!({"n": 5})),
            Duration::from_secs(10)
        ),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.payload["doubled"], 42);
    assert_eq!(a.message_type(), Some("DoubleReply"));
    assert_eq!(b.payload["doubled"], 10);
    handler.stop().await;
    // Nobody answers now: a clear timeout.
    let err = replies
        .request(
            Message::new("kitchen.commands", json!({"n": 1})),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no reply"), "{err}");
}

#[tokio::test]
async fn a_panicking_handler_counts_as_a_failed_attempt_and_is_dead_lettered() {
    let dir = TempDir::new("bus-panic");
    let bus = SqliteBus::open_with(&dir.sqlite_url("bus.db"), fast())
        .await
        .unwrap();
    let attempts: Arc<Mutex<Vec<(i64, u32)>>> = Arc::default();
    let a = attempts.clone();
    let handler = handler_fn(move |d: Delivery| {
        let a = a.clone();
        async move {
            let n = d.message.payload["n"].as_i64().unwrap();
            a.lock().unwrap().push((n, d.attempt));
            match (n, d.attempt) {
                (0, _) => panic!("handler bug on message 0"),
                (1, 1) => panic!("flaky on the first try"),
                _ => Ok(()),
            }
        }
    });
    let sub = Subscription::new("boom", "g")
        .max_attempts(3)
        .backoff(Duration::from_millis(20), Duration::from_millis(80));
    let c = bus.subscribe(sub, handler).await.unwrap();
    let dead: Arc<Mutex<Vec<Message>>> = Arc::default();
    let dh = dead.clone();
    let dl = bus
        .subscribe(
            Subscription::new("boom.dlq", "ops"),
            handler_fn(move |d: Delivery| {
                let dh = dh.clone();
                async move {
                    dh.lock().unwrap().push(d.message);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    let sent: Vec<Message> = (0..3).map(|n| msg("boom", "same", n)).collect();
    for m in &sent {
        bus.publish(m).await.unwrap();
    }
    until("the panicking message dead-lettered", || {
        dead.lock().unwrap().len() == 1
    })
    .await;
    until("the later messages of the partition delivered", || {
        attempts.lock().unwrap().iter().any(|(n, _)| *n == 2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        attempts.lock().unwrap().clone(),
        vec![(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (2, 1)],
        "a panic is a failed attempt: retried with backoff, then dead-lettered, in order"
    );
    let d = dead.lock().unwrap()[0].clone();
    assert_eq!(d.id, sent[0].id, "the dead letter is the original message");
    assert_eq!(d.payload, sent[0].payload);
    assert_eq!(d.header(headers::ATTEMPTS), Some("3"));
    let error = d.header(headers::ERROR).unwrap();
    assert!(
        error.contains("panicked") && error.contains("handler bug on message 0"),
        "{error}"
    );
    c.stop().await;
    dl.stop().await;
}

#[tokio::test]
async fn an_unreadable_row_is_dead_lettered_with_its_raw_contents() {
    let dir = TempDir::new("bus-raw");
    let bus = SqliteBus::open_with(&dir.sqlite_url("bus.db"), fast())
        .await
        .unwrap();
    let partition = i64::from(keel_messaging::message::partition_of(
        "k",
        fast().partitions,
    ));
    // Rows written by something other than Keel: a payload that is not JSON, and headers
    // that are not a JSON object of strings.
    for (id, hdrs, payload) in [
        ("raw-1", r#"{"type":"OrderCreated"}"#, "not json {"),
        ("raw-2", "nope", r#"{"n":1}"#),
    ] {
        bus.store()
            .write(
                sqlx::query(
                    "INSERT INTO bus_messages (destination, partition, message_id, msg_key, headers, payload, created_at) \
                     VALUES ('raw', $1, $2, 'k', $3, $4, $5)",
                )
                .bind(partition)
                .bind(id)
                .bind(hdrs)
                .bind(payload)
                .bind(keel_store::now_ms()),
            )
            .await
            .unwrap();
    }
    bus.publish(&msg("raw", "k", 2)).await.unwrap();
    let log: Log = Arc::default();
    let c = bus
        .subscribe(Subscription::new("raw", "g"), recorder(log.clone()))
        .await
        .unwrap();
    let dead: Arc<Mutex<Vec<Message>>> = Arc::default();
    let dh = dead.clone();
    let dl = bus
        .subscribe(
            Subscription::new("raw.dlq", "ops"),
            handler_fn(move |d: Delivery| {
                let dh = dh.clone();
                async move {
                    dh.lock().unwrap().push(d.message);
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    until("both unreadable rows dead-lettered", || {
        dead.lock().unwrap().len() == 2
    })
    .await;
    until("the readable one delivered", || {
        log.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(log.lock().unwrap()[0], ("k".to_owned(), 2));
    let dead = dead.lock().unwrap().clone();
    let (a, b) = (&dead[0], &dead[1]);
    assert_eq!(a.id, "raw-1");
    assert_eq!(a.key.as_deref(), Some("k"));
    assert_eq!(a.message_type(), Some("OrderCreated"), "headers kept");
    assert_eq!(
        a.payload,
        json!("not json {"),
        "the payload's stored text kept"
    );
    assert_eq!(a.header(headers::RAW_PAYLOAD), Some("true"));
    assert!(a.header(headers::ERROR).unwrap().contains("unreadable"));
    assert_eq!(a.header(headers::ORIGINAL_DESTINATION), Some("raw"));
    assert_eq!(b.id, "raw-2");
    assert_eq!(
        b.header(headers::RAW_HEADERS),
        Some("nope"),
        "the headers' stored text kept"
    );
    assert_eq!(b.payload, json!({"n": 1}));
    assert!(b.header(headers::ERROR).unwrap().contains("headers"));
    c.stop().await;
    dl.stop().await;
}

#[tokio::test]
async fn retention_deletes_by_age_and_keeps_the_newest_per_destination() {
    let dir = TempDir::new("bus-retention");
    let settings = Settings {
        retention: Duration::from_secs(3600),
        max_messages: 5,
        ..fast()
    };
    let bus = SqliteBus::open_with(&dir.sqlite_url("bus.db"), settings)
        .await
        .unwrap();
    let ids = |dest: &'static str| {
        let store = bus.store().clone();
        async move {
            sqlx::query_as::<_, (i64,)>(
                "SELECT seq FROM bus_messages WHERE destination = $1 ORDER BY seq",
            )
            .bind(dest)
            .fetch_all(store.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|(s,)| s)
            .collect::<Vec<i64>>()
        }
    };
    // "old": 3 messages, 2 of them older than the retention age. "big": 12 recent ones.
    // "small": 3 recent ones, under both limits.
    for n in 0..3 {
        bus.publish(&msg("old", "k", n)).await.unwrap();
    }
    let old = ids("old").await;
    bus.store()
        .write(
            sqlx::query("UPDATE bus_messages SET created_at = $1 WHERE seq <= $2")
                .bind(keel_store::now_ms() - 3_600_001)
                .bind(old[1]),
        )
        .await
        .unwrap();
    for n in 0..12 {
        bus.publish(&msg("big", &format!("k{n}"), n)).await.unwrap();
    }
    for n in 0..3 {
        bus.publish(&msg("small", "k", n)).await.unwrap();
    }
    let big = ids("big").await;
    let small = ids("small").await;

    assert_eq!(bus.enforce_retention().await.unwrap(), 2 + 7);
    assert_eq!(ids("old").await, old[2..], "older than the age limit: gone");
    assert_eq!(ids("big").await, big[7..], "only the newest 5 kept");
    assert_eq!(ids("small").await, small, "under both limits: untouched");
    assert_eq!(bus.enforce_retention().await.unwrap(), 0, "idempotent");

    // A consumer whose group never read the deleted messages starts at the oldest retained.
    let log: Log = Arc::default();
    let c = bus
        .subscribe(Subscription::new("big", "late"), recorder(log.clone()))
        .await
        .unwrap();
    until("the 5 retained", || log.lock().unwrap().len() == 5).await;
    let mut got: Vec<i64> = log.lock().unwrap().iter().map(|(_, n)| *n).collect();
    got.sort();
    assert_eq!(got, (7..12).collect::<Vec<_>>());
    c.stop().await;
}

/// A bus file records its partition count: a process configured with another count is
/// refused with both counts named, and the file still opens with its own.
#[tokio::test]
async fn a_bus_file_refuses_a_process_with_another_partition_count() {
    let dir = TempDir::new("bus-partition-count");
    let url = dir.sqlite_url("bus.db");
    let bus = SqliteBus::open_with(&url, fast()).await.unwrap();
    drop(bus);
    let err = SqliteBus::open(&url).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, keel_messaging::BusError::Invalid(_)),
        "{text}"
    );
    assert!(
        text.contains(&format!("made with {} partitions", fast().partitions))
            && text.contains("configured with 16"),
        "{text}"
    );
    SqliteBus::open_with(&url, fast()).await.unwrap();
}
