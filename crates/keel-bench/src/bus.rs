//! `keel bench bus --backend <url>`: one producer, one consumer group. Measures
//! end-to-end throughput (first publish → all handled) in two shapes — the group consuming
//! while messages are published, and the group draining a backlog published before it
//! started — and latency at a fixed rate, beside a baseline doing the same work without Keel
//! in the same run: for SQLite, raw inserts and reads of the same rows; for NATS, the raw
//! `async-nats` JetStream client publishing and pulling the same messages in both shapes.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use keel_messaging::{Delivery, Message, Subscription, handler_fn};
use serde_json::json;

use crate::stats::{Samples, ms};

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct Options {
    /// `sqlite://…` or `nats://…`.
    pub backend: String,
    /// Messages for the throughput run.
    pub messages: usize,
    /// Messages per publish batch in the throughput run.
    pub batch: usize,
    /// Rate of the latency run, messages per second.
    pub rate: u64,
    /// Duration of the latency run.
    pub seconds: u64,
    /// For the NATS layout baseline: unacknowledged messages per partition (the bus allows
    /// 512).
    pub layout_max_ack_pending: i64,
    /// For the NATS layout baseline: send `Nats-Msg-Id` (the bus does).
    pub layout_msg_id: bool,
    /// Throughput rounds; Keel and the baselines alternate, and medians are reported.
    pub rounds: usize,
}

fn payload(n: usize) -> serde_json::Value {
    json!({ "n": n, "orderId": format!("order-{n}"), "total": "12.50", "state": "APPROVAL_PENDING" })
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// When the consumer group runs relative to the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The group is subscribed before the first publish and consumes while messages arrive.
    Live,
    /// Everything is published first; then the group starts and drains the backlog.
    Backlog,
}

/// One throughput run's figures.
struct Throughput {
    rate: f64,
    published: Duration,
    total: Duration,
}

