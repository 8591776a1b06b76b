//! `keel bench saga --store <url> --bus <url>`: completed three-step sagas per second, and
//! in the same run the bound: the store's measured commit rate divided by the commits one
//! saga needs. Every service has its own database (separate SQLite files next to the given
//! one, or separate databases on the given PostgreSQL server — not schemas of one
//! database: the outbox relay's leadership lock is per database), as in production.
//! Completions are taken from the orchestrator's in-process `ended()` notifications, so
//! the benchmark adds no queries of its own to the store it measures.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use keel_messaging::{Inbox, Outbox, Subscription};
use keel_saga::{Command, CommandError, Orchestrator, SagaDefinition, Step, command_handler};
use keel_store::{Migration, Store};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::stats::Samples;

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct Options {
    /// `sqlite://dir/x.db` (files are created beside it) or `postgres://…` (schemas).
    pub store: String,
    /// `sqlite://…` or `nats://…`.
    pub bus: String,
    /// Sagas to run.
    pub sagas: usize,
    /// Sagas in flight at once.
    pub concurrency: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Data {
    n: usize,
}

/// Commits per saga: the orchestrator's start and three replies, and three participant
/// commands (each its own transaction).
const COMMITS_PER_SAGA: f64 = 7.0;

const TABLES: &[Migration] = &[Migration::new(
    1,
    "bench",
    "CREATE TABLE bench_effects (seq {auto_id}, n {bigint} NOT NULL)",
)];

async fn store_for(opts: &Options, service: &str, tag: &str) -> Result<Store, String> {
    if opts.store.starts_with("sqlite:") {
        let base = opts.store.trim_start_matches("sqlite://");
        let dir = std::path::Path::new(base)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| ".".into());
        Store::connect(&format!("sqlite://{dir}/saga-bench-{tag}/{service}.db"))
            .await
            .map_err(|e| e.to_string())
    } else {
        let admin = Store::connect_with(&opts.store, 1)
            .await
            .map_err(|e| e.to_string())?;
        let db = pg_database(service, tag);
        // The name is built from the process id and a fixed service name, never from input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(admin.pool())
            .await
            .map_err(|e| e.to_string())?;
        admin.close().await;
        Store::connect_with(&with_database(&opts.store, &db)?, 16)
            .await
            .map_err(|e| e.to_string())
    }
}

fn pg_database(service: &str, tag: &str) -> String {
    format!("keel_bench_{tag}_{}", service.replace('-', "_"))
}

/// `postgres://user@host:port/db?params` with `db` replaced.
fn with_database(url: &str, db: &str) -> Result<String, String> {
    let scheme_end = url.find("://").ok_or("bad PostgreSQL URL")? + 3;
    let (base, params) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    Ok(format!("{}/{db}{params}", &base[..host_end]))
}

/// Drops the per-service PostgreSQL databases.
async fn drop_databases(opts: &Options, tag: &str) {
    let Ok(admin) = Store::connect_with(&opts.store, 1).await else {
        return;
    };
    for service in ["order", "a", "b", "c"] {
        let db = pg_database(service, tag);
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
        )))
        .execute(admin.pool())
        .await;
    }
    admin.close().await;
}

