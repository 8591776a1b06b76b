//! `keel chaos`: a load run while service processes of a running `keel up` are killed with
//! SIGKILL every few seconds (the supervisor restarts them) and payment networks are made to
//! fail and stall; then the faults stop, the system is given time to settle, and the
//! invariants are checked ([`crate::invariants`]).

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};
use rand::{Rng, seq::IndexedRandom};
use serde_json::json;
use tokio_util_lite::Stop;

use crate::{
    client::Systems,
    invariants::{self, Violation},
    load::{self, LoadOptions, Report},
};

/// The services `keel chaos` kills by default (`keel up`'s process names).
pub const DEFAULT_TARGETS: &[&str] = &[
    "consumer",
    "restaurant",
    "order",
    "kitchen",
    "accounting",
    "delivery",
    "history",
    "van-a",
    "van-b",
];

/// The payment networks faults are injected into.
pub const NETWORKS: &[&str] = &["van-a", "van-b"];

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The load run under the faults.
    pub load: LoadOptions,
    /// `keel up`'s data directory: only processes started with it are killed.
    pub data_dir: PathBuf,
    /// Kill one process this often.
    pub kill_every: Duration,
    /// Process names that may be killed.
    pub targets: Vec<String>,
    /// Inject payment-network faults (error bursts and latency above accounting's timeout).
    pub network_faults: bool,
}

/// What happened.
#[derive(Debug)]
pub struct ChaosReport {
    /// The load run.
    pub load: Report,
    /// Every kill: (seconds into the run, process name, pid).
    pub kills: Vec<(f64, String, i32)>,
    /// Every fault injected: (seconds into the run, description).
    pub faults: Vec<(f64, String)>,
    /// Invariants that do not hold (empty: all hold).
    pub violations: Vec<Violation>,
    /// How many orders the invariant check covered.
    pub checked: usize,
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.load)?;
        writeln!(f, "kills     {}", self.kills.len())?;
        for (t, name, pid) in &self.kills {
            writeln!(f, "          {t:>6.1}s  kill -9 {name} (pid {pid})")?;
        }
        writeln!(f, "faults    {}", self.faults.len())?;
        for (t, what) in &self.faults {
            writeln!(f, "          {t:>6.1}s  {what}")?;
        }
        if self.violations.is_empty() {
            writeln!(
                f,
                "invariants hold for all {} orders: every order terminal, none authorized twice, stock and accounts consistent, history equal to the services",
                self.checked
            )
        } else {
            writeln!(f, "invariants VIOLATED ({}):", self.violations.len())?;
            for v in self.violations.iter().take(50) {
                writeln!(f, "          {v}")?;
            }
            Ok(())
        }
    }
}

/// A running `keel up` child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// Its process name in the topology.
    pub name: String,
    /// Its pid.
    pub pid: i32,
}

/// The `keel service …` processes started with `data_dir` as `KEEL_DATA_DIR`, named as in
/// the topology (`order`, `van-a`, …), read from `/proc`.
pub fn children(data_dir: &Path) -> Vec<Child> {
    let want = fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some(name) = service_name(&args) else {
            continue;
        };
        let Ok(environ) = fs::read(e.path().join("environ")) else {
            continue;
        };
        let dir = environ
            .split(|b| *b == 0)
            .filter_map(|kv| kv.strip_prefix(b"KEEL_DATA_DIR="))
            .map(|v| PathBuf::from(String::from_utf8_lossy(v).into_owned()))
            .next();
        if dir.is_some_and(|d| fs::canonicalize(&d).unwrap_or(d) == want) {
            out.push((Child { name, pid }, parent_pid(pid)));
        }
    }
    // A process forked by a match and not yet exec'd has the same command line and
    // environment for a moment: it is part of that service, not another one.
    let pids: Vec<i32> = out.iter().map(|(c, _)| c.pid).collect();
    let mut out: Vec<Child> = out
        .into_iter()
        .filter(|(_, parent)| !parent.is_some_and(|p| pids.contains(&p)))
        .map(|(c, _)| c)
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.pid.cmp(&b.pid)));
    out
}

