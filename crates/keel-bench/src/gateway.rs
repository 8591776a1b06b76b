//! `keel bench gateway`: the Keel gateway beside nginx, proxying the same fixed upstream with
//! the same load generator (oha), each proxy pinned to one core (one nginx worker, one
//! gateway worker thread) and the generator and upstream on the other. Measures added
//! p50/p99 latency over direct at a fixed rate, saturated throughput and RSS under load, with
//! a realistic route table (20 path routes, the measured one last, a circuit breaker on it,
//! metrics on; access logs off on both).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::Value;
use tokio::process::{Child, Command};

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `keel` executable (runs `keel gateway`).
    pub self_exe: PathBuf,
    /// Fixed request rate of the latency runs.
    pub rate: u32,
    /// Seconds per run.
    pub seconds: u32,
    /// Rounds of the fixed-rate runs (median reported).
    pub rounds: u32,
    /// Connections of the saturation runs.
    pub connections: u32,
    /// Working directory for generated configs.
    pub dir: PathBuf,
    /// The nginx binary.
    pub nginx: PathBuf,
    /// The oha binary.
    pub oha: PathBuf,
    /// When non-zero, every request is a `POST` with a JSON body of this many bytes.
    pub body_bytes: usize,
}

/// A JSON document of exactly `n` bytes (at least the 10 of its frame).
fn json_body(n: usize) -> String {
    format!("{{\"pad\":\"{}\"}}", "x".repeat(n.saturating_sub(10)))
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

const ROUTES: usize = 20;

fn nginx_conf(dir: &Path, listen: u16, body: &str, cpu: &str) -> String {
    format!(
        r#"daemon off;
master_process on;
worker_processes 1;
worker_cpu_affinity {cpu};
pid {dir}/nginx-{listen}.pid;
error_log {dir}/nginx-{listen}.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/tmp-{listen};
  proxy_temp_path {dir}/tmp-{listen};
  fastcgi_temp_path {dir}/tmp-{listen};
  uwsgi_temp_path {dir}/tmp-{listen};
  scgi_temp_path {dir}/tmp-{listen};
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{listen};
{body}
  }}
}}
"#,
        dir = dir.display()
    )
}

/// The fixed upstream: a small JSON answer.
fn upstream_conf(dir: &Path, port: u16) -> String {
    nginx_conf(
        dir,
        port,
        "    location / { default_type application/json; return 200 '{\"ok\":true,\"service\":\"bench\"}'; }",
        "10",
    )
}

fn nginx_proxy_conf(dir: &Path, port: u16, upstream: u16) -> String {
    let mut body = String::new();
    for i in 0..ROUTES - 1 {
        body.push_str(&format!(
            "    location /svc{i}/ {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n"
        ));
    }
    body.push_str(
        "    location /bench/ { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }\n",
    );
    let conf = nginx_conf(dir, port, &body, "01");
    conf.replacen(
        "  server {",
        &format!("  upstream up {{ server 127.0.0.1:{upstream}; keepalive 256; }}\n  server {{"),
        1,
    )
}

fn keel_routes(port: u16, upstream: u16) -> String {
    let mut s = format!(
        "server:\n  listen: 127.0.0.1:{port}\ngateway:\n  access-log: false\n  reload: {{ enabled: false }}\n  routes:\n"
    );
    for i in 0..ROUTES - 1 {
        s.push_str(&format!(
            "    - {{ id: svc{i}, uri: 'http://127.0.0.1:{upstream}', predicates: ['Path=/svc{i}/**'] }}\n"
        ));
    }
    s.push_str(&format!(
        "    - id: bench\n      uri: http://127.0.0.1:{upstream}\n      predicates: ['Path=/bench/**']\n      filters: [{{ name: CircuitBreaker, args: {{ name: bench }} }}]\n"
    ));
    s
}

async fn start(cmd: &mut Command) -> Result<Child, String> {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))
}

async fn wait_port(port: u16) -> Result<(), String> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("nothing listens on port {port}"))
}

/// Stops an nginx started with `conf` when dropped (killing the master would orphan its worker),
/// waiting up to 2 s for it to exit, then removes its temp directory and, when nginx wrote
/// nothing to it, its error log (so repeated runs do not fill the bench directory).
struct NginxGuard {
    nginx: PathBuf,
    conf: PathBuf,
    dir: PathBuf,
    port: u16,
    _child: Child,
}

impl Drop for NginxGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.nginx)
            .arg("-c")
            .arg(&self.conf)
            .args(["-s", "stop"])
            .stderr(Stdio::null())
            .status();
        // Let the master stop its worker before the child handle is dropped (and the master
        // killed), or the worker would be left running.
        for _ in 0..100 {
            if !matches!(self._child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(self.dir.join(format!("tmp-{}", self.port)));
        let log = self.dir.join(format!("nginx-{}.err", self.port));
        if std::fs::metadata(&log).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(log);
        }
    }
}

