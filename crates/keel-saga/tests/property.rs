//! Property: under random failure injection — a participant refusing at any step, and
//! transient failures that force redeliveries — every saga ends either with all its steps
//! committed, or with every completed compensatable step compensated (and nothing else).

mod common;

use std::time::Duration;

use common::*;
use keel_saga::{SagaState, query};
use keel_store::testing::TempDir;
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

const PLACES: [&str; 4] = ["", "consumer", "kitchen", "accounting"];

async fn scenario(env: Env, cases: Vec<(usize, usize)>) {
    let dir = TempDir::new("saga-prop");
    let urls = store_urls(
        "saga-prop",
        &dir,
        env.postgres(),
        &["consumer", "kitchen", "accounting", "order"],
    )
    .await
    .expect("the servers were checked");
    let TestBus {
        bus,
        cleanup: _cleanup,
    } = test_bus(&dir, env).await;
    let stop = CancellationToken::new();
    let (consumer, c1) = participant("consumer", bus.clone(), &urls[0], stop.clone()).await;
    let (kitchen, c2) = participant("kitchen", bus.clone(), &urls[1], stop.clone()).await;
    let (accounting, c3) = participant("accounting", bus.clone(), &urls[2], stop.clone()).await;
    let (order, orch) = order_service(bus.clone(), &urls[3], stop.clone()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let tag = format!("{:x}", rand_tag());
    let mut started = Vec::new();
    for (n, (fail, flaky)) in cases.iter().enumerate() {
        let id_order = format!("p{tag}-{n}");
        let mut tx = order.begin().await.unwrap();
        let id = orch
            .start(
                &mut tx,
                OrderData {
                    order_id: id_order.clone(),
                    total: 10,
                    fail_at: PLACES[*fail].to_owned(),
                    ticket_id: None,
                    authorization: None,
                    rejection: None,
                    flaky_at: PLACES[*flaky].to_owned(),
                },
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        started.push((id, id_order, PLACES[*fail]));
    }
    for (id, o, fail) in &started {
        let mut d = query::get(&order, id).await.unwrap().unwrap();
        for _ in 0..400 {
            if d.summary.state.is_final() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            d = query::get(&order, id).await.unwrap().unwrap();
        }
        let (c, k, a) = (
            effects(&consumer, o).await,
            effects(&kitchen, o).await,
            effects(&accounting, o).await,
        );
        if fail.is_empty() {
            assert_eq!(d.summary.state, SagaState::Completed, "{o}");
            assert_eq!(
                (c.len(), k.len(), a.len()),
                (1, 2, 1),
                "{o}: every step committed once"
            );
        } else {
            assert_eq!(d.summary.state, SagaState::Compensated, "{o}");
            assert!(a.is_empty(), "{o}: the pivot never committed");
            // Completed compensatable steps are compensated: a created ticket is cancelled.
            assert!(
                k.is_empty() || k == vec!["ticket created", "ticket cancelled"],
                "{o}: {k:?}"
            );
            assert_eq!(
                order_state(&order, o).await.as_deref(),
                Some("REJECTED"),
                "{o}"
            );
        }
    }
    stop.cancel();
    for c in [c1, c2, c3] {
        c.stop().await;
    }
}

fn rand_tag() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]
    #[test]
    fn every_saga_commits_fully_or_compensates_exactly(
        cases in proptest::collection::vec((0usize..4, 0usize..4), 1..8)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(scenario(Env::Sqlite, cases));
    }
}

/// The same property on PostgreSQL (a fresh schema per service and case) with NATS
/// JetStream (a prefix per case, its streams deleted afterwards); fewer cases.
#[test]
fn every_saga_commits_fully_or_compensates_exactly_on_postgres_and_nats() {
    let test = "every_saga_commits_fully_or_compensates_exactly_on_postgres_and_nats";
    if !available(test, Env::PostgresNats) {
        return;
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 2,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &proptest::collection::vec((0usize..4, 0usize..4), 1..8),
            |cases| {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(scenario(Env::PostgresNats, cases));
                Ok(())
            },
        )
        .unwrap();
}
