//! Crash safety with real processes: the orchestrator and each participant run in their
//! own process (this test binary re-executed in a worker mode). Sagas are started while
//! processes are killed with SIGKILL at random moments and restarted; in the end every
//! saga has ended consistently — completed with every effect exactly once, or compensated
//! with exactly the completed steps undone — and no step was applied twice. On SQLite with
//! the embedded bus, and on PostgreSQL with NATS JetStream when `KEEL_TEST_DATABASE_URL`
//! and `KEEL_TEST_NATS_URL` are set (else a `NOTICE:` line and a skip).

mod common;

use std::{process::Stdio, time::Duration};

use common::*;
use keel_saga::{Orchestrator, SagaState, query};
use keel_store::{Store, testing::TempDir};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn worker_entry() {
    let (Ok(mode), Ok(bus), Ok(store)) = (
        std::env::var("KEEL_SAGA_WORKER"),
        std::env::var("KEEL_SAGA_BUS"),
        std::env::var("KEEL_SAGA_STORE"),
    ) else {
        return; // a normal test run
    };
    let bus = match bus.strip_prefix("nats:") {
        Some(prefix) => open_nats(prefix).await,
        None => open_bus(&bus).await,
    };
    let stop = CancellationToken::new();
    match mode.as_str() {
        "order" => {
            let _s = order_service(bus, &store, stop).await;
            std::future::pending::<()>().await;
        }
        name => {
            let _p = participant(name, bus, &store, stop).await;
            std::future::pending::<()>().await;
        }
    }
}

