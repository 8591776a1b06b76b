//! `keel bench bus --backend <url>`: one producer, one consumer group. Measures
//! end-to-end throughput (first publish → all handled) in two shapes — the group consuming
//! while messages are published, and the group draining a backlog published before it
//! started — and latency at a fixed rate, beside a baseline doing the same work without Keel
//! in the same run: for SQLite, raw inserts and reads of the same rows; for NATS, the raw
//! `async-nats` JetStream client publishing (with `Nats-Msg-Id`, as the bus de-duplicates
//! publishes, and without) and pulling the same messages in both shapes, and the raw client
//! on the bus's own wire layout. With `--server-pid`, each run's CPU time per message of the
//! benchmark process and of the broker is reported too, over the same span as the run's rate.

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
    /// For the NATS layout baseline: unacknowledged messages per partition (`None`: the
    /// bus's, twice its pull batch).
    pub layout_max_ack_pending: Option<i64>,
    /// For the NATS layout baseline: send `Nats-Msg-Id` (the bus does).
    pub layout_msg_id: bool,
    /// For the NATS layout baseline: one stream with a subject per partition and a filtered
    /// consumer per partition, instead of the bus's stream per partition.
    pub layout_one_stream: bool,
    /// For the NATS layout baseline: partitions (`None`: the bus's, from the URL).
    pub layout_partitions: Option<u32>,
    /// Throughput rounds; Keel and the baselines alternate, and medians are reported.
    pub rounds: usize,
    /// A broker process on this machine whose CPU time per message is reported beside the
    /// benchmark's own.
    pub server_pid: Option<u32>,
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
    /// CPU time of this process and of the broker over the same span as `rate`.
    cpu: Option<(Duration, Duration)>,
}

impl Throughput {
    /// The figures a [`Meter`] files.
    fn run(&self) -> Run {
        Run {
            rate: self.rate,
            cpu: self.cpu,
        }
    }
}

/// A run's rate and the CPU time spent over the span the rate is measured on (first
/// publish → all handled): set-up before the clock (streams, subscriptions, building the
/// messages) counts for no one.
struct Run {
    rate: f64,
    cpu: Option<(Duration, Duration)>,
}

