//! `keel load`: places orders through the gateway at a fixed rate (open loop: the schedule
//! does not wait for answers) for a bounded time or count, follows each order to a terminal
//! state, and reports placed / approved / rejected / failed, order → terminal latency and any
//! order not terminal.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rand::Rng;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::{
    client::{Systems, retrying_post},
    progress::Progress,
};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The gateway's base URL; orders are placed through it.
    pub gateway: String,
    /// The registry's base URL; order states are read from the order service directly so
    /// polling does not run the gateway's composed view.
    pub registry: String,
    /// Orders per second.
    pub rate: f64,
    /// How long to place orders.
    pub duration: Duration,
    /// Stop after this many orders (before `duration` if it comes first).
    pub count: Option<u64>,
    /// How many consumers the orders are spread over.
    pub consumers: usize,
    /// Percent of orders placed by a consumer whose card is declined (they end `REJECTED`).
    pub declined_percent: u32,
    /// How long to wait, after the last order was placed, for orders to become terminal.
    pub settle: Duration,
    /// Draw a progress line on standard error (when it is a terminal).
    pub progress: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            gateway: "http://127.0.0.1:8080".into(),
            registry: "http://127.0.0.1:8761".into(),
            rate: 50.0,
            duration: Duration::from_secs(60),
            count: None,
            consumers: 10,
            declined_percent: 0,
            settle: Duration::from_secs(30),
            progress: true,
        }
    }
}

impl LoadOptions {
    /// Checks the numbers; the error names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 100_000.0) {
            return Err(format!("--rate must be in (0, 100000], got {}", self.rate));
        }
        if self.duration.is_zero() && self.count.is_none() {
            return Err("--duration must be positive (or give --count)".into());
        }
        if self.count == Some(0) {
            return Err("--count must be at least 1".into());
        }
        if !(1..=10_000).contains(&self.consumers) {
            return Err(format!(
                "--consumers must be in 1..=10000, got {}",
                self.consumers
            ));
        }
        if self.declined_percent > 100 {
            return Err(format!(
                "--declined-percent must be in 0..=100, got {}",
                self.declined_percent
            ));
        }
        Ok(())
    }

    /// How many orders the run places.
    pub fn total(&self) -> u64 {
        let by_time = (self.rate * self.duration.as_secs_f64()).round() as u64;
        match self.count {
            Some(c) if self.duration.is_zero() => c,
            Some(c) => c.min(by_time.max(1)),
            None => by_time.max(1),
        }
    }
}

/// Consumers and a restaurant created for a run, so its orders meet no limits or stock.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Consumers with a good card.
    pub consumers: Vec<String>,
    /// A consumer whose card is declined.
    pub declined: String,
    /// The restaurant.
    pub restaurant: String,
    /// Its stocked item's id and starting stock.
    pub stocked_item: (String, u64),
    /// Its unlimited item's id.
    pub unlimited_item: String,
    /// Units of the stocked item taken by the approved warm-up order (not in any report).
    pub warm_up_units: u64,
    /// The approved warm-up order.
    pub warm_up_order: Option<String>,
}

/// The stock the run's restaurant starts with.
pub const STARTING_STOCK: u64 = 10_000_000;

