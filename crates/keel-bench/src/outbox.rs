//! `keel bench outbox --store <url>`: commits domain transactions that each add one
//! message to the transactional outbox, at fixed rates, and measures commit → delivered
//! (the relay publishes, a subscriber receives) — beside the store's own commit latency
//! measured in the same run, the floor under any outbox figure.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use keel_messaging::{Delivery, Message, Outbox, Subscription, handler_fn};
use keel_store::{Migration, Store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::stats::{Samples, ms};

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct Options {
    /// `sqlite://…` or `postgres://…`.
    pub store: String,
    /// The bus to relay to (default: an embedded bus next to a temporary file).
    pub bus: Option<String>,
    /// Commit rates to measure, per second.
    pub rates: Vec<u64>,
    /// Seconds per rate.
    pub seconds: u64,
}

const DOMAIN: &[Migration] = &[Migration::new(
    1,
    "bench orders",
    "CREATE TABLE bench_orders (id TEXT PRIMARY KEY, total {bigint} NOT NULL, created_at {bigint} NOT NULL)",
)];

/// Reclaims the rows earlier runs deleted from the benchmark's tables (the relay deletes the
/// outbox rows it published; each run deletes its orders at the end), so that a server
/// without autovacuum does not measure a growing pile of dead rows. A database where the
/// benchmark may not vacuum is measured as it is, with a notice.
async fn vacuum(store: &Store) {
    for sql in ["VACUUM bench_orders", "VACUUM keel_outbox"] {
        if let Err(e) = sqlx::query(sql).execute(store.pool()).await {
            println!("  notice: {sql} failed ({e}); measuring the tables as they are");
        }
    }
}

/// Runs the benchmark and prints the report.
pub async fn run(opts: Options) -> Result<(), String> {
    let store = Store::connect_with(&opts.store, 16)
        .await
        .map_err(|e| e.to_string())?;
    store
        .migrate("keel_bench", DOMAIN)
        .await
        .map_err(|e| e.to_string())?;
    let outbox = Outbox::new(store.clone())
        .await
        .map_err(|e| e.to_string())?;
    if store.backend() == keel_store::Backend::Postgres {
        vacuum(&store).await;
    }
    let tmp = std::env::temp_dir().join(format!("keel-bench-outbox-{}", std::process::id()));
    let bus_url = opts
        .bus
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}/bus.db", tmp.display()));
    let bus = keel_bus::connect(&bus_url)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "keel bench outbox: store {} ({:?}), relay to {} ({}), {} s per rate",
        store.url().split('@').next_back().unwrap_or_default(),
        store.backend(),
        bus_url,
        bus.backend(),
        opts.seconds
    );
    println!("  {}", crate::machine::check(Duration::from_secs(2)).await);
    let stop = CancellationToken::new();
    // Kept so the relay can hand its lease back before the process exits (a next run on the
    // same SQLite file would otherwise wait out the lease).
    let relay = tokio::spawn(outbox.clone().run_relay(bus.clone(), stop.clone()));

    let mut summary = Vec::new();
    for &rate in &opts.rates {
        let dest = format!("bench.outbox.{rate}.{}", std::process::id());
        let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let lat: Arc<Mutex<Samples>> = Arc::default();
        let (c2, l2) = (committed.clone(), lat.clone());
        let consumer = bus
            .subscribe(
                Subscription::new(dest.clone(), "bench"),
                handler_fn(move |d: Delivery| {
                    let (c, l) = (c2.clone(), l2.clone());
                    async move {
                        let now = Instant::now();
                        // The commit instant is recorded right after commit returns; a message
                        // can even arrive before that record (the relay is that fast): then it
                        // counts as zero.
                        let t = c.lock().unwrap().get(&d.message.id).copied();
                        l.lock().unwrap().push(
                            t.map(|t| now.saturating_duration_since(t))
                                .unwrap_or_default(),
                        );
                        Ok(())
                    }
                }),
            )
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(700)).await;

        let commit_lat: Arc<Mutex<Samples>> = Arc::default();
        let producers = 4u64;
        let per = rate / producers;
        let n_each = per * opts.seconds;
        let mut tasks = Vec::new();
        for p in 0..producers {
            let (store, outbox, dest, committed, commit_lat) = (
                store.clone(),
                outbox.clone(),
                dest.clone(),
                committed.clone(),
                commit_lat.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / per.max(1) as f64));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for n in 0..n_each {
                    tick.tick().await;
                    let id = format!("{rate}-{p}-{n}");
                    let m = Message::new(dest.clone(), json!({"orderId": id, "total": "12.50"}))
                        .with_key(id.clone());
                    let t0 = Instant::now();
                    let mut tx = store.begin().await.map_err(|e| e.to_string())?;
                    sqlx::query(
                        "INSERT INTO bench_orders (id, total, created_at) VALUES ($1, $2, $3)",
                    )
                    .bind(&id)
                    .bind(1250_i64)
                    .bind(keel_store::now_ms())
                    .execute(tx.conn())
                    .await
                    .map_err(|e| e.to_string())?;
                    outbox.send(&mut tx, &m).await.map_err(|e| e.to_string())?;
                    let mid = m.id.clone();
                    tx.commit().await.map_err(|e| e.to_string())?;
                    let done = Instant::now();
                    committed.lock().unwrap().insert(mid, done);
                    commit_lat.lock().unwrap().push(done - t0);
                }
                Ok::<(), String>(())
            }));
        }
        let started = Instant::now();
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        let achieved = (producers * n_each) as f64 / started.elapsed().as_secs_f64();
        let expect = (producers * n_each) as usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        while lat.lock().unwrap().len() < expect && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        consumer.stop().await;
        let l = lat.lock().unwrap().clone();
        let c = commit_lat.lock().unwrap().clone();
        println!("  at {rate} commits/s (achieved {achieved:.0}):");
        println!("    commit → delivered   {}", l.summary());
        println!("    baseline: the commit {}", c.summary());
        summary.push(format!(
            "{rate}/s: commit→delivered p99 {} (commit p99 {})",
            ms(l.percentile(99.0)),
            ms(c.percentile(99.0))
        ));
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), relay).await;
    let _ = sqlx::query("DELETE FROM bench_orders")
        .execute(store.pool())
        .await;
    let _ = std::fs::remove_dir_all(&tmp);
    println!("summary: {:?} — {}", store.backend(), summary.join("; "));
    Ok(())
}
