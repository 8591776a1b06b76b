//! `keel bench registry`: registers N instances from many concurrent clients while a
//! watcher on `/keel/v1/watch` records when each one is seen; then deregisters some
//! (deregister → removed) and lets others' leases lapse (kill → removed), and reports the
//! registry's memory. The baseline printed beside it is a bare HTTP round trip to the same
//! registry in the same run — the floor any registration-visibility figure stands on.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use keel_eureka::{Instance, InstanceEnvelope, LeaseInfo};
use serde::Deserialize;

use crate::stats::{Samples, ms};

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct Options {
    /// Instances to register.
    pub instances: usize,
    /// Concurrent registering clients.
    pub clients: usize,
    /// Instances killed (heartbeats stopped) to measure lease expiry.
    pub killed: usize,
    /// An already running registry; when `None`, one is started from `self_exe`.
    pub registry: Option<String>,
    /// The `keel` executable (to start the registry).
    pub self_exe: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Change {
    action: String,
    instance_id: String,
}

type Seen = Arc<Mutex<HashMap<(String, String), Instant>>>;

/// Runs the benchmark and prints its report. Returns an error message on failure.
pub async fn run(opts: Options) -> Result<(), String> {
    let mut child = None;
    let (base, pid) = match &opts.registry {
        Some(url) => (url.trim_end_matches('/').to_owned(), None),
        None => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| e.to_string())?
                .port();
            let c = tokio::process::Command::new(&opts.self_exe)
                .args(["registry", "--listen", &format!("127.0.0.1:{port}")])
                .args(["--set", "app.eviction_interval_ms=250"])
                .env("KEEL_LOG", "warn")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start the registry: {e}"))?;
            let pid = c.id();
            child = Some(c);
            (format!("http://127.0.0.1:{port}"), pid)
        }
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.clients.max(1))
        .build()
        .map_err(|e| e.to_string())?;
    wait_ready(&http, &base).await?;
    let rss_idle = pid.and_then(rss_bytes);

    // The watcher.
    let seen: Seen = Arc::default();
    let watcher = tokio::spawn(watch(http.clone(), base.clone(), seen.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Baseline: bare round trips to the same server.
    let mut floor = Samples::default();
    for _ in 0..2_000 {
        let t = Instant::now();
        http.get(format!("{base}/health/live"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        floor.push(t.elapsed());
    }

    println!(
        "keel bench registry: {} instances from {} clients against {base}",
        opts.instances, opts.clients
    );

    // Registrations.
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    let per_client = opts.instances.div_ceil(opts.clients.max(1));
    let mut tasks = Vec::new();
    for c in 0..opts.clients.max(1) {
        let http = http.clone();
        let base = base.clone();
        let sent = sent.clone();
        let from = c * per_client;
        let to = ((c + 1) * per_client).min(opts.instances);
        tasks.push(tokio::spawn(async move {
            for n in from..to {
                let id = format!("bench-{n}");
                let app = format!("BENCH{}", n % 100);
                let mut i = Instance::new(&app, &id, "10.0.0.1", 8000 + (n % 1000) as u16);
                i.lease_info = LeaseInfo {
                    renewal_interval_in_secs: 1,
                    duration_in_secs: 2,
                    ..LeaseInfo::default()
                };
                i.metadata.insert("version".into(), "1.0.0".into());
                i.metadata.insert("zone".into(), format!("zone-{}", n % 3));
                let t = Instant::now();
                sent.lock().map(|mut s| s.insert(id.clone(), t)).ok();
                let res = http
                    .post(format!("{base}/eureka/apps/{app}"))
                    .json(&InstanceEnvelope { instance: i })
                    .send()
                    .await;
                if !res.is_ok_and(|r| r.status().as_u16() == 204) {
                    return Err(format!("registration of {id} failed"));
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let reg_elapsed = started.elapsed();
    wait_until(&seen, "ADDED", opts.instances).await;
    let reg = latencies(&sent, &seen, "ADDED");
    let rss_full = pid.and_then(rss_bytes);

    // Deregister a slice: deregister → removed.
    let graceful = (opts.instances / 10).max(1);
    let dsent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    for n in 0..graceful {
        let id = format!("bench-{n}");
        let app = format!("BENCH{}", n % 100);
        dsent
            .lock()
            .map(|mut s| s.insert(id.clone(), Instant::now()))
            .ok();
        http.delete(format!("{base}/eureka/apps/{app}/{id}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
    }
    wait_until(&seen, "DELETED", graceful).await;
    let dereg = latencies(&dsent, &seen, "DELETED");

    // Keep the rest alive except `killed` instances, whose heartbeats stop now.
    let killed_from = graceful;
    let killed_to = (graceful + opts.killed).min(opts.instances);
    let kill_time = Instant::now();
    let alive: Vec<usize> = (killed_to..opts.instances).collect();
    let keepalive = {
        let http = http.clone();
        let base = base.clone();
        tokio::spawn(async move {
            loop {
                let batch = futures::future::join_all(alive.iter().map(|n| {
                    let app = format!("BENCH{}", n % 100);
                    http.put(format!("{base}/eureka/apps/{app}/bench-{n}?status=UP"))
                        .send()
                }));
                let _ = batch.await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let before = count(&seen, "DELETED");
    wait_until(&seen, "DELETED", before + (killed_to - killed_from)).await;
    keepalive.abort();
    let mut expiry = Samples::default();
    if let Ok(s) = seen.lock() {
        for n in killed_from..killed_to {
            if let Some(t) = s.get(&("DELETED".to_owned(), format!("bench-{n}"))) {
                expiry.push(t.duration_since(kill_time));
            }
        }
    }
    watcher.abort();

    let reg_rate = opts.instances as f64 / reg_elapsed.as_secs_f64();
    println!("  register → seen by a watcher    {}", reg.summary());
    println!("  deregister → removed (watcher)  {}", dereg.summary());
    println!("  kill → removed (lease 2 s)      {}", expiry.summary());
    println!("  registrations/s                 {reg_rate:.0}");
    println!("  baseline: HTTP round trip       {}", floor.summary());
    if let (Some(idle), Some(full)) = (rss_idle, rss_full) {
        println!(
            "  registry RSS                    {:.1} MiB idle → {:.1} MiB with {} instances ({:.2} KiB per instance)",
            mib(idle),
            mib(full),
            opts.instances,
            (full.saturating_sub(idle)) as f64 / 1024.0 / opts.instances as f64
        );
    }
    let p99 = reg.percentile(99.0);
    let ratio = p99.as_secs_f64() / floor.percentile(99.0).as_secs_f64().max(1e-9);
    println!(
        "summary: register→seen p99 {} ({:.1}× the HTTP round-trip p99 of {}); deregister→removed p99 {}; RSS {} at {} instances",
        ms(p99),
        ratio,
        ms(floor.percentile(99.0)),
        ms(dereg.percentile(99.0)),
        rss_full
            .map(|b| format!("{:.1} MiB", mib(b)))
            .unwrap_or_else(|| "n/a (external registry)".into()),
        opts.instances
    );
    drop(child);
    Ok(())
}

fn mib(b: u64) -> f64 {
    b as f64 / 1024.0 / 1024.0
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

async fn wait_ready(http: &reqwest::Client, base: &str) -> Result<(), String> {
    for _ in 0..200 {
        if http
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("registry at {base} did not become ready"))
}

async fn watch(http: reqwest::Client, base: String, seen: Seen) {
    let Ok(mut res) = http.get(format!("{base}/keel/v1/watch")).send().await else {
        return;
    };
    let mut buf = String::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        let now = Instant::now();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if !block.contains("event: change") {
                continue;
            }
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.trim_start())
                .collect();
            if let Ok(c) = serde_json::from_str::<Change>(&data)
                && let Ok(mut s) = seen.lock()
            {
                s.entry((c.action, c.instance_id)).or_insert(now);
            }
        }
    }
}

fn count(seen: &Seen, action: &str) -> usize {
    seen.lock()
        .map(|s| s.keys().filter(|(a, _)| a == action).count())
        .unwrap_or(0)
}

async fn wait_until(seen: &Seen, action: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(seen, action) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn latencies(sent: &Mutex<HashMap<String, Instant>>, seen: &Seen, action: &str) -> Samples {
    let mut out = Samples::default();
    let (Ok(sent), Ok(seen)) = (sent.lock(), seen.lock()) else {
        return out;
    };
    for (id, t) in sent.iter() {
        if let Some(s) = seen.get(&(action.to_owned(), id.clone())) {
            out.push(s.saturating_duration_since(*t));
        }
    }
    out
}