/// Creates the run's consumers and restaurant through the gateway and waits until an order
/// of theirs can be approved (accounts opened, the restaurant replicated to order).
pub async fn prepare(systems: &Systems, consumers: usize) -> Result<Fixture, String> {
    let gw = &systems.gateway;
    let run = format!("{:06x}", rand::rng().random::<u32>() & 0xff_ffff);
    let mut ids = Vec::with_capacity(consumers);
    for i in 0..consumers {
        let v = retrying_post(
            &systems.http,
            &format!("{gw}/consumers"),
            &json!({"name": format!("load-{run}-{i}"), "orderLimit": "1000000.00", "card": "4242424242424242"}),
            Duration::from_secs(20),
        )
        .await?;
        ids.push(field(&v, "consumerId")?);
    }
    let declined = field(
        &retrying_post(
            &systems.http,
            &format!("{gw}/consumers"),
            &json!({"name": format!("load-{run}-declined"), "orderLimit": "1000000.00", "card": "4000000000000002"}),
            Duration::from_secs(20),
        )
        .await?,
        "consumerId",
    )?;
    let restaurant = field(
        &retrying_post(
            &systems.http,
            &format!("{gw}/restaurants"),
            &json!({"name": format!("Load Kitchen {run}"), "menu": [
                {"id": "bowl", "name": "Rice Bowl", "price": "10.00", "stock": STARTING_STOCK},
                {"id": "tea", "name": "Green Tea", "price": "2.50"}
            ]}),
            Duration::from_secs(20),
        )
        .await?,
        "restaurantId",
    )?;
    let mut fixture = Fixture {
        consumers: ids,
        declined,
        restaurant,
        stocked_item: ("bowl".into(), STARTING_STOCK),
        unlimited_item: "tea".into(),
        warm_up_units: 0,
        warm_up_order: None,
    };
    fixture.warm_up_order = Some(warm_up(systems, &fixture).await?);
    fixture.warm_up_units = 1;
    Ok(fixture)
}

fn field(v: &Value, name: &str) -> Result<String, String> {
    v[name]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("the answer has no {name}: {v}"))
}