/// The parent of `pid`, from `/proc/<pid>/stat` (the field after the command name, which
/// may itself contain spaces and parentheses).
fn parent_pid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `keel service order …` → `order`; `keel service van --set app.network=van-a …` → `van-a`.
fn service_name(args: &[String]) -> Option<String> {
    let at = args.iter().position(|a| a == "service")?;
    let name = args.get(at + 1)?;
    if name.starts_with('-') {
        return None;
    }
    let network = args
        .iter()
        .find_map(|a| a.strip_prefix("app.network="))
        .map(str::to_owned);
    Some(network.unwrap_or_else(|| name.clone()))
}

/// Runs chaos: load, kills and faults, then settle and the invariant check.
pub async fn run(options: ChaosOptions) -> Result<ChaosReport, String> {
    options.load.validate()?;
    if options.kill_every.is_zero() {
        return Err("--kill-every must be positive".into());
    }
    let found = children(&options.data_dir);
    if !options
        .targets
        .iter()
        .any(|t| found.iter().any(|c| &c.name == t))
    {
        return Err(format!(
            "no process to kill: none of {:?} runs with KEEL_DATA_DIR={} (is `keel up --data-dir {}` running?)",
            options.targets,
            options.data_dir.display(),
            options.data_dir.display()
        ));
    }
    let systems = Systems::connect(&options.load.gateway, &options.load.registry).await?;
    eprintln!(
        "preparing: {} consumers and a restaurant",
        options.load.consumers
    );
    let fixture = load::prepare(&systems, options.load.consumers).await?;
    let started = Instant::now();
    let kills: Arc<Mutex<Vec<(f64, String, i32)>>> = Arc::default();
    let faults: Arc<Mutex<Vec<(f64, String)>>> = Arc::default();
    let stop = Stop::default();
    let killer = tokio::spawn(kill_loop(
        options.clone(),
        started,
        kills.clone(),
        stop.clone(),
    ));
    let injector = options.network_faults.then(|| {
        tokio::spawn(fault_loop(
            systems.clone(),
            started,
            faults.clone(),
            stop.clone(),
        ))
    });
    eprintln!(
        "chaos: {} orders at {}/s; kill -9 one of {:?} every {:?}{}",
        options.load.total(),
        options.load.rate,
        options.targets,
        options.kill_every,
        if options.network_faults {
            "; payment-network faults"
        } else {
            ""
        }
    );
    let report = load::run_with(&systems, &fixture, &options.load).await;
    stop.stop();
    let _ = killer.await;
    if let Some(i) = injector {
        let _ = i.await;
    }
    clear_faults(&systems).await;
    let report = report?;
    eprintln!("settling: waiting for every service to be back and caught up");
    let (violations, checked) = invariants::check(&systems, &fixture, &report).await;
    let kills = kills.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let faults = faults.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(ChaosReport {
        load: report,
        kills,
        faults,
        violations,
        checked,
    })
}

async fn kill_loop(
    options: ChaosOptions,
    started: Instant,
    kills: Arc<Mutex<Vec<(f64, String, i32)>>>,
    stop: Stop,
) {
    loop {
        if stop.wait(options.kill_every).await {
            return;
        }
        let candidates: Vec<Child> = children(&options.data_dir)
            .into_iter()
            .filter(|c| options.targets.contains(&c.name))
            .collect();
        let Some(victim) = candidates.choose(&mut rand::rng()).cloned() else {
            continue;
        };
        if signal::kill(Pid::from_raw(victim.pid), signal::Signal::SIGKILL).is_ok() {
            let t = started.elapsed().as_secs_f64();
            eprintln!(
                "\nchaos: {t:.1}s kill -9 {} (pid {})",
                victim.name, victim.pid
            );
            kills
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((t, victim.name, victim.pid));
        }
    }
}

/// Alternates: a burst of errors on one network, a stall (latency above accounting's
/// timeout, so outcomes are unknown and must be voided), then calm.
async fn fault_loop(
    systems: Systems,
    started: Instant,
    faults: Arc<Mutex<Vec<(f64, String)>>>,
    stop: Stop,
) {
    let mut round = 0u32;
    loop {
        if stop.wait(Duration::from_secs(4)).await {
            return;
        }
        let network = NETWORKS[(round as usize / 2) % NETWORKS.len()];
        let (body, what) = match round % 3 {
            0 => (
                json!({"errorRate": 0.6, "latencyMs": 0}),
                format!("{network}: 60% errors"),
            ),
            1 => {
                // Above accounting's default 2 s timeout: outcomes become unknown and must
                // be voided before another network is tried.
                let latency = rand::rng().random_range(2500..4000);
                (
                    json!({"errorRate": 0.0, "latencyMs": latency}),
                    format!("{network}: {latency} ms latency"),
                )
            }
            _ => (
                json!({"errorRate": 0.0, "latencyMs": 0}),
                format!("{network}: calm"),
            ),
        };
        round += 1;
        if set_faults(&systems, network, &body).await.is_ok() {
            faults
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((started.elapsed().as_secs_f64(), what));
        }
    }
}

