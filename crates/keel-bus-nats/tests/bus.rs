//! The delivery contract on a real NATS server (`KEEL_TEST_NATS_URL`; each test skips with a
//! notice when it is unset). Every test works under a prefix of its own and deletes its streams
//! afterwards.

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Cleanup, bus, bus_with, nats_url, settings, unique_prefix, until};
use futures::StreamExt;
use keel_bus_nats::{NatsBus, Settings};
use keel_messaging::{
    Bus, BusError, Delivery, Handler, HandlerError, Message, Subscription, handler_fn, headers,
};
use serde_json::json;

type Log = Arc<Mutex<Vec<(String, i64)>>>;

fn recorder(log: Log) -> Arc<dyn Handler> {
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

fn collector(into: Arc<Mutex<Vec<Delivery>>>) -> Arc<dyn Handler> {
    handler_fn(move |d: Delivery| {
        let into = into.clone();
        async move {
            into.lock().unwrap().push(d);
            Ok(())
        }
    })
}

fn msg(dest: &str, key: &str, n: i64) -> Message {
    Message::new(dest, json!({ "n": n })).with_key(key)
}

fn assert_per_key_order(log: &[(String, i64)], what: &str) {
    let mut per_key: HashMap<&str, Vec<i64>> = HashMap::new();
    for (k, n) in log {
        per_key.entry(k).or_default().push(*n);
    }
    for (k, ns) in per_key {
        let mut sorted = ns.clone();
        sorted.sort();
        assert_eq!(ns, sorted, "{what}: key {k} out of order");
    }
}

#[tokio::test]
async fn a_published_message_arrives_whole() {
    let Some(url) = nats_url("a_published_message_arrives_whole") else {
        return;
    };
    let (bus, _cleanup) = bus(&url).await;
    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let c = bus
        .subscribe(
            Subscription::new("order.events", "kitchen"),
            collector(got.clone()),
        )
        .await
        .unwrap();
    let sent = Message::typed(
        "order.events",
        "OrderCreated",
        1,
        &json!({ "orderId": "o-1", "total": "12.50", "lines": [1, 2, { "x": null }] }),
    )
    .unwrap()
    .with_key("o-1")
    .with_header(headers::CORRELATION_ID, "corr-1")
    .with_header(
        headers::TRACEPARENT,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    .with_header(headers::REPLY_TO, "order.replies")
    .with_header("x-note", "two\nlines: ünïcödé ✓");
    bus.publish(&sent).await.unwrap();
    until("delivered", || got.lock().unwrap().len() == 1).await;
    let d = got.lock().unwrap()[0].clone();
    assert_eq!(d.message, sent, "id, destination, key, headers and payload");
    assert_eq!(d.attempt, 1);
    assert_eq!(d.partition, sent.partition(4));

    // On the wire: the partition's subject, with the id as the de-duplication header.
    let stream = bus
        .jetstream()
        .get_stream(bus.stream_name("order.events", sent.partition(4)))
        .await
        .unwrap();
    let raw = stream
        .get_last_raw_message_by_subject(&bus.subject("order.events", sent.partition(4)))
        .await
        .unwrap();
    assert_eq!(
        raw.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(sent.id.as_str())
    );
    c.stop().await;
}

#[tokio::test]
async fn every_group_gets_every_message_in_per_key_order() {
    let Some(url) = nats_url("every_group_gets_every_message_in_per_key_order") else {
        return;
    };
    let (bus, _cleanup) = bus(&url).await;
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
    let batch: Vec<Message> = (0..60)
        .map(|n| msg("orders", &format!("k{}", n % 5), n))
        .collect();
    let (n, err) = bus.publish_all(&batch[..30]).await;
    assert_eq!((n, err.map(|e| e.to_string())), (30, None));
    for m in &batch[30..] {
        bus.publish(m).await.unwrap();
    }
    until("both groups got all 60", || {
        a.lock().unwrap().len() >= 60 && b.lock().unwrap().len() >= 60
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (name, log) in [("kitchen", &a), ("accounting", &b)] {
        let log = log.lock().unwrap().clone();
        assert_eq!(log.len(), 60, "{name}: each message once");
        assert_per_key_order(&log, name);
    }
    ca.stop().await;
    cb.stop().await;
}

#[tokio::test]
async fn members_of_a_group_compete_and_positions_survive_restarts() {
    let Some(url) = nats_url("members_of_a_group_compete_and_positions_survive_restarts") else {
        return;
    };
    let s = settings();
    let (bus, _cleanup) = bus_with(&url, s.clone()).await;
    // Another process's connection.
    let other = NatsBus::connect_with(&url, s.clone()).await.unwrap();
    let by: Arc<Mutex<Vec<(&'static str, i64)>>> = Arc::default();
    let member = |name: &'static str| {
        let by = by.clone();
        handler_fn(move |d: Delivery| {
            let by = by.clone();
            async move {
                // A little work, so both members have something in hand at once.
                tokio::time::sleep(Duration::from_millis(2)).await;
                by.lock()
                    .unwrap()
                    .push((name, d.message.payload["n"].as_i64().unwrap()));
                Ok(())
            }
        })
    };
    let c1 = bus
        .subscribe(Subscription::new("ev", "g"), member("one"))
        .await
        .unwrap();
    let c2 = other
        .subscribe(Subscription::new("ev", "g"), member("two"))
        .await
        .unwrap();
    // The partitions are split once each member has seen the other's heartbeat: publish in
    // rounds until both have taken work.
    let mut sent = 0;
    let t = Instant::now();
    while sent < 2000 {
        let batch: Vec<Message> = (sent..sent + 50)
            .map(|n| msg("ev", &format!("k{n}"), n))
            .collect();
        assert!(bus.publish_all(&batch).await.1.is_none());
        sent += 50;
        until("the round handled", || {
            by.lock().unwrap().len() >= sent as usize
        })
        .await;
        let both = {
            let got = by.lock().unwrap();
            got.iter().any(|(m, _)| *m == "one") && got.iter().any(|(m, _)| *m == "two")
        };
        if both && sent >= 200 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = by.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        sent as usize,
        "each message handled once within the group"
    );
    let distinct: HashSet<i64> = got.iter().map(|(_, n)| *n).collect();
    assert_eq!(distinct.len(), sent as usize);
    let ones = got.iter().filter(|(m, _)| *m == "one").count();
    assert!(
        ones > 0 && ones < got.len(),
        "both members took work within {:?}: {ones} of {sent} went to the first",
        t.elapsed()
    );
    c1.stop().await;
    c2.stop().await;

    // New messages while nobody listens; a new member continues from the group's position.
    for n in 5000..5010 {
        bus.publish(&msg("ev", "later", n)).await.unwrap();
    }
    let third = NatsBus::connect_with(&url, s).await.unwrap();
    let log: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let c3 = third
        .subscribe(Subscription::new("ev", "g"), collector(log.clone()))
        .await
        .unwrap();
    until("the 10 new ones", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|d| d.message.payload["n"] == 5009)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Vec<(i64, u32)> = log
        .lock()
        .unwrap()
        .iter()
        .map(|d| (d.message.payload["n"].as_i64().unwrap(), d.attempt))
        .collect();
    // At least once: a message a stopped member's pull request took comes again after
    // `ack_wait`, and the server may repeat one; never one of the first rounds, none skipped,
    // none out of order.
    let mut ns: Vec<i64> = got.iter().map(|(n, _)| *n).collect();
    ns.dedup();
    assert_eq!(
        ns,
        (5000..5010).collect::<Vec<_>>(),
        "(n, attempt): {got:?}"
    );
    c3.stop().await;
}

/// Every attempt at message `n` of a key checks that all earlier messages of the key already
/// took effect; failures are injected at random, members join and leave.
#[tokio::test]
async fn per_key_order_holds_across_random_failures_and_competing_members() {
    let Some(url) = nats_url("per_key_order_holds_across_random_failures_and_competing_members")
    else {
        return;
    };
    let s = settings();
    let (bus, _cleanup) = bus_with(&url, s.clone()).await;
    #[derive(Default)]
    struct State {
        applied: Vec<(i64, i64)>,
        done: HashSet<i64>,
        violations: Vec<String>,
        attempts: usize,
        failures: usize,
    }
    let state: Arc<Mutex<State>> = Arc::default();
    const KEYS: i64 = 6;
    const PER_KEY: i64 = 20;
    let handler = || {
        let state = state.clone();
        handler_fn(move |d: Delivery| {
            let state = state.clone();
            async move {
                let n = d.message.payload["n"].as_i64().unwrap();
                let k = n % KEYS;
                {
                    let mut s = state.lock().unwrap();
                    s.attempts += 1;
                    for earlier in (k..n).step_by(KEYS as usize) {
                        if !s.done.contains(&earlier) {
                            s.violations
                                .push(format!("{n} attempted before {earlier} took effect"));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                let mut s = state.lock().unwrap();
                if rand::random::<f64>() < 0.3 {
                    s.failures += 1;
                    return Err(HandlerError::retry("injected failure"));
                }
                if !s.done.insert(n) {
                    s.violations.push(format!("{n} took effect twice"));
                }
                s.applied.push((k, n));
                Ok(())
            }
        })
    };
    let sub = || {
        Subscription::new("prop", "g")
            .max_attempts(60)
            .backoff(Duration::from_millis(5), Duration::from_millis(20))
    };
    let second = NatsBus::connect_with(&url, s.clone()).await.unwrap();
    let a = bus.subscribe(sub(), handler()).await.unwrap();
    let b = second.subscribe(sub(), handler()).await.unwrap();
    let batch: Vec<Message> = (0..KEYS * PER_KEY)
        .map(|n| msg("prop", &format!("key-{}", n % KEYS), n))
        .collect();
    let half = batch.len() / 2;
    assert!(bus.publish_all(&batch[..half]).await.1.is_none());
    // Churn: a third member joins, the first leaves mid-stream.
    let third = NatsBus::connect_with(&url, s).await.unwrap();
    let c = third.subscribe(sub(), handler()).await.unwrap();
    assert!(bus.publish_all(&batch[half..]).await.1.is_none());
    tokio::time::sleep(Duration::from_millis(150)).await;
    a.stop().await;
    let total = batch.len();
    until("every message took effect", || {
        state.lock().unwrap().done.len() == total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.stop().await;
    c.stop().await;
    let s = state.lock().unwrap();
    assert!(s.violations.is_empty(), "{:?}", s.violations);
    assert!(s.failures > 10, "failures were injected: {}", s.failures);
    let mut last: HashMap<i64, i64> = HashMap::new();
    for (k, n) in &s.applied {
        if let Some(prev) = last.insert(*k, *n) {
            assert!(n > &prev, "key {k}: {n} took effect after {prev}");
        }
    }
    assert_eq!(s.applied.len(), total);
}

#[tokio::test]
async fn failures_are_retried_with_backoff_then_dead_lettered_with_the_error() {
    let Some(url) = nats_url("failures_are_retried_with_backoff_then_dead_lettered_with_the_error")
    else {
        return;
    };
    let (bus, _cleanup) = bus(&url).await;
    let attempts: Arc<Mutex<Vec<(i64, u32, Instant)>>> = Arc::default();
    let a = attempts.clone();
    let handler = handler_fn(move |d: Delivery| {
        let a = a.clone();
        async move {
            let n = d.message.payload["n"].as_i64().unwrap();
            a.lock().unwrap().push((n, d.attempt, Instant::now()));
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
        .backoff(Duration::from_millis(100), Duration::from_millis(400));
    let c = bus.subscribe(sub, handler).await.unwrap();
    let dead: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let dl = bus
        .subscribe(Subscription::new("pay.dlq", "ops"), collector(dead.clone()))
        .await
        .unwrap();
    let dead2: Log = Arc::default();
    let dl2 = bus
        .subscribe(
            Subscription::new("pay.dlq", "inspect"),
            recorder(dead2.clone()),
        )
        .await
        .unwrap();
    // Same key: 2 must wait until 0 is dead-lettered (order), 1 is rejected at once.
    let sent: Vec<Message> = (0..3).map(|n| msg("pay", "same", n)).collect();
    for m in &sent {
        bus.publish(m).await.unwrap();
    }
    until("both failures dead-lettered", || {
        dead.lock().unwrap().len() == 2
    })
    .await;
    until("2 handled after them", || {
        attempts.lock().unwrap().iter().any(|(n, _, _)| *n == 2)
    })
    .await;
    let seen = attempts.lock().unwrap().clone();
    let order: Vec<(i64, u32)> = seen.iter().map(|(n, a, _)| (*n, *a)).collect();
    assert_eq!(
        order,
        vec![(0, 1), (0, 2), (0, 3), (1, 1), (2, 1)],
        "in order, 3 attempts, reject at once"
    );
    let gap1 = seen[1].2 - seen[0].2;
    let gap2 = seen[2].2 - seen[1].2;
    assert!(gap1 >= Duration::from_millis(90), "first backoff {gap1:?}");
    assert!(
        gap2 >= Duration::from_millis(190),
        "doubled backoff {gap2:?}"
    );

    let dl_msgs: Vec<Message> = dead
        .lock()
        .unwrap()
        .iter()
        .map(|d| d.message.clone())
        .collect();
    assert_eq!(dl_msgs[0].id, sent[0].id, "the copy keeps the id");
    assert_eq!(dl_msgs[0].key, sent[0].key);
    assert_eq!(dl_msgs[0].payload, sent[0].payload);
    assert_eq!(dl_msgs[0].destination, "pay.dlq");
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
            .contains("rejected"),
        "{:?}",
        dl_msgs[1].headers
    );
    assert_eq!(dl_msgs[1].header(headers::ATTEMPTS), Some("1"));
    until("the second dead-letter group got both too", || {
        dead2.lock().unwrap().len() == 2
    })
    .await;
    c.stop().await;
    dl.stop().await;
    dl2.stop().await;
}

/// Two groups failing the same message each leave their own dead letter (the copies share the
/// message id, which must not make the server drop the second as a duplicate).
#[tokio::test]
async fn each_group_leaves_its_own_dead_letter() {
    let Some(url) = nats_url("each_group_leaves_its_own_dead_letter") else {
        return;
    };
    let (bus, _cleanup) = bus(&url).await;
    let reject = || handler_fn(|_d: Delivery| async { Err(HandlerError::reject("no")) });
    let a = bus
        .subscribe(Subscription::new("shared", "a"), reject())
        .await
        .unwrap();
    let b = bus
        .subscribe(Subscription::new("shared", "b"), reject())
        .await
        .unwrap();
    let dead: Log = Arc::default();
    let dl = bus
        .subscribe(
            Subscription::new("shared.dlq", "ops"),
            recorder(dead.clone()),
        )
        .await
        .unwrap();
    bus.publish(&msg("shared", "k", 7)).await.unwrap();
    until("two dead letters", || dead.lock().unwrap().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dead.lock().unwrap().len(), 2);
    for c in [a, b, dl] {
        c.stop().await;
    }
}

#[tokio::test]
async fn a_body_that_is_not_an_envelope_is_dead_lettered_without_blocking() {
    let Some(url) = nats_url("a_body_that_is_not_an_envelope_is_dead_lettered_without_blocking")
    else {
        return;
    };
    let (bus, _cleanup) = bus(&url).await;
    let log: Log = Arc::default();
    let c = bus
        .subscribe(Subscription::new("raw", "g"), recorder(log.clone()))
        .await
        .unwrap();
    let dead: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let dl = bus
        .subscribe(Subscription::new("raw.dlq", "ops"), collector(dead.clone()))
        .await
        .unwrap();
    // Two foreign bodies (not JSON; JSON but no envelope) on the partition of key "same", then
    // a real message with that key behind them.
    let good = msg("raw", "same", 1);
    let subject = bus.subject("raw", good.partition(4));
    let js = bus.jetstream();
    js.publish(subject.clone(), b"\xff\xfe not json"[..].into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", "foreign-1");
    js.publish_with_headers(subject, h, br#"{"orderId": 42}"#[..].into())
        .await
        .unwrap()
        .await
        .unwrap();
    bus.publish(&good).await.unwrap();
    until("the real message got through", || {
        log.lock().unwrap().len() == 1
    })
    .await;
    until("both foreign bodies dead-lettered", || {
        dead.lock().unwrap().len() == 2
    })
    .await;
    let d = dead.lock().unwrap().clone();
    for x in &d {
        let err = x.message.header(headers::ERROR).unwrap_or_default();
        assert!(err.contains("unreadable"), "{err}");
        assert_eq!(x.message.header(headers::ORIGINAL_DESTINATION), Some("raw"));
    }
    // The dead-letter copies have no key, so they may sit in different partitions.
    let text = d
        .iter()
        .find(|x| x.message.payload.is_string())
        .expect("the text body");
    assert_eq!(text.message.payload, json!("\u{fffd}\u{fffd} not json"));
    assert_eq!(text.message.header(headers::RAW_PAYLOAD), Some("true"));
    let foreign = d
        .iter()
        .find(|x| x.message.payload.is_object())
        .expect("the JSON body");
    assert_eq!(foreign.message.payload, json!({ "orderId": 42 }));
    assert_eq!(foreign.message.id, "foreign-1");
    assert_eq!(foreign.message.header(headers::RAW_PAYLOAD), None);
    c.stop().await;
    dl.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_counts_as_a_failed_attempt_and_is_dead_lettered() {
    let Some(url) = nats_url("a_panicking_handler_counts_as_a_failed_attempt_and_is_dead_lettered")
    else {
        return;
    };
    let (bus, _cleanup) = bus(&url).await;
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
    let dead: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let dl = bus
        .subscribe(
            Subscription::new("boom.dlq", "ops"),
            collector(dead.clone()),
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
    let d = dead.lock().unwrap()[0].message.clone();
    assert_eq!(d.id, sent[0].id);
    assert_eq!(d.header(headers::ATTEMPTS), Some("3"));
    let error = d.header(headers::ERROR).unwrap();
    assert!(
        error.contains("panicked") && error.contains("handler bug on message 0"),
        "{error}"
    );
    c.stop().await;
    dl.stop().await;
}

tokio::task_local! {
    static TRACE: keel_messaging::trace::TraceHeaders;
}

/// Publishing from a traced task adds its trace context; a message with its own keeps it.
#[tokio::test]
async fn publishing_adds_the_current_trace_context() {
    let Some(url) = nats_url("publishing_adds_the_current_trace_context") else {
        return;
    };
    // Only tasks inside `TRACE.scope` have a context, so other tests are not affected.
    keel_messaging::trace::set_source(|| TRACE.try_with(Clone::clone).ok());
    let (bus, _cleanup) = bus(&url).await;
    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let c = bus
        .subscribe(Subscription::new("traced", "g"), collector(got.clone()))
        .await
        .unwrap();
    let cx = keel_messaging::trace::TraceHeaders {
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        tracestate: Some("keel=1".into()),
    };
    let plain = msg("traced", "k", 1);
    let own = msg("traced", "k", 2).with_header(
        headers::TRACEPARENT,
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    TRACE
        .scope(cx.clone(), async {
            bus.publish(&plain).await.unwrap();
            bus.publish(&own).await.unwrap();
        })
        .await;
    until("both delivered", || got.lock().unwrap().len() == 2).await;
    let got = got.lock().unwrap().clone();
    assert_eq!(
        got[0].message.header(headers::TRACEPARENT),
        Some(cx.traceparent.as_str())
    );
    assert_eq!(got[0].message.header(headers::TRACESTATE), Some("keel=1"));
    assert_eq!(
        got[1].message.header(headers::TRACEPARENT),
        own.header(headers::TRACEPARENT)
    );
    assert_eq!(got[1].message.header(headers::TRACESTATE), None);
    c.stop().await;
}

#[tokio::test]
async fn the_same_id_published_twice_is_stored_and_delivered_once() {
    let Some(url) = nats_url("the_same_id_published_twice_is_stored_and_delivered_once") else {
        return;
    };
    let (bus, _cleanup) = bus(&url).await;
    let log: Log = Arc::default();
    let c = bus
        .subscribe(Subscription::new("dedup", "g"), recorder(log.clone()))
        .await
        .unwrap();
    let m1 = msg("dedup", "k", 1);
    let m2 = msg("dedup", "k", 2);
    bus.publish(&m1).await.unwrap();
    bus.publish(&m1).await.unwrap();
    // A relay re-sending a batch after a crash.
    let (n, err) = bus.publish_all(&[m1.clone(), m2.clone()]).await;
    assert_eq!((n, err.is_none()), (2, true));
    until("both delivered", || log.lock().unwrap().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        *log.lock().unwrap(),
        vec![("k".to_owned(), 1), ("k".to_owned(), 2)]
    );
    let mut stream = bus
        .jetstream()
        .get_stream(bus.stream_name("dedup", m1.partition(4)))
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
    c.stop().await;
}

#[tokio::test]
async fn stop_lets_the_message_in_hand_finish_and_hands_the_rest_over() {
    let Some(url) = nats_url("stop_lets_the_message_in_hand_finish_and_hands_the_rest_over") else {
        return;
    };
    // A long ack wait: a message lost by the stopping member would stall far beyond the test.
    let s = Settings {
        ack_wait: Duration::from_secs(60),
        ..settings()
    };
    let (bus, _cleanup) = bus_with(&url, s).await;
    let started: Log = Arc::default();
    let finished: Log = Arc::default();
    let (st, fi) = (started.clone(), finished.clone());
    let slow = handler_fn(move |d: Delivery| {
        let (st, fi) = (st.clone(), fi.clone());
        async move {
            let n = d.message.payload["n"].as_i64().unwrap();
            st.lock().unwrap().push(("first".into(), n));
            tokio::time::sleep(Duration::from_millis(800)).await;
            fi.lock().unwrap().push(("first".into(), n));
            Ok(())
        }
    });
    let first = bus
        .subscribe(Subscription::new("work", "g"), slow)
        .await
        .unwrap();
    for n in 0..3 {
        bus.publish(&msg("work", "same", n)).await.unwrap();
    }
    until("0 in hand", || !started.lock().unwrap().is_empty()).await;
    first.stop().await;
    assert_eq!(
        *finished.lock().unwrap(),
        vec![("first".to_owned(), 0)],
        "stop returned after the message in hand finished"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(started.lock().unwrap().len(), 1, "nothing new started");

    let next: Log = Arc::default();
    let second = bus
        .subscribe(Subscription::new("work", "g"), recorder(next.clone()))
        .await
        .unwrap();
    until("the rest, promptly", || next.lock().unwrap().len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ns: Vec<i64> = next.lock().unwrap().iter().map(|(_, n)| *n).collect();
    assert_eq!(ns, vec![1, 2], "0 was acknowledged, the rest in order");
    second.stop().await;
}

#[tokio::test]
async fn stop_hands_back_a_message_waiting_for_its_retry() {
    let Some(url) = nats_url("stop_hands_back_a_message_waiting_for_its_retry") else {
        return;
    };
    let s = Settings {
        ack_wait: Duration::from_secs(60),
        ..settings()
    };
    let (bus, _cleanup) = bus_with(&url, s).await;
    // When the first attempt failed: the retry is due 5 s after it.
    let failed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let failing = handler_fn({
        let failed_at = failed_at.clone();
        move |_d: Delivery| {
            failed_at.lock().unwrap().get_or_insert_with(Instant::now);
            async { Err(HandlerError::retry("not yet")) }
        }
    });
    let backoff = Duration::from_secs(5);
    let sub = || {
        Subscription::new("later", "g")
            .max_attempts(10)
            .backoff(backoff, Duration::from_secs(10))
    };
    let first = bus.subscribe(sub(), failing).await.unwrap();
    bus.publish(&msg("later", "k", 0)).await.unwrap();
    until("the first attempt", || failed_at.lock().unwrap().is_some()).await;
    let t = Instant::now();
    first.stop().await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stop does not sit out the backoff: {:?}",
        t.elapsed()
    );
    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let second = bus.subscribe(sub(), collector(got.clone())).await.unwrap();
    until("handed over", || got.lock().unwrap().len() == 1).await;
    let waited = failed_at.lock().unwrap().expect("recorded above").elapsed();
    assert!(
        waited >= backoff - Duration::from_millis(100),
        "the rest of the backoff was kept: {waited:?}"
    );
    // The attempt count goes on: 2, or 3 when the server put the message back into the pull
    // request the stopped member left open, whose drain handed it back once more (every
    // delivery counts, as for any message handed back).
    let attempt = got.lock().unwrap()[0].attempt;
    assert!(
        (2..=3).contains(&attempt),
        "the attempt count goes on: {attempt}"
    );
    second.stop().await;
}

/// A member that took a message and died (never acknowledged): after `ack_wait` the group
/// gets it again, as attempt 2.
#[tokio::test]
async fn a_message_held_by_a_dead_member_is_redelivered_after_ack_wait() {
    let Some(url) = nats_url("a_message_held_by_a_dead_member_is_redelivered_after_ack_wait")
    else {
        return;
    };
    let s = Settings {
        ack_wait: Duration::from_secs(1),
        ..settings()
    };
    let (bus, _cleanup) = bus_with(&url, s).await;
    // Creates the group's consumers, then leaves.
    let c = bus
        .subscribe(Subscription::new("crash", "g"), recorder(Log::default()))
        .await
        .unwrap();
    c.stop().await;
    let m = msg("crash", "k", 1);
    bus.publish(&m).await.unwrap();
    // The "dead member": takes the message from the group's consumer and never answers.
    let stream = bus
        .jetstream()
        .get_stream(bus.stream_name("crash", m.partition(4)))
        .await
        .unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(&bus.consumer_name("g")).await.unwrap();
    // Before the fetch: the server's ack_wait starts later, when it delivers.
    let taken_at = Instant::now();
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let taken = batch.next().await.unwrap().unwrap();
    assert_eq!(taken.info().unwrap().delivered, 1);
    drop(batch);

    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let c = bus
        .subscribe(Subscription::new("crash", "g"), collector(got.clone()))
        .await
        .unwrap();
    until("redelivered", || got.lock().unwrap().len() == 1).await;
    assert!(taken_at.elapsed() >= Duration::from_millis(950));
    let d = got.lock().unwrap()[0].clone();
    assert_eq!((d.message.id, d.attempt), (m.id, 2));
    c.stop().await;
}

/// A member that held a partition's lease and died with messages in hand: the group waits
/// until its heartbeat is stale, takes the partition over, and handles the dead member's
/// messages (back after `ack_wait`) before the later ones — order holds across the crash.
#[tokio::test]
async fn a_dead_members_partition_is_taken_over_in_order() {
    let Some(url) = nats_url("a_dead_members_partition_is_taken_over_in_order") else {
        return;
    };
    let s = Settings {
        ack_wait: Duration::from_secs(2),
        member_timeout: Duration::from_secs(1),
        ..settings()
    };
    let (bus, _cleanup) = bus_with(&url, s.clone()).await;
    // Creates the streams, the consumers and the bucket, then leaves.
    let c = bus
        .subscribe(Subscription::new("crash", "g"), recorder(Log::default()))
        .await
        .unwrap();
    c.stop().await;
    let batch: Vec<Message> = (0..5).map(|n| msg("crash", "k", n)).collect();
    assert!(bus.publish_all(&batch).await.1.is_none());
    let partition = batch[0].partition(s.partitions);

    // The "dead member": heartbeats once, holds the lease, takes two messages, never answers.
    let kv = bus
        .jetstream()
        .get_key_value(bus.groups_bucket())
        .await
        .unwrap();
    let keys = bus.group_keys("crash", "g");
    kv.put(format!("{keys}m.0dead"), "".into()).await.unwrap();
    kv.put(format!("{keys}p.{partition}"), "0dead".into())
        .await
        .unwrap();
    let stream = bus
        .jetstream()
        .get_stream(bus.stream_name("crash", partition))
        .await
        .unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer(&bus.consumer_name("g")).await.unwrap();
    // Before the fetch: the server's ack_wait starts later, when it delivers.
    let died = Instant::now();
    let mut taken = consumer.fetch().max_messages(2).messages().await.unwrap();
    for _ in 0..2 {
        taken.next().await.unwrap().unwrap();
    }
    drop(taken);

    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let c = bus
        .subscribe(Subscription::new("crash", "g"), collector(got.clone()))
        .await
        .unwrap();
    until("all five", || got.lock().unwrap().len() >= 5).await;
    let waited = died.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Vec<(i64, u32)> = got
        .lock()
        .unwrap()
        .iter()
        .map(|d| (d.message.payload["n"].as_i64().unwrap(), d.attempt))
        .collect();
    assert_eq!(
        got.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4],
        "(n, attempt): {got:?}"
    );
    assert_eq!(
        got[0].1, 2,
        "the dead member's delivery counts as an attempt"
    );
    assert!(
        waited >= s.ack_wait,
        "the dead member's messages came back after ack_wait first: {waited:?}"
    );
    c.stop().await;
    // The lease is given back on leaving.
    let lease = kv
        .get(format!("{keys}p.{partition}"))
        .await
        .unwrap()
        .unwrap();
    assert!(lease.is_empty(), "{lease:?}");
}

/// Two members split the partitions: once balanced, each partition's messages go to exactly
/// one member.
#[tokio::test]
async fn each_partition_has_one_member_at_a_time() {
    let Some(url) = nats_url("each_partition_has_one_member_at_a_time") else {
        return;
    };
    let s = settings();
    let (bus, _cleanup) = bus_with(&url, s.clone()).await;
    let other = NatsBus::connect_with(&url, s.clone()).await.unwrap();
    let by: Arc<Mutex<Vec<(&'static str, u32)>>> = Arc::default();
    let member = |name: &'static str| {
        let by = by.clone();
        handler_fn(move |d: Delivery| {
            let by = by.clone();
            async move {
                by.lock().unwrap().push((name, d.partition));
                Ok(())
            }
        })
    };
    let c1 = bus
        .subscribe(Subscription::new("split", "g"), member("one"))
        .await
        .unwrap();
    let c2 = other
        .subscribe(Subscription::new("split", "g"), member("two"))
        .await
        .unwrap();
    let kv = bus
        .jetstream()
        .get_key_value(bus.groups_bucket())
        .await
        .unwrap();
    let keys = bus.group_keys("split", "g");
    // Balanced: the four leases name two different members.
    let t = Instant::now();
    loop {
        let mut owners = Vec::new();
        for p in 0..4 {
            if let Ok(Some(v)) = kv.get(format!("{keys}p.{p}")).await {
                owners.push(v);
            }
        }
        let distinct: HashSet<_> = owners.iter().filter(|o| !o.is_empty()).collect();
        if owners.len() == 4 && distinct.len() == 2 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "never balanced: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    by.lock().unwrap().clear();
    let batch: Vec<Message> = (0..400)
        .map(|n| msg("split", &format!("k{n}"), n))
        .collect();
    assert!(bus.publish_all(&batch).await.1.is_none());
    until("400 handled", || by.lock().unwrap().len() >= 400).await;
    let got = by.lock().unwrap().clone();
    let mut owner: HashMap<u32, &str> = HashMap::new();
    for (m, p) in &got {
        let first = *owner.entry(*p).or_insert(m);
        assert_eq!(first, *m, "partition {p} went to both members");
    }
    assert_eq!(owner.len(), 4, "every partition had messages");
    let ones = owner.values().filter(|m| **m == "one").count();
    assert_eq!(ones, 2, "two partitions each: {owner:?}");
    c1.stop().await;
    c2.stop().await;
}

/// Consumers settle what they handled: with the acknowledge-all policy Keel's consumers use,
/// and with a consumer an older Keel made (explicit acknowledgement, one in flight), which is
/// widened and keeps its policy.
#[tokio::test]
async fn handled_messages_are_acknowledged_under_either_policy() {
    use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
    let Some(url) = nats_url("handled_messages_are_acknowledged_under_either_policy") else {
        return;
    };
    let s = Settings {
        partitions: 1,
        ..settings()
    };
    let (bus, _cleanup) = bus_with(&url, s).await;
    for (group, old) in [("new", false), ("old", true)] {
        let stream = bus
            .jetstream()
            .create_stream(async_nats::jetstream::stream::Config {
                name: bus.stream_name("acks", 0),
                subjects: vec![bus.subject("acks", 0)],
                description: Some("keel bus destination acks, partition 0 of 1".into()),
                ..Default::default()
            });
        let stream = match stream.await {
            Ok(s) => s,
            Err(_) => bus
                .jetstream()
                .get_stream(bus.stream_name("acks", 0))
                .await
                .unwrap(),
        };
        if old {
            stream
                .create_consumer(pull::Config {
                    durable_name: Some(bus.consumer_name(group)),
                    ack_policy: AckPolicy::Explicit,
                    max_ack_pending: 1,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        let log: Log = Arc::default();
        let c = bus
            .subscribe(Subscription::new("acks", group), recorder(log.clone()))
            .await
            .unwrap();
        if !old {
            // Once: the second group reads the same 150 from the start.
            let batch: Vec<Message> = (0..150).map(|n| msg("acks", "k", n)).collect();
            assert!(bus.publish_all(&batch).await.1.is_none());
        }
        until("150 handled", || log.lock().unwrap().len() >= 150).await;
        let consumer: PullConsumer = stream
            .get_consumer(&bus.consumer_name(group))
            .await
            .unwrap();
        let t = Instant::now();
        let info = loop {
            let info = consumer.get_info().await.unwrap();
            if info.num_ack_pending == 0 || t.elapsed() > Duration::from_secs(5) {
                break info;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(info.num_ack_pending, 0, "{group}: everything settled");
        assert_eq!(
            info.ack_floor.stream_sequence, info.delivered.stream_sequence,
            "{group}"
        );
        let want = if old {
            AckPolicy::Explicit
        } else {
            AckPolicy::All
        };
        assert_eq!(info.config.ack_policy, want, "{group}");
        assert!(info.config.max_ack_pending > 1, "{group}: widened");
        c.stop().await;
        let ns: Vec<i64> = log.lock().unwrap().iter().map(|(_, n)| *n).collect();
        assert_eq!(ns, (0..150).collect::<Vec<_>>(), "{group}");
    }
}

#[tokio::test]
async fn names_partition_counts_and_urls_are_checked() {
    let Some(url) = nats_url("names_partition_counts_and_urls_are_checked") else {
        return;
    };
    let s = settings();
    let (bus, _cleanup) = bus_with(&url, s.clone()).await;
    let noop = || handler_fn(|_d: Delivery| async { Ok(()) });
    let err = bus
        .subscribe(Subscription::new("ok", "bad group"), noop())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BusError::Invalid(e) if e.contains("group")),
        "{err}"
    );
    let err = bus
        .publish(&Message::new("bad dest*", json!(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, BusError::Invalid(_)), "{err}");
    let (n, err) = bus
        .publish_all(&[
            msg("fine", "k", 1),
            Message::new("not>ok", json!(2)),
            msg("fine", "k", 3),
        ])
        .await;
    assert_eq!(n, 1, "published up to the first failure");
    assert!(matches!(err, Some(BusError::Invalid(_))));
    let log: Log = Arc::default();
    let c = bus
        .subscribe(Subscription::new("fine", "g"), recorder(log.clone()))
        .await
        .unwrap();
    until("the first one", || !log.lock().unwrap().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        *log.lock().unwrap(),
        vec![("k".to_owned(), 1)],
        "the one before the invalid message was stored, none after"
    );

    // A process configured with another partition count is refused, not silently split.
    let eight = NatsBus::connect_with(&url, Settings { partitions: 8, ..s })
        .await
        .unwrap();
    let err = eight
        .subscribe(Subscription::new("fine", "g"), noop())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("partitions"), "{err}");
    c.stop().await;

    let err = NatsBus::connect("nats://user:hunter2@127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(matches!(&err, BusError::Unavailable(_)), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

/// Settings in the URL's query (what a service's `bus` setting can carry) shape what the bus
/// makes on the server; a bad one is refused before connecting.
#[tokio::test]
async fn settings_in_the_url_shape_the_streams() {
    let Some(url) = nats_url("settings_in_the_url_shape_the_streams") else {
        return;
    };
    let prefix = unique_prefix();
    let with = format!(
        "{url}?prefix={prefix}&partitions=2&max_age=1h&max_messages=100&duplicate_window=30s&ack_wait=2s"
    );
    let bus = NatsBus::connect(&with).await.unwrap();
    let _cleanup = Cleanup::new(&url, bus.settings().clone());
    assert_eq!(bus.settings().partitions, 2);
    let log: Log = Arc::default();
    let c = bus
        .subscribe(Subscription::new("urlset", "g"), recorder(log.clone()))
        .await
        .unwrap();
    let (n, err) = bus
        .publish_all(
            &(0..6)
                .map(|i| msg("urlset", &format!("k{i}"), i))
                .collect::<Vec<_>>(),
        )
        .await;
    assert_eq!((n, err.is_none()), (6, true));
    until("all six", || log.lock().unwrap().len() == 6).await;
    c.stop().await;
    let js = bus.jetstream();
    for p in 0..2 {
        let mut stream = js.get_stream(bus.stream_name("urlset", p)).await.unwrap();
        let config = &stream.info().await.unwrap().config;
        assert_eq!(config.subjects, vec![format!("{prefix}.urlset.{p}")]);
        assert_eq!(config.max_age, Duration::from_secs(3600));
        assert_eq!(
            config.max_messages, 50,
            "100 per destination over 2 partitions"
        );
        assert_eq!(config.duplicate_window, Duration::from_secs(30));
    }
    assert!(
        js.get_stream(bus.stream_name("urlset", 2)).await.is_err(),
        "only two partitions"
    );

    let err = NatsBus::connect(&format!("{url}?partitions=2&partition=3"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BusError::Invalid(e) if e.contains("`partition`") && e.contains("unknown")),
        "{err}"
    );
}

/// The broker goes away and comes back (a server of the test's own, on its own port and
/// directory): publishing fails fast meanwhile, consumers resume by themselves afterwards.
#[tokio::test]
async fn publish_fails_fast_while_the_broker_is_down_and_consumers_resume() {
    let Some(_) = nats_url("publish_fails_fast_while_the_broker_is_down_and_consumers_resume")
    else {
        return;
    };
    let Some(mut server) = common::OwnServer::start("broker-down").await else {
        return;
    };
    let (bus, _cleanup) = bus(&server.url()).await;
    let log: Log = Arc::default();
    let c = bus
        .subscribe(Subscription::new("orders", "g"), recorder(log.clone()))
        .await
        .unwrap();
    for n in 0..10 {
        bus.publish(&msg("orders", &format!("k{}", n % 3), n))
            .await
            .unwrap();
    }
    until("the first 10", || log.lock().unwrap().len() >= 10).await;

    server.kill();
    // Until the client has noticed (a stalled machine may take a while): then every publish
    // fails at once. A probe sent before may be stored after the restart (the client resends
    // what it had buffered), so it is 98 and left out of the count below.
    let noticed = Instant::now();
    while !matches!(
        bus.publish(&msg("orders", "k0", 98)).await,
        Err(BusError::Unavailable(_))
    ) {
        assert!(noticed.elapsed() < Duration::from_secs(20), "never noticed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = Instant::now();
    let err = bus.publish(&msg("orders", "k0", 99)).await.unwrap_err();
    assert!(matches!(err, BusError::Unavailable(_)), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "fast: {:?}",
        t.elapsed()
    );

    server.restart().await;
    let mut published = 0;
    for _ in 0..200 {
        if bus.publish(&msg("orders", "k0", 10)).await.is_ok() {
            published = 1;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(published, 1, "publishing works again after the restart");
    for n in 11..20 {
        bus.publish(&msg("orders", &format!("k{}", n % 3), n))
            .await
            .unwrap();
    }
    until("the consumer resumed and got all 20", || {
        let distinct: HashSet<i64> = log.lock().unwrap().iter().map(|(_, n)| *n).collect();
        distinct.len() >= 20
    })
    .await;
    // A broker killed with SIGKILL may lose acknowledgements it had not written yet, so some
    // messages may come again (at least once; the inbox drops them). What took effect first
    // must still be complete and in per-key order.
    let log = log.lock().unwrap().clone();
    let mut seen = HashSet::new();
    let first: Vec<(String, i64)> = log
        .into_iter()
        .filter(|(_, n)| *n != 98 && seen.insert(*n))
        .collect();
    let ns: HashSet<i64> = first.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        ns,
        (0..20).collect::<HashSet<_>>(),
        "none lost, 99 never stored"
    );
    assert_per_key_order(&first, "after the restart");
    c.stop().await;
}