/// Places orders of the last consumer until one is approved: then accounting knows the
/// consumers and order's replica knows the restaurant. The warm-up orders are not counted;
/// the approved one's id is returned.
async fn warm_up(systems: &Systems, f: &Fixture) -> Result<String, String> {
    let start = Instant::now();
    let consumer = f.consumers.last().cloned().unwrap_or_default();
    loop {
        let order = order_body(&consumer, f, 1, false);
        let id = match place(systems, &order).await {
            Ok(id) => id,
            // The order service's replica has not learnt the restaurant yet.
            Err(e) if e.contains("422") && e.contains("restaurantId") => {
                if start.elapsed() > Duration::from_secs(30) {
                    return Err(e);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let (state, reason) = systems
            .wait_terminal(&id, Instant::now() + Duration::from_secs(20))
            .await?;
        if state == "APPROVED" {
            return Ok(id);
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "warm-up order {id} ended {state} ({}) — is the system healthy?",
                reason.unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn order_body(consumer: &str, f: &Fixture, quantity: u32, tea: bool) -> Value {
    let mut items = vec![json!({"menuItemId": f.stocked_item.0, "quantity": quantity})];
    if tea {
        items.push(json!({"menuItemId": f.unlimited_item, "quantity": 1}));
    }
    json!({"consumerId": consumer, "restaurantId": f.restaurant, "lineItems": items})
}

/// POST /orders through the gateway (retried while the gateway or order service is down:
/// a refused connection or a 502/503/504 answer); the new order's id.
async fn place(systems: &Systems, body: &Value) -> Result<String, String> {
    let v = retrying_post(
        &systems.http,
        &format!("{}/orders", systems.gateway),
        body,
        Duration::from_secs(15),
    )
    .await?;
    field(&v, "orderId")
}

/// What became of one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `APPROVED`.
    Approved,
    /// `REJECTED`, with the reason.
    Rejected(String),
    /// Not terminal when the run gave up waiting; the last state seen.
    NotTerminal(String),
    /// Never placed: the error.
    Failed(String),
}

/// One order of a run.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    /// The order id (none when placing failed).
    pub id: Option<String>,
    /// The consumer who placed it.
    pub consumer: String,
    /// Units of the stocked item.
    pub quantity: u32,
    /// What became of it.
    pub outcome: Outcome,
    /// From sending POST /orders to seeing the terminal state.
    pub latency: Option<Duration>,
}

/// A run's result.
#[derive(Debug, Clone)]
pub struct Report {
    /// Target rate (orders/s).
    pub rate: f64,
    /// Orders scheduled.
    pub scheduled: u64,
    /// Orders the gateway accepted (201).
    pub placed: u64,
    /// Approved.
    pub approved: u64,
    /// Rejected, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Never placed.
    pub failed: u64,
    /// Placed, but not terminal when the run stopped waiting.
    pub not_terminal: Vec<String>,
    /// The rate at which orders were actually sent.
    pub achieved_rate: f64,
    /// Order → terminal latency percentiles (p50, p90, p99, max) over terminal orders.
    pub latency: Option<[Duration; 4]>,
    /// The first few placement errors.
    pub errors: Vec<String>,
    /// Every order.
    pub orders: Vec<OrderRecord>,
}

impl Report {
    /// No failure and every placed order terminal.
    pub fn clean(&self) -> bool {
        self.failed == 0 && self.not_terminal.is_empty()
    }

    fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rate      {:.0}/s target, {:.1}/s sent",
            self.rate, self.achieved_rate
        )?;
        writeln!(
            f,
            "orders    {} scheduled, {} placed, {} approved, {} rejected, {} failed",
            self.scheduled,
            self.placed,
            self.approved,
            self.rejected_total(),
            self.failed
        )?;
        for (reason, n) in &self.rejected {
            writeln!(f, "          rejected {reason}: {n}")?;
        }
        match self.latency {
            Some([p50, p90, p99, max]) => writeln!(
                f,
                "latency   order → terminal p50 {}  p90 {}  p99 {}  max {}  (polled every {} ms for the first 50 ms, then every tenth of the order's age)",
                ms(p50),
                ms(p90),
                ms(p99),
                ms(max),
                POLL.as_millis()
            )?,
            None => writeln!(f, "latency   no order reached a terminal state")?,
        }
        if self.not_terminal.is_empty() {
            writeln!(f, "pending   none: every placed order is terminal")?;
        } else {
            writeln!(
                f,
                "pending   {} orders not terminal: {}",
                self.not_terminal.len(),
                self.not_terminal
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
        }
        for e in &self.errors {
            writeln!(f, "error     {e}")?;
        }
        Ok(())
    }
}

/// How often a placed order's state is read.
pub const POLL: Duration = Duration::from_millis(5);

/// Runs one load run against a prepared fixture.
pub async fn run_with(
    systems: &Systems,
    fixture: &Fixture,
    options: &LoadOptions,
) -> Result<Report, String> {
    options.validate()?;
    let total = options.total();
    let progress = Progress::new(total, options.progress);
    let counters = progress.counters();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / options.rate);
    let mut tasks = JoinSet::new();
    let ticker = progress.start();
    for i in 0..total {
        tokio::time::sleep_until((start + interval.mul_f64(i as f64)).into()).await;
        let (quantity, tea, consumer) = {
            let mut rng = rand::rng();
            let declined = rng.random_range(0..100) < options.declined_percent;
            let consumer = if declined {
                fixture.declined.clone()
            } else {
                fixture.consumers[i as usize % fixture.consumers.len()].clone()
            };
            (rng.random_range(1..=3), rng.random_bool(0.5), consumer)
        };
        let body = order_body(&consumer, fixture, quantity, tea);
        let systems = systems.clone();
        let counters = counters.clone();
        let errors = errors.clone();
        let sent = sent.clone();
        let settle = options.settle;
        tasks.spawn(async move {
            sent.fetch_add(1, Ordering::Relaxed);
            let began = Instant::now();
            let mut record = OrderRecord {
                id: None,
                consumer,
                quantity,
                outcome: Outcome::Failed(String::new()),
                latency: None,
            };
            match place(&systems, &body).await {
                Err(e) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    let mut errs = errors.lock().unwrap_or_else(|p| p.into_inner());
                    if errs.len() < 5 {
                        errs.push(e.clone());
                    }
                    record.outcome = Outcome::Failed(e);
                }
                Ok(id) => {
                    counters.placed.fetch_add(1, Ordering::Relaxed);
                    // Orders placed last get `settle` after the schedule ends, at least.
                    let deadline = Instant::now() + settle;
                    match systems.wait_terminal(&id, deadline).await {
                        Ok((state, _)) if state == "APPROVED" => {
                            counters.approved.fetch_add(1, Ordering::Relaxed);
                            record.outcome = Outcome::Approved;
                            record.latency = Some(began.elapsed());
                        }
                        Ok((state, reason)) if state == "REJECTED" => {
                            counters.rejected.fetch_add(1, Ordering::Relaxed);
                            record.outcome = Outcome::Rejected(reason.unwrap_or_default());
                            record.latency = Some(began.elapsed());
                        }
                        Ok((state, _)) | Err(state) => {
                            record.outcome = Outcome::NotTerminal(state);
                        }
                    }
                    record.id = Some(id);
                }
            }
            record
        });
    }
    let schedule_took = start.elapsed();
    let mut orders = Vec::with_capacity(total as usize);
    while let Some(r) = tasks.join_next().await {
        orders.push(r.map_err(|e| format!("an order task failed: {e}"))?);
    }
    ticker.finish();
    Ok(summarize(
        options.rate,
        total,
        schedule_took,
        sent.load(Ordering::Relaxed),
        orders,
        errors,
    ))
}

fn summarize(
    rate: f64,
    scheduled: u64,
    took: Duration,
    sent: u64,
    orders: Vec<OrderRecord>,
    errors: Arc<Mutex<Vec<String>>>,
) -> Report {
    let mut latencies: Vec<Duration> = orders.iter().filter_map(|o| o.latency).collect();
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    let latency = (!latencies.is_empty()).then(|| [pct(0.50), pct(0.90), pct(0.99), pct(1.0)]);
    let mut rejected = BTreeMap::new();
    let mut not_terminal = Vec::new();
    let (mut placed, mut approved, mut failed) = (0, 0, 0);
    for o in &orders {
        match &o.outcome {
            Outcome::Approved => approved += 1,
            Outcome::Rejected(r) => *rejected.entry(r.clone()).or_insert(0) += 1,
            Outcome::NotTerminal(state) => {
                not_terminal.push(format!("{} ({state})", o.id.as_deref().unwrap_or("?")));
            }
            Outcome::Failed(_) => failed += 1,
        }
        if o.id.is_some() {
            placed += 1;
        }
    }
    let achieved_rate = if took.as_secs_f64() > 0.0 {
        sent as f64 / took.as_secs_f64().max(1.0 / rate)
    } else {
        0.0
    };
    let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Report {
        rate,
        scheduled,
        placed,
        approved,
        rejected,
        failed,
        not_terminal,
        achieved_rate,
        latency,
        errors,
        orders,
    }
}

/// Prepares a fixture and runs one load run per rate in `rates` (one rate: a plain run);
/// with several, prints a table and the saturation rate: the highest rate sent in full with
/// no failure, every order terminal and p99 ≤ `p99_target`.
pub async fn run(
    options: LoadOptions,
    rates: &[f64],
    p99_target: Duration,
) -> Result<Vec<Report>, String> {
    options.validate()?;
    let systems = Systems::connect(&options.gateway, &options.registry).await?;
    eprintln!(
        "preparing: {} consumers and a restaurant",
        options.consumers
    );
    let fixture = prepare(&systems, options.consumers).await?;
    let rates = if rates.is_empty() {
        vec![options.rate]
    } else {
        rates.to_vec()
    };
    let mut reports = Vec::new();
    for rate in &rates {
        let opts = LoadOptions {
            rate: *rate,
            ..options.clone()
        };
        opts.validate()?;
        eprintln!(
            "load: {} orders at {rate}/s through {}",
            opts.total(),
            opts.gateway
        );
        let report = run_with(&systems, &fixture, &opts).await?;
        println!("{report}");
        reports.push(report);
    }
    if reports.len() > 1 {
        println!("{}", saturation_table(&reports, p99_target));
    }
    Ok(reports)
}

/// Whether a step counts as sustained.
pub fn sustained(r: &Report, p99_target: Duration) -> bool {
    r.clean() && r.achieved_rate >= r.rate * 0.95 && r.latency.is_some_and(|l| l[2] <= p99_target)
}

fn saturation_table(reports: &[Report], p99_target: Duration) -> String {
    let mut out = String::from("rate/s  sent/s  approved  failed  pending  p99        sustained\n");
    for r in reports {
        out.push_str(&format!(
            "{:>6.0}  {:>6.1}  {:>8}  {:>6}  {:>7}  {:>9}  {}\n",
            r.rate,
            r.achieved_rate,
            r.approved,
            r.failed,
            r.not_terminal.len(),
            r.latency.map_or("-".into(), |l| ms(l[2])),
            if sustained(r, p99_target) {
                "yes"
            } else {
                "no"
            }
        ));
    }
    let best = reports
        .iter()
        .filter(|r| sustained(r, p99_target))
        .map(|r| r.rate)
        .fold(None, |a: Option<f64>, r| Some(a.map_or(r, |a| a.max(r))));
    match best {
        Some(rate) => out.push_str(&format!(
            "saturation: {rate:.0} orders/s is the highest rate sustained (p99 ≤ {})",
            ms(p99_target)
        )),
        None => out.push_str(&format!(
            "saturation: no rate was sustained (p99 ≤ {})",
            ms(p99_target)
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(outcome: Outcome, latency_ms: Option<u64>) -> OrderRecord {
        OrderRecord {
            id: Some("o".into()),
            consumer: "c".into(),
            quantity: 1,
            outcome,
            latency: latency_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn options_are_checked_and_name_the_flag() {
        let ok = LoadOptions::default();
        assert!(ok.validate().is_ok());
        assert_eq!(ok.total(), 3000);
        let bad = LoadOptions {
            rate: 0.0,
            ..ok.clone()
        };
        assert!(bad.validate().unwrap_err().contains("--rate"));
        let bad = LoadOptions {
            declined_percent: 101,
            ..ok.clone()
        };
        assert!(bad.validate().unwrap_err().contains("--declined-percent"));
        let counted = LoadOptions {
            count: Some(7),
            ..ok
        };
        assert_eq!(counted.total(), 7);
    }

    #[test]
    fn the_summary_counts_outcomes_and_takes_percentiles_of_terminal_orders() {
        let mut orders: Vec<OrderRecord> = (1..=100)
            .map(|i| record(Outcome::Approved, Some(i)))
            .collect();
        orders.push(record(
            Outcome::Rejected("PAYMENT_DECLINED".into()),
            Some(500),
        ));
        orders.push(record(
            Outcome::NotTerminal("APPROVAL_PENDING".into()),
            None,
        ));
        orders.push(OrderRecord {
            id: None,
            ..record(Outcome::Failed("503".into()), None)
        });
        let r = summarize(
            50.0,
            103,
            Duration::from_secs(2),
            103,
            orders,
            Arc::default(),
        );
        assert_eq!((r.placed, r.approved, r.failed), (102, 100, 1));
        assert_eq!(r.rejected["PAYMENT_DECLINED"], 1);
        assert_eq!(r.not_terminal.len(), 1);
        let [p50, _, p99, max] = r.latency.unwrap();
        assert_eq!(p50, Duration::from_millis(51));
        assert_eq!(p99, Duration::from_millis(100));
        assert_eq!(max, Duration::from_millis(500));
        assert!(!r.clean());
        assert!(!sustained(&r, Duration::from_millis(100)));
        let table = saturation_table(&[r], Duration::from_millis(100));
        assert!(table.contains("no rate was sustained"), "{table}");
    }
}