/// The run with the median p99 (its other figures come along).
fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms));
    runs.get(runs.len() / 2).copied().unwrap_or_default()
}

/// A proxy's added p50 and p99 over direct: the median over rounds of each round's
/// difference from the direct run of the same round (paired, so drift between rounds cancels).
fn paired_added(proxy: &[Run], direct: &[Run]) -> (f64, f64) {
    let median_of = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let pairs = || proxy.iter().zip(direct);
    (
        median_of(pairs().map(|(p, d)| p.p50_ms - d.p50_ms).collect()),
        median_of(pairs().map(|(p, d)| p.p99_ms - d.p99_ms).collect()),
    )
}

/// The run with the median throughput.
fn median_rps(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    runs.get(runs.len() / 2).copied().unwrap_or_default()
}

/// One oha run's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    success: f64,
}

async fn oha(
    opts: &Options,
    url: &str,
    rate: Option<u32>,
    connections: u32,
) -> Result<Run, String> {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg("1").arg(&opts.oha);
    cmd.args(["--no-tui", "--output-format", "json", "-z"])
        .arg(format!("{}s", opts.seconds))
        .arg("-c")
        .arg(connections.to_string());
    if let Some(q) = rate {
        cmd.arg("-q").arg(q.to_string());
    }
    if opts.body_bytes > 0 {
        cmd.args(["-m", "POST", "-T", "application/json", "-d"])
            .arg(json_body(opts.body_bytes));
    }
    cmd.arg(url);
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("cannot run oha ({}): {e}", opts.oha.display()))?;
    if !out.status.success() {
        return Err(format!(
            "oha failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cannot read oha's JSON: {e}"))?;
    let pct = |k: &str| v["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1e3;
    Ok(Run {
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50_ms: pct("p50"),
        p99_ms: pct("p99"),
        success: v["summary"]["successRate"].as_f64().unwrap_or(0.0),
    })
}

/// `keel / nginx` as `1.23×`, or why there is no ratio: when nginx's added latency is not
/// positive (its runs' tail was no slower than the direct runs'), a quotient means nothing.
fn ratio(keel: f64, nginx: f64) -> String {
    if nginx > 0.0 && keel.is_finite() {
        format!("{:.2}×", keel / nginx)
    } else {
        "no ratio: nginx's added p99 is not positive, so the direct runs' tail was as slow; rerun with more --rounds".into()
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`: 100 on every Linux ABI).
const USER_HZ: f64 = 100.0;

/// A process's user and system CPU time so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    parse_stat_times(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `utime` and `stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name
/// (field 2) is in parentheses and may hold spaces or parentheses itself, so fields are
/// counted from the last `)`.
fn parse_stat_times(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user = fields.next()?.parse().ok()?;
    let system = fields.next()?.parse().ok()?;
    Some((user, system))
}

/// CPU spent by a proxy over its fixed-rate runs, and the requests it served.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    user_ticks: u64,
    system_ticks: u64,
    requests: f64,
}

impl Cpu {
    fn add(&mut self, before: (u64, u64), after: (u64, u64), requests: f64) {
        self.user_ticks += after.0.saturating_sub(before.0);
        self.system_ticks += after.1.saturating_sub(before.1);
        self.requests += requests;
    }

    /// µs per request of `ticks`.
    fn per_request(&self, ticks: u64) -> f64 {
        if self.requests > 0.0 {
            ticks as f64 / USER_HZ * 1e6 / self.requests
        } else {
            f64::NAN
        }
    }

    fn user_ratio(&self, nginx: &Cpu) -> String {
        let (k, n) = (
            self.per_request(self.user_ticks),
            nginx.per_request(nginx.user_ticks),
        );
        if n > 0.0 && k.is_finite() {
            format!("{:.2}× nginx's", k / n)
        } else {
            "not measured".into()
        }
    }
}

impl std::fmt::Display for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "user {:.1} µs + system {:.1} µs",
            self.per_request(self.user_ticks),
            self.per_request(self.system_ticks)
        )
    }
}