async fn set_faults(
    systems: &Systems,
    network: &str,
    body: &serde_json::Value,
) -> Result<(), String> {
    let base = systems.service(network, Duration::from_secs(2)).await?;
    let r = systems
        .http
        .put(format!("{base}/admin/faults"))
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("PUT {network}/admin/faults: {}", r.status()))
    }
}

/// Turns every network's faults off (retrying while a network restarts).
async fn clear_faults(systems: &Systems) {
    for network in NETWORKS {
        let deadline = Instant::now() + Duration::from_secs(20);
        while set_faults(systems, network, &json!({"errorRate": 0.0, "latencyMs": 0}))
            .await
            .is_err()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A small stop signal: `wait` sleeps unless stopped first.
mod tokio_util_lite {
    use std::time::Duration;

    use tokio::sync::watch;

    #[derive(Debug, Clone)]
    pub(super) struct Stop(watch::Sender<bool>);

    impl Default for Stop {
        fn default() -> Self {
            Self(watch::channel(false).0)
        }
    }

    impl Stop {
        pub(super) fn stop(&self) {
            self.0.send_replace(true);
        }

        /// Sleeps for `d`; true when stopped (before or meanwhile).
        pub(super) async fn wait(&self, d: Duration) -> bool {
            let mut rx = self.0.subscribe();
            if *rx.borrow() {
                return true;
            }
            tokio::select! {
                _ = rx.wait_for(|s| *s) => true,
                _ = tokio::time::sleep(d) => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn service_processes_are_named_as_in_the_topology() {
        assert_eq!(
            service_name(&args("/x/keel service order --listen 127.0.0.1:8103")),
            Some("order".into())
        );
        assert_eq!(
            service_name(&args("/x/keel service van --set app.network=van-b")),
            Some("van-b".into())
        );
        assert_eq!(service_name(&args("/x/keel gateway --config g.yaml")), None);
        assert_eq!(service_name(&args("/x/keel service --help")), None);
    }

    #[test]
    fn a_process_parent_is_read_from_proc() {
        let me = std::process::id() as i32;
        let parent = parent_pid(me).expect("this process has a parent");
        assert!(parent > 0 && parent != me);
        assert_eq!(parent_pid(-1), None);
    }

    #[test]
    fn only_children_of_the_given_data_dir_are_found_and_named() {
        let base = std::env::temp_dir().join(format!("keel-chaos-{}", std::process::id()));
        let (ours, theirs) = (base.join("ours"), base.join("theirs"));
        fs::create_dir_all(&ours).unwrap();
        fs::create_dir_all(&theirs).unwrap();
        // `sh -c '…' service order` has `service order` in its command line, as a child of
        // `keel up` has. It waits in the `read` builtin on a pipe this test holds, so it
        // starts no process of its own that could outlive the kill below.
        let spawn = |dir: &Path, name: &str| {
            std::process::Command::new("sh")
                .args(["-c", "read line", "service", name])
                .env("KEEL_DATA_DIR", dir)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut mine = spawn(&ours, "order");
        let mut other = spawn(&theirs, "kitchen");
        // Until a child has exec'd `sh`, /proc shows a copy of this test process: wait for
        // both command lines, so the search sees the two children as `keel up` would.
        for pid in [mine.id(), other.id()] {
            let started = std::time::Instant::now();
            while !fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(7).any(|w| w == b"service"))
            {
                assert!(started.elapsed() < std::time::Duration::from_secs(10));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let found = children(&ours);
        let _ = (mine.kill(), other.kill(), mine.wait(), other.wait());
        let _ = fs::remove_dir_all(&base);
        assert_eq!(
            found,
            vec![Child {
                name: "order".into(),
                pid: mine.id() as i32
            }]
        );
    }
}