/// Starts the worker `mode` on the bus `bus` (a `sqlite://` URL, or `nats:<prefix>` for
/// the test NATS server) with its store at `store`.
fn spawn(mode: &str, bus: &str, store: &str) -> tokio::process::Child {
    tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["worker_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env("KEEL_SAGA_WORKER", mode)
        .env("KEEL_SAGA_BUS", bus)
        .env("KEEL_SAGA_STORE", store)
        .env("KEEL_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A small deterministic generator (no extra dependency, reproducible from the seed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test]
async fn sagas_end_consistently_whatever_is_killed_and_when() {
    crash_rounds("saga-crash", Env::Sqlite, 6, 0x5eed_cafe).await;
}

#[tokio::test]
async fn sagas_end_consistently_whatever_is_killed_and_when_on_postgres_and_nats() {
    crash_rounds("saga-crash-nats", Env::PostgresNats, 12, 0xfeed_beef).await;
}

/// `rounds` rounds of: start 8 sagas, kill one of the four processes (at random) at a random
/// moment, restart it. Then every saga must end, consistently.
async fn crash_rounds(test: &str, env: Env, rounds: usize, seed: u64) {
    if !available(test, env) {
        return;
    }
    let tmp = TempDir::new(test);
    let dir = tmp.0.display().to_string();
    let names = ["order", "consumer", "kitchen", "accounting"];
    let Some(urls) = store_urls(test, &tmp, env.postgres(), &names).await else {
        return;
    };
    let (bus, _cleanup) = match env {
        Env::PostgresNats => {
            let prefix = unique_prefix();
            (format!("nats:{prefix}"), Some(NatsCleanup(prefix)))
        }
        Env::Sqlite | Env::Postgres => {
            let url = format!("sqlite://{dir}/bus.db");
            let _ = open_bus(&url).await;
            (url, None)
        }
    };
    // Create the schemas before the workers race for them.
    let order_store = Store::connect(&urls[0]).await.unwrap();
    order_store.migrate("order", ORDER_TABLES).await.unwrap();
    let mut procs: Vec<tokio::process::Child> = names
        .iter()
        .zip(&urls)
        .map(|(n, u)| spawn(n, &bus, u))
        .collect();

    // The test starts sagas itself (an orchestrator handle with no loop: the worker's relay
    // and reply consumer do the rest).
    let outbox = keel_messaging::Outbox::new(order_store.clone())
        .await
        .unwrap();
    let starter = Orchestrator::new(create_order_saga(), order_store.clone(), outbox, "order")
        .await
        .unwrap();
    let fails = ["", "consumer", "kitchen", "accounting", ""];
    let mut rng = Lcg(seed);
    let mut started: Vec<(String, String, String)> = Vec::new();
    for round in 0..rounds {
        for k in 0..8 {
            let order = format!("r{round}-{k}");
            let fail = fails[rng.next(fails.len() as u64) as usize].to_owned();
            let mut tx = order_store.begin().await.unwrap();
            let id = starter
                .start(
                    &mut tx,
                    OrderData {
                        order_id: order.clone(),
                        total: 1000,
                        fail_at: fail.clone(),
                        ticket_id: None,
                        authorization: None,
                        rejection: None,
                        flaky_at: String::new(),
                    },
                )
                .await
                .unwrap();
            tx.commit().await.unwrap();
            started.push((id, order, fail));
        }
        // Kill one process at a random moment, then bring it back.
        tokio::time::sleep(Duration::from_millis(50 + rng.next(400))).await;
        let victim = rng.next(names.len() as u64) as usize;
        procs[victim].start_kill().unwrap();
        let _ = procs[victim].wait().await;
        tokio::time::sleep(Duration::from_millis(rng.next(300))).await;
        procs[victim] = spawn(names[victim], &bus, &urls[victim]);
    }

    // Every saga ends.
    let mut pending = started.len();
    for _ in 0..1200 {
        pending = 0;
        for (id, _, _) in &started {
            let d = query::get(&order_store, id).await.unwrap().unwrap();
            if !d.summary.state.is_final() {
                pending += 1;
            }
        }
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pending, 0, "sagas still running after 60 s");

    let consumer = Store::connect(&urls[1]).await.unwrap();
    let kitchen = Store::connect(&urls[2]).await.unwrap();
    let accounting = Store::connect(&urls[3]).await.unwrap();
    for (id, order, fail) in &started {
        let d = query::get(&order_store, id).await.unwrap().unwrap();
        let (c, k, a) = (
            effects(&consumer, order).await,
            effects(&kitchen, order).await,
            effects(&accounting, order).await,
        );
        let state = order_state(&order_store, order).await;
        match fail.as_str() {
            "" => {
                assert_eq!(
                    d.summary.state,
                    SagaState::Completed,
                    "{order}: {:#?}",
                    d.timeline
                );
                assert_eq!(state.as_deref(), Some("APPROVED"), "{order}");
                assert_eq!(c, vec!["validated"], "{order}");
                assert_eq!(k, vec!["ticket created", "ticket confirmed"], "{order}");
                assert_eq!(a, vec!["authorized"], "{order}");
            }
            "consumer" => {
                assert_eq!(d.summary.state, SagaState::Compensated, "{order}");
                assert_eq!(state.as_deref(), Some("REJECTED"), "{order}");
                assert!(
                    c.is_empty() && k.is_empty() && a.is_empty(),
                    "{order}: {c:?} {k:?} {a:?}"
                );
            }
            "kitchen" => {
                assert_eq!(d.summary.state, SagaState::Compensated, "{order}");
                assert_eq!(state.as_deref(), Some("REJECTED"), "{order}");
                assert_eq!(c, vec!["validated"], "{order}");
                assert!(k.is_empty() && a.is_empty(), "{order}: {k:?} {a:?}");
            }
            "accounting" => {
                assert_eq!(d.summary.state, SagaState::Compensated, "{order}");
                assert_eq!(state.as_deref(), Some("REJECTED"), "{order}");
                assert_eq!(c, vec!["validated"], "{order}");
                assert_eq!(k, vec!["ticket created", "ticket cancelled"], "{order}");
                assert!(a.is_empty(), "{order}: {a:?}");
            }
            _ => unreachable!(),
        }
    }
    for mut p in procs {
        let _ = p.start_kill();
        let _ = p.wait().await;
    }
}