/// Sequential single-row insert transactions: the store's commit rate.
async fn commit_rate(store: &Store, seconds: f64) -> Result<f64, String> {
    store
        .migrate("bench", TABLES)
        .await
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        let mut tx = store.begin().await.map_err(|e| e.to_string())?;
        sqlx::query("INSERT INTO bench_effects (n) VALUES ($1)")
            .bind(n as i64)
            .execute(tx.conn())
            .await
            .map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Runs the benchmark and prints the report.
pub async fn run(opts: Options) -> Result<(), String> {
    let tag = format!("{:x}", std::process::id());
    let result = measure(&opts, &tag).await;
    if opts.store.starts_with("sqlite:") {
        let base = opts.store.trim_start_matches("sqlite://");
        if let Some(dir) = std::path::Path::new(base).parent() {
            let _ = std::fs::remove_dir_all(dir.join(format!("saga-bench-{tag}")));
        }
    } else {
        tokio::time::sleep(Duration::from_millis(200)).await; // the relays let go
        drop_databases(&opts, &tag).await;
    }
    result
}

async fn measure(opts: &Options, tag: &str) -> Result<(), String> {
    let bus = keel_bus::connect(&opts.bus)
        .await
        .map_err(|e| e.to_string())?;
    let stop = CancellationToken::new();
    let order = store_for(opts, "order", tag).await?;
    println!(
        "keel bench saga: {} three-step sagas, {} in flight, store {:?}, bus {}",
        opts.sagas,
        opts.concurrency,
        order.backend(),
        bus.backend()
    );
    let rate = commit_rate(&order, 2.0).await?;

    let mut def = SagaDefinition::<Data>::new(&format!("bench-{tag}"));
    for p in ["a", "b", "c"] {
        let dest = format!("bench{tag}.{p}.commands");
        def = def.step(
            Step::command(&format!("step {p}"), move |d: &Data| {
                Command::new(dest.clone(), "Do", json!({"n": d.n}))
            })
            .timeout(Duration::from_secs(60)),
        );
    }
    let mut consumers = Vec::new();
    for p in ["a", "b", "c"] {
        let store = store_for(opts, p, tag).await?;
        store
            .migrate("bench", TABLES)
            .await
            .map_err(|e| e.to_string())?;
        let outbox = Outbox::new(store.clone())
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(outbox.clone().run_relay(bus.clone(), stop.clone()));
        let inbox = Inbox::new(store.clone(), &format!("bench.{p}"))
            .await
            .map_err(|e| e.to_string())?;
        let handler = command_handler(inbox, outbox, |tx, cmd| {
            Box::pin(async move {
                sqlx::query("INSERT INTO bench_effects (n) VALUES ($1)")
                    .bind(cmd.payload["n"].as_i64().unwrap_or(0))
                    .execute(tx.conn())
                    .await
                    .map_err(|e| CommandError::Retry(e.to_string()))?;
                Ok(json!({}))
            })
        });
        let c = bus
            .subscribe(
                Subscription::new(format!("bench{tag}.{p}.commands"), p),
                handler,
            )
            .await
            .map_err(|e| e.to_string())?;
        consumers.push(c); // lives for the benchmark
    }
    let outbox = Outbox::new(order.clone())
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(outbox.clone().run_relay(bus.clone(), stop.clone()));
    let orch = Orchestrator::new(def, order.clone(), outbox, &format!("bench{tag}"))
        .await
        .map_err(|e| e.to_string())?;
    {
        let (o, b, s) = (orch.clone(), bus.clone(), stop.clone());
        tokio::spawn(async move { o.run(b, s).await });
    }
    tokio::time::sleep(Duration::from_millis(800)).await;

    // In flight: saga id → (start time, its concurrency permit). The orchestrator says when
    // each saga ended (after the ending transaction committed); at most `concurrency`
    // notifications are ever unread, well within the channel's 1024.
    type InFlight = HashMap<String, (Instant, tokio::sync::OwnedSemaphorePermit)>;
    let in_flight: Arc<Mutex<InFlight>> = Arc::default();
    let durations: Arc<Mutex<Samples>> = Arc::default();
    let (all_done, mut done_rx) = tokio::sync::watch::channel(0usize);
    let mut ended = orch.ended();
    let waiter = tokio::spawn({
        let (in_flight, durations) = (in_flight.clone(), durations.clone());
        async move {
            loop {
                match ended.recv().await {
                    Ok((id, _state)) => {
                        if let Some((t0, permit)) = in_flight.lock().unwrap().remove(&id) {
                            let mut d = durations.lock().unwrap();
                            d.push(t0.elapsed());
                            let _ = all_done.send(d.len());
                            drop(permit);
                        }
                    }
                    Err(e) => return Err::<(), String>(format!("saga notifications: {e}")),
                }
            }
        }
    });
    let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let start = Instant::now();
    for n in 0..opts.sagas {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let mut tx = order.begin().await.map_err(|e| e.to_string())?;
        let id = orch
            .start(&mut tx, Data { n })
            .await
            .map_err(|e| e.to_string())?;
        // Registered before the commit: no reply can end the saga before it is known.
        in_flight.lock().unwrap().insert(id, (t0, permit));
        tx.commit().await.map_err(|e| e.to_string())?;
    }
    let finished = tokio::time::timeout(
        Duration::from_secs(600),
        done_rx.wait_for(|n| *n >= opts.sagas),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if !finished {
        waiter.abort();
        return Err(match waiter.await {
            Ok(Err(e)) => e,
            _ => "sagas did not finish within 600 s".into(),
        });
    }
    waiter.abort();
    let elapsed = start.elapsed();
    let completed: (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM keel_sagas WHERE state = 'COMPLETED' AND saga_type = $1",
    )
    .bind(orch.saga_type())
    .fetch_one(order.pool())
    .await
    .map_err(|e| e.to_string())?;
    let per_s = completed.0 as f64 / elapsed.as_secs_f64();
    let bound = rate / COMMITS_PER_SAGA;
    let d = durations.lock().unwrap().clone();
    stop.cancel();
    drop(consumers);
    println!(
        "  keel:  {per_s:>8.0} completed sagas/s ({} of {} completed in {:.2} s)",
        completed.0,
        opts.sagas,
        elapsed.as_secs_f64()
    );
    println!(
        "  bound: {bound:>8.0} sagas/s = store commit rate {rate:.0}/s ÷ {COMMITS_PER_SAGA} commits per saga"
    );
    println!("  saga duration: {}", d.summary());
    println!(
        "summary: {:?} + {}: {:.0} sagas/s, {:.2}× the commit bound of {:.0}/s",
        order.backend(),
        bus.backend(),
        per_s,
        per_s / bound.max(1e-9),
        bound
    );
    Ok(())
}