/// Publishes `opts.messages` to `dest` (64 keys, batches of `opts.batch`) and measures until one
/// consumer group has handled them all, from the first publish.
async fn throughput(
    bus: &dyn keel_messaging::Bus,
    opts: &Options,
    dest: &str,
    shape: Shape,
) -> Result<Throughput, String> {
    let handled = Arc::new(AtomicU64::new(0));
    let subscribe = || {
        let h = handled.clone();
        bus.subscribe(
            Subscription::new(dest.to_owned(), "bench"),
            handler_fn(move |_d: Delivery| {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
            }),
        )
    };
    let mut consumer = None;
    if shape == Shape::Live {
        consumer = Some(subscribe().await.map_err(|e| e.to_string())?);
        tokio::time::sleep(Duration::from_millis(700)).await; // partition assignment
    }
    let msgs: Vec<Message> = (0..opts.messages)
        .map(|n| Message::new(dest.to_owned(), payload(n)).with_key(format!("k{}", n % 64)))
        .collect();
    let start = Instant::now();
    for chunk in msgs.chunks(opts.batch.max(1)) {
        let (n, err) = bus.publish_all(chunk).await;
        if let Some(e) = err {
            return Err(format!("publish failed after {n}: {e}"));
        }
    }
    let published = start.elapsed();
    let consumer = match consumer {
        Some(c) => c,
        None => subscribe().await.map_err(|e| e.to_string())?,
    };
    while handled.load(Ordering::Relaxed) < opts.messages as u64 {
        if start.elapsed() > Duration::from_secs(300) {
            return Err("consumer did not finish within 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let total = start.elapsed();
    consumer.stop().await;
    Ok(Throughput {
        rate: opts.messages as f64 / total.as_secs_f64(),
        published,
        total,
    })
}

/// Runs the benchmark and prints the report.
pub async fn run(opts: Options) -> Result<(), String> {
    let bus = keel_bus::connect(&opts.backend)
        .await
        .map_err(|e| e.to_string())?;
    let tag = format!("{:x}", rand_u32());
    println!(
        "keel bench bus: backend {} ({}), {} messages in batches of {}, medians of {} rounds, latency at {} msg/s for {} s",
        opts.backend,
        bus.backend(),
        opts.messages,
        opts.batch,
        opts.rounds.max(1),
        opts.rate,
        opts.seconds
    );

    // Throughput in two shapes: consuming while publishing (a live system), and publishing
    // everything before the group starts (catching up on a backlog). Rounds alternate Keel and
    // the raw client, so a busy moment of the machine hits both; medians are reported.
    let nats = opts.backend.starts_with("nats:");
    let rounds = opts.rounds.max(1);
    let (mut lives, mut backlogs, mut base_lives, mut base_backlogs, mut layouts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut live = None;
    for r in 0..rounds {
        let round = throughput(&*bus, &opts, &format!("bench.tp.{tag}.{r}"), Shape::Live).await?;
        lives.push(round.rate);
        live = Some(round);
        backlogs.push(
            throughput(&*bus, &opts, &format!("bench.bl.{tag}.{r}"), Shape::Backlog)
                .await?
                .rate,
        );
        if nats {
            let round_tag = format!("{tag}r{r}");
            layouts.push(nats_layout_baseline(&opts, &round_tag).await?);
            base_lives.push(nats_baseline(&opts, &round_tag, Shape::Live).await?);
            base_backlogs.push(nats_baseline(&opts, &round_tag, Shape::Backlog).await?);
        }
    }
    let Some(live) = live else {
        return Err("no round ran".into());
    };
    let keel_rate = median(&mut lives);
    let backlog_rate = median(&mut backlogs);

    // Latency at a fixed rate.
    let dest = format!("bench.lat.{tag}");
    let samples: Arc<Mutex<Samples>> = Arc::default();
    let s = samples.clone();
    let consumer = bus
        .subscribe(
            Subscription::new(dest.clone(), "bench"),
            handler_fn(move |d: Delivery| {
                let s = s.clone();
                async move {
                    let sent = d.message.payload["sentUs"].as_u64().unwrap_or(0);
                    let us = now_us().saturating_sub(sent);
                    s.lock().unwrap().push(Duration::from_micros(us));
                    Ok(())
                }
            }),
        )
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let n_lat = (opts.rate * opts.seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / opts.rate.max(1) as f64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0..n_lat {
        tick.tick().await;
        let m = Message::new(dest.clone(), json!({ "n": n, "sentUs": now_us() }))
            .with_key(format!("k{}", n % 64));
        bus.publish(&m).await.map_err(|e| e.to_string())?;
    }
    let wait_until = Instant::now() + Duration::from_secs(30);
    while samples.lock().unwrap().len() < n_lat && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    consumer.stop().await;
    let lat = samples.lock().unwrap().clone();

    if nats {
        remove_nats_streams(&opts.backend, &tag, rounds).await;
    }
    // Baselines, measured in the same process (NATS: alternating with Keel's rounds).
    let (base_name, base_live, base_backlog, layout) = if opts.backend.starts_with("sqlite:") {
        (
            ("raw SQLite", "inserts, then reads of the same rows"),
            None,
            sqlite_baseline(&opts).await?,
            None,
        )
    } else if nats {
        (
            (
                "raw async-nats",
                "one stream, one pull consumer with up to 1,000 unacknowledged",
            ),
            Some(median(&mut base_lives)),
            median(&mut base_backlogs),
            Some(median(&mut layouts)),
        )
    } else {
        (("none", ""), None, 0.0, None)
    };
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    println!(
        "  {:<26} {:>28} {:>25}",
        "msg/s", "consuming while publishing", "publish all, then drain"
    );
    let row = |name: &str, live: Option<f64>, backlog: Option<f64>| {
        let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
        println!("  {name:<26} {:>28} {:>25}", f(live), f(backlog));
    };
    row(
        &format!("keel ({})", bus.backend()),
        Some(keel_rate),
        Some(backlog_rate),
    );
    row(base_name.0, base_live, Some(base_backlog));
    if let Some(rate) = layout {
        row("raw async-nats, layout", Some(rate), None);
    }
    println!("  {}: {}", base_name.0, base_name.1);
    if layout.is_some() {
        println!(
            "  raw async-nats, layout: the NATS bus's wire layout — {LAYOUT_PARTITIONS} partition streams, \
             envelope bodies {}, up to {} unacknowledged per partition, acknowledge-all every {LAYOUT_ACK_EVERY}{}",
            if opts.layout_msg_id {
                "with Nats-Msg-Id"
            } else {
                "without Nats-Msg-Id"
            },
            opts.layout_max_ack_pending.max(1),
            if opts.layout_msg_id && opts.layout_max_ack_pending == LAYOUT_MAX_ACK_PENDING {
                ""
            } else {
                " (changed from the bus's by --layout-* flags)"
            }
        );
    }
    println!(
        "  keel published {} messages in {}, all handled in {} (consuming while publishing, last round)",
        opts.messages,
        ms(live.published),
        ms(live.total)
    );
    println!(
        "  latency at {} msg/s, publish → handled: {}",
        opts.rate,
        lat.summary()
    );
    let mut summary = format!("summary: {} {keel_rate:.0} msg/s", bus.backend());
    match base_live {
        Some(b) => summary.push_str(&format!(
            " vs baseline {b:.0} msg/s ({:.2}×) consuming while publishing; backlog {:.0} vs {base_backlog:.0} msg/s ({:.2}×)",
            ratio(keel_rate, b),
            backlog_rate,
            ratio(backlog_rate, base_backlog)
        )),
        None => summary.push_str(&format!(
            " vs baseline {base_backlog:.0} msg/s ({:.2}×); backlog {:.0} msg/s",
            ratio(keel_rate, base_backlog),
            backlog_rate
        )),
    }
    summary.push_str(&format!(
        "; p99 {} at {} msg/s",
        ms(lat.percentile(99.0)),
        opts.rate
    ));
    println!("{summary}");
    Ok(())
}

/// The median of `values` (the upper one of an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn rand_u32() -> u32 {
    (now_us() as u32) ^ std::process::id().rotate_left(16)
}

/// Inserts the same rows into a same-shaped table and reads them back in batches.
async fn sqlite_baseline(opts: &Options) -> Result<f64, String> {
    let path = opts.backend.replace("sqlite://", "");
    let url = format!("sqlite://{path}.baseline");
    let store = keel_store::Store::connect(&url)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS base; CREATE TABLE base (seq INTEGER PRIMARY KEY AUTOINCREMENT, destination TEXT NOT NULL, \
         partition INTEGER NOT NULL, message_id TEXT NOT NULL, msg_key TEXT, headers TEXT NOT NULL, payload TEXT NOT NULL, created_at INTEGER NOT NULL); \
         CREATE INDEX base_by_partition ON base (destination, partition, seq)",
    )
    .execute(store.pool())
    .await
    .map_err(|e| e.to_string())?;
    let msgs: Vec<Message> = (0..opts.messages)
        .map(|n| Message::new("base", payload(n)).with_key(format!("k{}", n % 64)))
        .collect();
    let start = Instant::now();
    for chunk in msgs.chunks(opts.batch.max(1)) {
        let mut tx = store.begin().await.map_err(|e| e.to_string())?;
        for m in chunk {
            sqlx::query("INSERT INTO base (destination, partition, message_id, msg_key, headers, payload, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
                .bind(&m.destination)
                .bind(i64::from(m.partition(16)))
                .bind(&m.id)
                .bind(m.key.clone())
                .bind(serde_json::to_string(&m.headers).unwrap_or_default())
                .bind(serde_json::to_string(&m.payload).unwrap_or_default())
                .bind(keel_store::now_ms())
                .execute(tx.conn())
                .await
                .map_err(|e| e.to_string())?;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
    }
    let mut read = 0usize;
    for p in 0..16i64 {
        let mut after = 0i64;
        loop {
            let rows: Vec<(i64, String, String)> = sqlx::query_as(
                "SELECT seq, headers, payload FROM base WHERE destination = $1 AND partition = $2 AND seq > $3 ORDER BY seq LIMIT 200",
            )
            .bind("base")
            .bind(p)
            .bind(after)
            .fetch_all(store.pool())
            .await
            .map_err(|e| e.to_string())?;
            if rows.is_empty() {
                break;
            }
            for (seq, h, pl) in &rows {
                let _: serde_json::Value = serde_json::from_str(pl).unwrap_or_default();
                let _: serde_json::Value = serde_json::from_str(h).unwrap_or_default();
                after = *seq;
                read += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    store.close().await;
    let _ = std::fs::remove_file(format!("{path}.baseline"));
    let _ = std::fs::remove_file(format!("{path}.baseline-wal"));
    let _ = std::fs::remove_file(format!("{path}.baseline-shm"));
    Ok(read as f64 / elapsed.as_secs_f64())
}

/// The raw JetStream client publishing the same messages (acknowledged, pipelined per batch)
/// into one stream and pulling them back with one durable consumer (up to 1,000
/// unacknowledged), in the given shape.
async fn nats_baseline(opts: &Options, tag: &str, shape: Shape) -> Result<f64, String> {
    use futures::StreamExt;
    let client = async_nats::connect(&opts.backend)
        .await
        .map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    let which = if shape == Shape::Live {
        "LIVE"
    } else {
        "BACKLOG"
    };
    let stream_name = format!("BENCH_BASE_{which}_{tag}");
    let subject = format!("bench.base.{which}.{tag}");
    let stream = js
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("base".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let want = opts.messages;
    let drain = async move {
        let mut got = 0usize;
        let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
        while got < want {
            let Some(m) = messages.next().await else {
                break;
            };
            let m = m.map_err(|e| e.to_string())?;
            let _: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
            m.ack().await.map_err(|e| e.to_string())?;
            got += 1;
        }
        Ok::<usize, String>(got)
    };
    let mut drain = Some(drain);
    let mut live = None;
    if shape == Shape::Live {
        live = drain.take().map(tokio::spawn);
    }
    let start = Instant::now();
    for chunk in (0..opts.messages)
        .collect::<Vec<_>>()
        .chunks(opts.batch.max(1))
    {
        let mut acks = Vec::with_capacity(chunk.len());
        for n in chunk {
            let body = serde_json::to_vec(&payload(*n)).unwrap_or_default();
            let ack = js
                .publish(subject.clone(), body.into())
                .await
                .map_err(|e| e.to_string())?;
            acks.push(ack);
        }
        for a in acks {
            a.await.map_err(|e| e.to_string())?;
        }
    }
    let got = match (live, drain) {
        (Some(task), _) => task.await.map_err(|e| e.to_string())??,
        (None, Some(drain)) => drain.await?,
        (None, None) => 0,
    };
    let elapsed = start.elapsed();
    let _ = js.delete_stream(&stream_name).await;
    Ok(got as f64 / elapsed.as_secs_f64())
}

/// Deletes the streams the NATS bus created for this run's destinations.
async fn remove_nats_streams(url: &str, tag: &str, rounds: usize) {
    let Ok(bus) = keel_bus_nats::NatsBus::connect(url).await else {
        return;
    };
    let partitions = bus.settings().partitions;
    let mut dests = vec![format!("bench.lat.{tag}")];
    for r in 0..rounds {
        dests.push(format!("bench.tp.{tag}.{r}"));
        dests.push(format!("bench.bl.{tag}.{r}"));
    }
    for dest in dests {
        for p in 0..partitions {
            let _ = bus
                .jetstream()
                .delete_stream(bus.stream_name(&dest, p))
                .await;
        }
    }
}

const LAYOUT_PARTITIONS: u32 = 16;
/// The bus's consumers: twice its default pull batch of 256 in flight per partition.
const LAYOUT_MAX_ACK_PENDING: i64 = 512;
/// The bus acknowledges the last handled message every this many (and when it waits).
const LAYOUT_ACK_EVERY: usize = 64;

/// The raw client doing what the NATS bus does on the wire, without Keel: one stream per
/// partition, the envelope as the body with `Nats-Msg-Id`, one durable acknowledge-all
/// consumer per partition with up to 512 unacknowledged messages, acknowledged every 64th
/// and at the last, consuming while publishing. The
/// `layout_*` options vary the last two, to measure what they cost. The gap between
/// this and the plain baseline is the price of the layout; the gap to Keel's figure is Keel's.
async fn nats_layout_baseline(opts: &Options, tag: &str) -> Result<f64, String> {
    use async_nats::jetstream::{
        self,
        consumer::{AckPolicy, pull},
        message::PublishMessage,
    };
    use futures::StreamExt;
    let client = async_nats::connect(&opts.backend)
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(client);
    let name = |p: u32| format!("BENCH_LAYOUT_{tag}_{p}");
    let subject = |p: u32| format!("bench.layout.{tag}.{p}");
    let msgs: Vec<Message> = (0..opts.messages)
        .map(|n| {
            Message::new(format!("bench.layout.{tag}"), payload(n)).with_key(format!("k{}", n % 64))
        })
        .collect();
    let mut tasks = Vec::new();
    for p in 0..LAYOUT_PARTITIONS {
        let stream = js
            .create_stream(jetstream::stream::Config {
                name: name(p),
                subjects: vec![subject(p)],
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some("base".into()),
                ack_policy: AckPolicy::All,
                max_ack_pending: opts.layout_max_ack_pending.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let want = msgs
            .iter()
            .filter(|m| m.partition(LAYOUT_PARTITIONS) == p)
            .count();
        tasks.push(tokio::spawn(async move {
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            let mut got = 0;
            while got < want {
                let Some(m) = messages.next().await else {
                    break;
                };
                let m = m.map_err(|e| e.to_string())?;
                let _: Message = serde_json::from_slice(&m.payload).map_err(|e| e.to_string())?;
                got += 1;
                // Acknowledge-all: every 64th and the last (the bus also acknowledges whenever
                // it would wait; within this run that makes no difference to the server).
                if got % LAYOUT_ACK_EVERY == 0 || got == want {
                    m.ack().await.map_err(|e| e.to_string())?;
                }
            }
            Ok::<usize, String>(got)
        }));
    }
    let start = Instant::now();
    for chunk in msgs.chunks(opts.batch.max(1)) {
        let mut acks = Vec::with_capacity(chunk.len());
        for m in chunk {
            let body = serde_json::to_vec(m).map_err(|e| e.to_string())?;
            let mut publish = PublishMessage::build().payload(body.into());
            if opts.layout_msg_id {
                publish = publish.message_id(&m.id);
            }
            let ack = js
                .send_publish(subject(m.partition(LAYOUT_PARTITIONS)), publish)
                .await
                .map_err(|e| e.to_string())?;
            acks.push(ack);
        }
        for a in acks {
            a.await.map_err(|e| e.to_string())?;
        }
    }
    let mut got = 0;
    for t in tasks {
        got += t.await.map_err(|e| e.to_string())??;
    }
    let elapsed = start.elapsed();
    for p in 0..LAYOUT_PARTITIONS {
        let _ = js.delete_stream(name(p)).await;
    }
    Ok(got as f64 / elapsed.as_secs_f64())
}