/// Publishes `opts.messages` to `dest` (64 keys, batches of `opts.batch`) and measures until one
/// consumer group has handled them all, from the first publish.
async fn throughput(
    bus: &dyn keel_messaging::Bus,
    meter: &Meter,
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
    let mark = meter.now();
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
    let cpu = meter.since(mark);
    consumer.stop().await;
    Ok(Throughput {
        rate: opts.messages as f64 / total.as_secs_f64(),
        published,
        total,
        cpu,
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
        keel_bus_nats::redact(&opts.backend),
        bus.backend(),
        opts.messages,
        opts.batch,
        opts.rounds.max(1),
        opts.rate,
        opts.seconds
    );

    // Throughput in two shapes: consuming while publishing (a live system), and publishing
    // everything before the group starts (catching up on a backlog). Rounds alternate Keel and
    // the raw client, so a busy moment of the machine hits both, and which goes first alternates
    // too (the first runs on a freshly started broker pay for its warm-up); medians are
    // reported.
    let nats = opts.backend.starts_with("nats:");
    let layout = if nats { Some(Layout::of(&opts)?) } else { None };
    let rounds = opts.rounds.max(1);
    let meter = Meter {
        server: opts.server_pid,
        messages: opts.messages.max(1),
    };
    let mut keel = Series::new(format!("keel ({})", bus.backend()));
    // NATS: the raw client publishing with `Nats-Msg-Id` (the bus's de-duplication), and
    // without; then the bus's whole wire layout.
    let mut raw_dedup = Series::new("raw async-nats, dedup".into());
    let mut raw_plain = Series::new("raw async-nats, plain".into());
    let mut layout_series = Series::new("raw async-nats, layout".into());
    let mut live = None;
    for r in 0..rounds {
        let (tp, bl) = (format!("bench.tp.{tag}.{r}"), format!("bench.bl.{tag}.{r}"));
        let keel_first = r % 2 == 0;
        for keel_turn in [keel_first, !keel_first] {
            if keel_turn {
                meter
                    .run(&mut keel, Shape::Live, async {
                        let round = throughput(&*bus, &meter, &opts, &tp, Shape::Live).await?;
                        let run = round.run();
                        live = Some(round);
                        Ok(run)
                    })
                    .await?;
                meter
                    .run(&mut keel, Shape::Backlog, async {
                        Ok(throughput(&*bus, &meter, &opts, &bl, Shape::Backlog)
                            .await?
                            .run())
                    })
                    .await?;
                if nats {
                    // Every measurement starts from the same server state: the baselines
                    // delete their streams after each run, so Keel's go too (with their
                    // de-duplication windows).
                    remove_nats_streams(&opts.backend, &[tp.clone(), bl.clone()]).await;
                }
            } else if let Some(layout) = &layout {
                let round_tag = format!("{tag}r{r}");
                meter
                    .run(
                        &mut layout_series,
                        Shape::Live,
                        nats_layout_baseline(&meter, &opts, layout, &round_tag),
                    )
                    .await?;
                for (series, msg_id) in [(&mut raw_dedup, true), (&mut raw_plain, false)] {
                    for shape in [Shape::Live, Shape::Backlog] {
                        meter
                            .run(
                                series,
                                shape,
                                nats_baseline(
                                    &meter,
                                    &opts,
                                    &layout.servers,
                                    &round_tag,
                                    shape,
                                    msg_id,
                                ),
                            )
                            .await?;
                    }
                }
            }
        }
    }
    let Some(live) = live else {
        return Err("no round ran".into());
    };

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
        remove_nats_streams(&opts.backend, &[dest]).await;
    }

    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let mut series = vec![keel];
    let mut notes: Vec<String> = Vec::new();
    if nats {
        series.extend([raw_dedup, raw_plain, layout_series]);
        notes.push(
            "raw async-nats, dedup: one stream, one pull consumer with up to 1,000 unacknowledged, \
             each publish with a Nats-Msg-Id (the bus's publish de-duplication)"
                .into(),
        );
        notes.push("raw async-nats, plain: the same without Nats-Msg-Id".into());
        if let Some(layout) = &layout {
            notes.push(layout.describe(&opts));
        }
    } else if opts.backend.starts_with("sqlite:") {
        // The raw SQLite baseline has only the publish-then-read shape.
        let mut raw = Series::new("raw SQLite".into());
        meter
            .run(&mut raw, Shape::Backlog, async {
                Ok(Run {
                    rate: sqlite_baseline(&opts).await?,
                    cpu: None,
                })
            })
            .await?;
        series.push(raw);
        notes.push("raw SQLite: inserts (64 rows per statement, a transaction per batch), then reads of the same rows".into());
    }
    let row = |name: &str, live: String, backlog: String| {
        println!("  {name:<26} {live:>28} {backlog:>25}");
    };
    row(
        "msg/s",
        "consuming while publishing".into(),
        "publish all, then drain".into(),
    );
    let f = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
    for s in &series {
        row(&s.name, f(s.rate(Shape::Live)), f(s.rate(Shape::Backlog)));
    }
    for note in &notes {
        println!("  {note}");
    }
    if let Some(pid) = opts.server_pid {
        let both = || "benchmark process / broker".to_owned();
        row("CPU µs per message (median)", both(), both());
        let f = |v: Option<(f64, f64)>| {
            v.map_or_else(
                || "-".to_owned(),
                |(me, server)| format!("{me:.1} / {server:.1}"),
            )
        };
        for s in &series {
            row(&s.name, f(s.cpu(Shape::Live)), f(s.cpu(Shape::Backlog)));
        }
        println!(
            "  broker: pid {pid}; CPU time from /proc over each run's clock (first publish → all handled)"
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
    let keel = &series[0];
    let (k_live, k_backlog) = (
        keel.rate(Shape::Live).unwrap_or(0.0),
        keel.rate(Shape::Backlog).unwrap_or(0.0),
    );
    let mut summary = format!("summary: {} {k_live:.0} msg/s", bus.backend());
    match series.get(1) {
        Some(base) if nats => {
            let (b_live, b_backlog) = (
                base.rate(Shape::Live).unwrap_or(0.0),
                base.rate(Shape::Backlog).unwrap_or(0.0),
            );
            summary.push_str(&format!(
                " vs raw client {b_live:.0} msg/s ({:.2}×) consuming while publishing; backlog {k_backlog:.0} vs {b_backlog:.0} msg/s ({:.2}×)",
                ratio(k_live, b_live),
                ratio(k_backlog, b_backlog)
            ));
            if let Some(plain) = series.get(2) {
                summary.push_str(&format!(
                    "; raw client without de-duplication: {:.2}× and {:.2}×",
                    ratio(k_live, plain.rate(Shape::Live).unwrap_or(0.0)),
                    ratio(k_backlog, plain.rate(Shape::Backlog).unwrap_or(0.0))
                ));
            }
        }
        Some(base) => {
            let b = base.rate(Shape::Backlog).unwrap_or(0.0);
            summary.push_str(&format!(
                " vs baseline {b:.0} msg/s ({:.2}×); backlog {k_backlog:.0} msg/s",
                ratio(k_live, b)
            ));
        }
        None => {}
    }
    summary.push_str(&format!(
        "; p99 {} at {} msg/s",
        ms(lat.percentile(99.0)),
        opts.rate
    ));
    println!("{summary}");
    Ok(())
}

/// One kind of measured run: throughput and CPU use per round, in both shapes.
struct Series {
    name: String,
    /// Per shape (live, backlog): msg/s per round.
    rates: [Vec<f64>; 2],
    /// Per shape: (benchmark process, broker) CPU µs per message per round.
    cpu: [Vec<(f64, f64)>; 2],
}

impl Series {
    fn new(name: String) -> Self {
        Self {
            name,
            rates: Default::default(),
            cpu: Default::default(),
        }
    }

    fn index(shape: Shape) -> usize {
        match shape {
            Shape::Live => 0,
            Shape::Backlog => 1,
        }
    }

    /// The median rate in `shape`, if it was measured.
    fn rate(&self, shape: Shape) -> Option<f64> {
        let mut v = self.rates[Self::index(shape)].clone();
        (!v.is_empty()).then(|| median(&mut v))
    }

    /// The median CPU use per message in `shape`, if it was measured.
    fn cpu(&self, shape: Shape) -> Option<(f64, f64)> {
        let runs = &self.cpu[Self::index(shape)];
        if runs.is_empty() {
            return None;
        }
        let mut me: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let mut server: Vec<f64> = runs.iter().map(|r| r.1).collect();
        Some((median(&mut me), median(&mut server)))
    }
}

/// Measures runs: their rate, and with a broker pid the CPU time per message of this process
/// and of the broker.
struct Meter {
    server: Option<u32>,
    messages: usize,
}

impl Meter {
    /// CPU time used so far by this process and the broker.
    fn now(&self) -> Option<(Duration, Duration)> {
        let server = self.server?;
        Some((cpu_time("self")?, cpu_time(&server.to_string())?))
    }

    /// CPU time used by this process and the broker since `mark` (a reading of [`Meter::now`]).
    fn since(&self, mark: Option<(Duration, Duration)>) -> Option<(Duration, Duration)> {
        let (me0, server0) = mark?;
        let (me1, server1) = self.now()?;
        Some((me1.saturating_sub(me0), server1.saturating_sub(server0)))
    }

    /// Runs `run` and files its rate and CPU use per message under `series`.
    async fn run(
        &self,
        series: &mut Series,
        shape: Shape,
        run: impl std::future::Future<Output = Result<Run, String>>,
    ) -> Result<f64, String> {
        let Run { rate, cpu } = run.await?;
        let i = Series::index(shape);
        series.rates[i].push(rate);
        if let Some((me, server)) = cpu {
            let per = |d: Duration| d.as_secs_f64() * 1e6 / self.messages as f64;
            series.cpu[i].push((per(me), per(server)));
        }
        Ok(rate)
    }
}

/// User plus system CPU time of process `pid` (or `self`), from /proc (Linux; 100 ticks a
/// second).
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command in parentheses: the state (field 3) … utime (14) and stime (15).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
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
    // As the bus does: one transaction per publish batch, up to 64 rows per statement.
    for chunk in msgs.chunks(opts.batch.max(1)) {
        let mut tx = store.begin().await.map_err(|e| e.to_string())?;
        for rows in chunk.chunks(64) {
            let values: Vec<String> = (0..rows.len())
                .map(|r| {
                    let p: Vec<String> = (1..=7).map(|c| format!("${}", r * 7 + c)).collect();
                    format!("({})", p.join(", "))
                })
                .collect();
            let sql = format!(
                "INSERT INTO base (destination, partition, message_id, msg_key, headers, payload, created_at) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for m in rows {
                q = q
                    .bind(&m.destination)
                    .bind(i64::from(m.partition(16)))
                    .bind(&m.id)
                    .bind(m.key.clone())
                    .bind(serde_json::to_string(&m.headers).unwrap_or_default())
                    .bind(serde_json::to_string(&m.payload).unwrap_or_default())
                    .bind(keel_store::now_ms());
            }
            q.execute(tx.conn()).await.map_err(|e| e.to_string())?;
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
/// unacknowledged), in the given shape; with `msg_id`, each publish carries a `Nats-Msg-Id`
/// (made before the clock starts, as the bus's messages are) for the server's de-duplication.
async fn nats_baseline(
    meter: &Meter,
    opts: &Options,
    servers: &str,
    tag: &str,
    shape: Shape,
    msg_id: bool,
) -> Result<Run, String> {
    use async_nats::jetstream::message::PublishMessage;
    use futures::StreamExt;
    let client = async_nats::connect(servers)
        .await
        .map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    let which = if shape == Shape::Live {
        "LIVE"
    } else {
        "BACKLOG"
    };
    let variant = if msg_id { "ID" } else { "PLAIN" };
    let stream_name = format!("BENCH_BASE_{which}_{variant}_{tag}");
    let subject = format!("bench.base.{which}.{variant}.{tag}");
    let ids: Vec<String> = if msg_id {
        (0..opts.messages)
            .map(|_| keel_messaging::new_id())
            .collect()
    } else {
        Vec::new()
    };
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
    let mark = meter.now();
    let start = Instant::now();
    for chunk in (0..opts.messages)
        .collect::<Vec<_>>()
        .chunks(opts.batch.max(1))
    {
        let mut acks = Vec::with_capacity(chunk.len());
        for n in chunk {
            let body = serde_json::to_vec(&payload(*n)).unwrap_or_default();
            let mut publish = PublishMessage::build().payload(body.into());
            if let Some(id) = ids.get(*n) {
                publish = publish.message_id(id);
            }
            let ack = js
                .send_publish(subject.clone(), publish)
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
    let cpu = meter.since(mark);
    let _ = js.delete_stream(&stream_name).await;
    Ok(Run {
        rate: got as f64 / elapsed.as_secs_f64(),
        cpu,
    })
}

/// Deletes the streams the NATS bus created for `dests`.
async fn remove_nats_streams(url: &str, dests: &[String]) {
    let Ok(bus) = keel_bus_nats::NatsBus::connect(url).await else {
        return;
    };
    for dest in dests {
        for p in 0..bus.settings().partitions {
            let _ = bus
                .jetstream()
                .delete_stream(bus.stream_name(dest, p))
                .await;
        }
    }
}

/// The NATS bus's wire layout as the layout baseline reproduces it: the bus's settings from the
/// benchmark's URL, unless `--layout-*` flags change them.
struct Layout {
    /// The server list (the URL without the bus's settings), for the raw clients.
    servers: String,
    partitions: u32,
    max_ack_pending: i64,
    /// The bus's own values, to say when the flags changed them.
    bus_partitions: u32,
    bus_max_ack_pending: i64,
}

impl Layout {
    fn of(opts: &Options) -> Result<Self, String> {
        let (servers, bus) =
            keel_bus_nats::Settings::from_url(&opts.backend, keel_bus_nats::Settings::default())
                .map_err(|e| e.to_string())?;
        let bus_max_ack_pending = bus.max_ack_pending();
        Ok(Self {
            servers,
            partitions: opts.layout_partitions.unwrap_or(bus.partitions).max(1),
            max_ack_pending: opts
                .layout_max_ack_pending
                .unwrap_or(bus_max_ack_pending)
                .max(1),
            bus_partitions: bus.partitions,
            bus_max_ack_pending,
        })
    }

    fn describe(&self, opts: &Options) -> String {
        let changed = !opts.layout_msg_id
            || opts.layout_one_stream
            || self.partitions != self.bus_partitions
            || self.max_ack_pending != self.bus_max_ack_pending;
        format!(
            "raw async-nats, layout: the NATS bus's wire layout — {}, envelope bodies {}, up to {} \
             unacknowledged per partition, acknowledge-all every {LAYOUT_ACK_EVERY}{}",
            if opts.layout_one_stream {
                format!(
                    "one stream, {} partition subjects with a filtered consumer each",
                    self.partitions
                )
            } else if self.partitions == 1 {
                "1 stream".to_owned()
            } else {
                format!("{} partition streams", self.partitions)
            },
            if opts.layout_msg_id {
                "with Nats-Msg-Id"
            } else {
                "without Nats-Msg-Id"
            },
            self.max_ack_pending,
            if changed {
                " (changed from the bus's by --layout-* flags)"
            } else {
                ""
            }
        )
    }
}

/// The bus acknowledges the last handled message every this many (and when it waits).
const LAYOUT_ACK_EVERY: usize = 64;

/// The raw client doing what the NATS bus does on the wire, without Keel: one stream per
/// partition, the envelope as the body with `Nats-Msg-Id`, one durable acknowledge-all
/// consumer per partition with up to 512 unacknowledged messages, acknowledged every 64th
/// and at the last, consuming while publishing. The `layout_*` options vary the last two, and
/// put the partitions on one stream (a subject each, a filtered consumer each), to measure
/// what they cost. The gap between
/// this and the plain baseline is the price of the layout; the gap to Keel's figure is Keel's.
async fn nats_layout_baseline(
    meter: &Meter,
    opts: &Options,
    layout: &Layout,
    tag: &str,
) -> Result<Run, String> {
    use async_nats::jetstream::{
        self,
        consumer::{AckPolicy, pull},
        message::PublishMessage,
    };
    use futures::StreamExt;
    let client = async_nats::connect(&layout.servers)
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(client);
    let partitions = layout.partitions;
    let name = |p: u32| format!("BENCH_LAYOUT_{tag}_{p}");
    let subject = |p: u32| format!("bench.layout.{tag}.{p}");
    let msgs: Vec<Message> = (0..opts.messages)
        .map(|n| {
            Message::new(format!("bench.layout.{tag}"), payload(n)).with_key(format!("k{}", n % 64))
        })
        .collect();
    let streams: Vec<(String, String)> = if opts.layout_one_stream {
        vec![(name(0), format!("bench.layout.{tag}.*"))]
    } else {
        (0..partitions).map(|p| (name(p), subject(p))).collect()
    };
    let mut created = Vec::new();
    for (name, subject) in &streams {
        let stream = js
            .create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        created.push(stream);
    }
    let mut tasks = Vec::new();
    for p in 0..partitions {
        let one = opts.layout_one_stream;
        let consumer = created[if one { 0 } else { p as usize }]
            .create_consumer(pull::Config {
                durable_name: Some(format!("base{p}")),
                filter_subject: if one { subject(p) } else { String::new() },
                ack_policy: AckPolicy::All,
                max_ack_pending: layout.max_ack_pending,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let want = msgs.iter().filter(|m| m.partition(partitions) == p).count();
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
    let mark = meter.now();
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
                .send_publish(subject(m.partition(partitions)), publish)
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
    let cpu = meter.since(mark);
    for (name, _) in &streams {
        let _ = js.delete_stream(name).await;
    }
    Ok(Run {
        rate: got as f64 / elapsed.as_secs_f64(),
        cpu,
    })
}
