//! Property: for any sequence of keyed messages and any pattern of handler failures, each
//! key's messages take effect in publish order — across redeliveries and while members
//! join and leave the group (rebalancing) — and every message takes effect.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use keel_bus_sqlite::{Settings, SqliteBus};
use keel_messaging::{Bus, Delivery, HandlerError, Message, Subscription, handler_fn};
use keel_store::testing::TempDir;
use proptest::prelude::*;
use serde_json::json;

type Applied = Arc<Mutex<Vec<(u8, u32)>>>;

fn handler(
    applied: Applied,
    failures: Arc<Mutex<HashMap<u32, u8>>>,
) -> Arc<dyn keel_messaging::Handler> {
    handler_fn(move |d: Delivery| {
        let applied = applied.clone();
        let failures = failures.clone();
        async move {
            let n = d.message.payload["n"].as_u64().unwrap() as u32;
            let key = d.message.payload["k"].as_u64().unwrap() as u8;
            {
                let mut f = failures.lock().unwrap();
                let left = f.entry(n).or_insert(0);
                if *left > 0 {
                    *left -= 1;
                    return Err(HandlerError::retry("injected failure"));
                }
            }
            let mut a = applied.lock().unwrap();
            // Effects are idempotent per message id in real services (the inbox); here we
            // record only the first success to check order and completeness.
            if !a.iter().any(|(_, m)| *m == n) {
                a.push((key, n));
            }
            Ok(())
        }
    })
}

async fn scenario(msgs: Vec<(u8, u8)>, churn: bool) {
    let dir = TempDir::new("bus-prop");
    let settings = Settings {
        poll: Duration::from_millis(20),
        member_timeout: Duration::from_millis(800),
        partitions: 4,
        ..Settings::default()
    };
    let bus = SqliteBus::open_with(&dir.sqlite_url("bus.db"), settings)
        .await
        .unwrap();
    let applied: Applied = Arc::default();
    let failures: Arc<Mutex<HashMap<u32, u8>>> = Arc::new(Mutex::new(
        msgs.iter()
            .enumerate()
            .map(|(n, (_, f))| (n as u32, *f))
            .collect(),
    ));
    let sub = || {
        Subscription::new("prop", "g")
            .max_attempts(10)
            .backoff(Duration::from_millis(5), Duration::from_millis(20))
    };
    let a = bus
        .subscribe(sub(), handler(applied.clone(), failures.clone()))
        .await
        .unwrap();
    let batch: Vec<Message> = msgs
        .iter()
        .enumerate()
        .map(|(n, (k, _))| {
            Message::new("prop", json!({"n": n, "k": k})).with_key(format!("key-{k}"))
        })
        .collect();
    let half = batch.len() / 2;
    bus.publish_all(&batch[..half]).await;
    let mut b = None;
    if churn {
        // A second member joins (partitions move), then the first leaves.
        b = Some(
            bus.subscribe(sub(), handler(applied.clone(), failures.clone()))
                .await
                .unwrap(),
        );
    }
    bus.publish_all(&batch[half..]).await;
    if churn {
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.stop().await;
    }
    let total = msgs.len();
    for _ in 0..600 {
        if applied.lock().unwrap().len() == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = applied.lock().unwrap().clone();
    let ids: HashSet<u32> = got.iter().map(|(_, n)| *n).collect();
    assert_eq!(ids.len(), total, "every message took effect");
    let mut last: HashMap<u8, u32> = HashMap::new();
    for (k, n) in got {
        if let Some(prev) = last.insert(k, n) {
            assert!(n > prev, "key {k}: message {n} took effect after {prev}");
        }
    }
    if let Some(b) = b {
        b.stop().await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]
    #[test]
    fn per_key_order_survives_redelivery_and_rebalancing(
        msgs in proptest::collection::vec((0u8..4, prop_oneof![4 => Just(0u8), 1 => 1u8..3]), 4..40),
        churn in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(scenario(msgs, churn));
    }
}