/// nginx's worker: the master's child.
fn nginx_worker(master: u32) -> Option<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{master}/task/{master}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// Runs the benchmark and prints the report.
pub async fn run(opts: Options) -> Result<(), String> {
    std::fs::create_dir_all(&opts.dir).map_err(|e| e.to_string())?;
    let dir = std::fs::canonicalize(&opts.dir).map_err(|e| e.to_string())?;
    let (up, ng, kg) = (free_port()?, free_port()?, free_port()?);
    for p in [up, ng] {
        std::fs::create_dir_all(dir.join(format!("tmp-{p}"))).map_err(|e| e.to_string())?;
    }
    let write = |name: &str, text: String| -> Result<PathBuf, String> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| e.to_string())?;
        Ok(p)
    };
    let up_conf = write("upstream.conf", upstream_conf(&dir, up))?;
    let ng_conf = write("nginx.conf", nginx_proxy_conf(&dir, ng, up))?;
    let kg_conf = write("routes.yaml", keel_routes(kg, up))?;

    println!(
        "keel bench gateway: {ROUTES} routes (the measured one last, with a breaker), {} s per run, {} req/s fixed and {} connections saturated (medians of {} alternating rounds)",
        opts.seconds, opts.rate, opts.connections, opts.rounds
    );
    println!(
        "  proxies pinned to core 0 (one nginx worker / one gateway worker thread); oha and the upstream on core 1"
    );
    if opts.body_bytes > 0 {
        println!(
            "  every request a POST with a {}-byte JSON body",
            opts.body_bytes
        );
    }
    println!("  {}", crate::machine::check(Duration::from_secs(2)).await);
    let _upstream = NginxGuard {
        _child: start(
            Command::new("taskset")
                .args(["-c", "1"])
                .arg(&opts.nginx)
                .arg("-c")
                .arg(&up_conf),
        )
        .await?,
        nginx: opts.nginx.clone(),
        conf: up_conf.clone(),
        dir: dir.clone(),
        port: up,
    };
    let nginx = NginxGuard {
        _child: start(Command::new(&opts.nginx).arg("-c").arg(&ng_conf)).await?,
        nginx: opts.nginx.clone(),
        conf: ng_conf.clone(),
        dir: dir.clone(),
        port: ng,
    };
    let keel = start(
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(&opts.self_exe)
            .args(["gateway", "--workers", "1", "--config"])
            .arg(&kg_conf)
            .env("KEEL_LOG", "warn"),
    )
    .await?;
    for p in [up, ng, kg] {
        wait_port(p).await?;
    }
    let direct_url = format!("http://127.0.0.1:{up}/bench/orders");
    let nginx_url = format!("http://127.0.0.1:{ng}/bench/orders");
    let keel_url = format!("http://127.0.0.1:{kg}/bench/orders");
    // Warm up pools and caches.
    for u in [&direct_url, &nginx_url, &keel_url] {
        let mut short = opts.clone();
        short.seconds = 1;
        oha(&short, u, None, 16).await?;
    }
    // Fixed-rate runs: each round runs the direct one between the two proxies (which proxy
    // goes first alternates), and a proxy's added latency is taken against the direct run of
    // its own round, so the machine's speed drifting between rounds cancels out; the figure
    // is the median over rounds.
    let urls = [&direct_url, &nginx_url, &keel_url];
    // The CPU each proxy spends over its fixed-rate runs: unlike p99, machine stalls barely
    // move it.
    let pids = [None, nginx._child.id().and_then(nginx_worker), keel.id()];
    let mut cpu = [Cpu::default(); 3];
    let mut runs: [Vec<Run>; 3] = Default::default();
    for round in 0..opts.rounds.max(1) {
        let order = if round % 2 == 0 { [1, 0, 2] } else { [2, 0, 1] };
        for i in order {
            let before = pids[i].and_then(cpu_ticks);
            let run = oha(&opts, urls[i], Some(opts.rate), 50).await?;
            if let (Some(b), Some(a)) = (before, pids[i].and_then(cpu_ticks)) {
                cpu[i].add(b, a, run.rps * f64::from(opts.seconds));
            }
            runs[i].push(run);
        }
    }
    let (ng50, ng99) = paired_added(&runs[1], &runs[0]);
    let (kg50, kg99) = paired_added(&runs[2], &runs[0]);
    let per_round = |proxy: &[Run]| {
        proxy
            .iter()
            .zip(&runs[0])
            .map(|(p, d)| format!("{:.3}", p.p99_ms - d.p99_ms))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let rounds_line = format!(
        "  added p99 per round, ms: nginx {}; keel {}",
        per_round(&runs[1]),
        per_round(&runs[2])
    );
    let [direct, ng_fixed, kg_fixed] = runs.map(median);
    // Saturation runs alternate too; the median throughput of each is reported.
    let mut sat: [Vec<Run>; 2] = Default::default();
    for _ in 0..opts.rounds.max(1) {
        for (i, u) in [&nginx_url, &keel_url].into_iter().enumerate() {
            sat[i].push(oha(&opts, u, None, opts.connections).await?);
        }
    }
    let [ng_sat, kg_sat] = sat.map(median_rps);
    let keel_rss = keel.id().map_or(f64::NAN, rss_mib);
    let nginx_rss = nginx
        ._child
        .id()
        .and_then(nginx_worker)
        .map_or(f64::NAN, rss_mib);

    println!();
    println!(
        "  {:<8} {:>10} {:>10} {:>13} {:>13} {:>12} {:>10} {:>9}",
        "", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms", "sat. req/s", "RSS MiB", "success"
    );
    println!(
        "  {:<8} {:>10.3} {:>10.3} {:>13} {:>13} {:>12} {:>10} {:>9.3}",
        "direct", direct.p50_ms, direct.p99_ms, "-", "-", "-", "-", direct.success
    );
    println!(
        "  {:<8} {:>10.3} {:>10.3} {:>13.3} {:>13.3} {:>12.0} {:>10.1} {:>9.3}",
        "nginx",
        ng_fixed.p50_ms,
        ng_fixed.p99_ms,
        ng50,
        ng99,
        ng_sat.rps,
        nginx_rss,
        ng_sat.success.min(ng_fixed.success)
    );
    println!(
        "  {:<8} {:>10.3} {:>10.3} {:>13.3} {:>13.3} {:>12.0} {:>10.1} {:>9.3}",
        "keel",
        kg_fixed.p50_ms,
        kg_fixed.p99_ms,
        kg50,
        kg99,
        kg_sat.rps,
        keel_rss,
        kg_sat.success.min(kg_fixed.success)
    );
    println!("{rounds_line}");
    println!(
        "  CPU per request at {} req/s (all rounds): nginx {}; keel {}; keel's user CPU {}",
        opts.rate,
        cpu[1],
        cpu[2],
        cpu[2].user_ratio(&cpu[1])
    );
    let p99_ratio = ratio(kg99, ng99);
    let rps_ratio = kg_sat.rps / ng_sat.rps.max(1e-6);
    println!();
    println!(
        "  acceptance: added p99 {p99_ratio} nginx's (≤ 1.2), throughput {rps_ratio:.2}× nginx's (≥ 0.8), RSS {keel_rss:.1} MiB (≤ 32)"
    );
    println!(
        "summary: keel added p99 {kg99:.3} ms vs nginx {ng99:.3} ms ({p99_ratio}); saturated {:.0} vs {:.0} req/s ({rps_ratio:.2}×); keel RSS {keel_rss:.1} MiB",
        kg_sat.rps, ng_sat.rps
    );
    drop(keel);
    drop(nginx);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_have_the_asked_size() {
        for n in [10, 100, 1024] {
            let b = json_body(n);
            assert_eq!(b.len(), n);
            assert!(serde_json::from_str::<Value>(&b).is_ok(), "{b}");
        }
    }

    #[test]
    fn added_latency_is_paired_by_round() {
        let run = |p99_ms| Run {
            p50_ms: p99_ms / 2.0,
            p99_ms,
            ..Run::default()
        };
        // The machine slowed down in the last two rounds: unpaired medians (0.2 − 0.5)
        // would say the proxy took time away; paired, it adds 0.1 ms in two of three rounds.
        let direct = [run(0.1), run(0.5), run(0.5)];
        let proxy = [run(0.2), run(0.6), run(0.2)];
        let (p50, p99) = paired_added(&proxy, &direct);
        assert!((p99 - 0.1).abs() < 1e-9, "{p99}");
        assert!((p50 - 0.05).abs() < 1e-9, "{p50}");
        assert!(paired_added(&[], &[]).1.is_nan());
    }

    #[test]
    fn cpu_times_are_read_after_the_command_name() {
        let line = "42 (we (ird) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 9 0 0";
        assert_eq!(parse_stat_times(line), Some((250, 75)));
        assert_eq!(parse_stat_times("42 (x) S 1"), None);
        assert!(cpu_ticks(std::process::id()).is_some());
        let mut c = Cpu::default();
        c.add((100, 50), (300, 100), 10_000.0);
        assert!((c.per_request(c.user_ticks) - 200.0).abs() < 1e-9);
        let mut n = Cpu::default();
        n.add((0, 0), (100, 100), 10_000.0);
        assert_eq!(c.user_ratio(&n), "2.00× nginx's");
        assert_eq!(c.user_ratio(&Cpu::default()), "not measured");
    }

    #[test]
    fn a_ratio_needs_a_positive_baseline() {
        assert_eq!(ratio(0.3, 0.2), "1.50×");
        assert!(ratio(0.3, -0.1).starts_with("no ratio"));
        assert!(ratio(0.3, 0.0).starts_with("no ratio"));
    }

    #[test]
    fn configs_have_twenty_routes_with_the_measured_one_last() {
        let dir = Path::new("/tmp/x");
        let ng = nginx_proxy_conf(dir, 1, 2);
        assert_eq!(ng.matches("location /").count(), ROUTES);
        assert!(ng.contains("upstream up { server 127.0.0.1:2; keepalive"));
        let k = keel_routes(1, 2);
        assert_eq!(
            k.matches("- { id: svc").count() + k.matches("- id: bench").count(),
            ROUTES
        );
        assert!(k.trim_end().ends_with("name: bench } }]"));
    }
}
