//! The supervisor driven through its public API with real child processes (`/bin/sh`
//! scripts) and a real HTTP health endpoint.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_supervisor::{
    CancellationToken, Console, Options, StartFailure, Stream, Supervisor, SupervisorError,
    Topology,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Records every output line.
#[derive(Debug, Default)]
struct Capture(Mutex<Vec<(Stream, String)>>);

impl Console for Capture {
    fn write(&self, stream: Stream, text: &str) {
        let mut lines = self.0.lock().unwrap();
        lines.extend(text.lines().map(|l| (stream, l.to_owned())));
    }
}

impl Capture {
    fn text(&self) -> String {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn contains(&self, needle: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|(_, l)| l.contains(needle))
    }

    async fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no output line contains {needle:?}; output:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A scratch directory, removed on drop.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "keel-supervisor-{test}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn dir(&self) -> &str {
        self.0.to_str().unwrap()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    async fn pid(&self, name: &str) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(pid) = self.read(name).trim().parse() {
                return pid;
            }
            assert!(Instant::now() < deadline, "{name} was never written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Alive and not a zombie (an orphan's zombie may wait for an init that never reaps).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

async fn wait_dead(pids: &[i32], within: Duration) {
    let deadline = Instant::now() + within;
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "still alive: {:?}",
            pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An HTTP endpoint answering 200 while `healthy()` holds, else 503.
async fn health_server(healthy: impl Fn() -> bool + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let healthy = Arc::new(healthy);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let healthy = Arc::clone(&healthy);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let status = if healthy() {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let response =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/health")
}

struct Run {
    capture: Arc<Capture>,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), SupervisorError>>,
}

fn start(toml: &str, summary_extra: Vec<String>) -> Run {
    let topology = Topology::from_str(toml, "test.toml").unwrap();
    let capture = Arc::new(Capture::default());
    let options = Options {
        self_exe: PathBuf::from("/bin/sh"),
        summary_extra,
        console: capture.clone(),
        env: vec![(
            "KEEL_TEST_DEFAULT_ENV".to_owned(),
            "from-options".to_owned(),
        )],
    };
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(Supervisor::new(topology, options).run(shutdown.clone()));
    Run {
        capture,
        shutdown,
        handle,
    }
}

impl Run {
    async fn finish(self) -> (Result<(), SupervisorError>, Arc<Capture>) {
        let result = tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("run did not return")
            .expect("run panicked");
        (result, self.capture)
    }

    async fn stop(self) -> (Result<(), SupervisorError>, Arc<Capture>) {
        self.shutdown.cancel();
        self.finish().await
    }
}

fn prefixed(name: &str, line: &str) -> String {
    format!("{name:<10} | {line}")
}

#[tokio::test]
async fn starts_in_dependency_order_after_health_and_prints_one_summary() {
    let s = Scratch::new("order");
    let ready_marker = s.path("a.ready");
    let url = health_server(move || ready_marker.exists()).await;
    let dir = s.dir();
    // `b` comes first in the file but depends on `a`; `c` is independent and must not wait.
    let run = start(
        &format!(
            r#"
            [supervisor]
            health_interval_ms = 20
            health_timeout_ms = 5000
            grace_period_ms = 2000
            notes = ["dashboard: http://127.0.0.1:2/"]

            [[process]]
            name = "b"
            command = "/bin/sh"
            args = ["-c", '''if [ -e "$DIR/a.ready" ]; then echo "b after a ready" >> "$DIR/order"; else echo "b too early" >> "$DIR/order"; fi; exec sleep 30''']
            env = {{ DIR = "{dir}" }}
            depends_on = ["a"]
            ready_after_ms = 50

            [[process]]
            name = "a"
            command = "/bin/sh"
            args = ["-c", '''echo a >> "$DIR/order"; echo "a says hi"; echo "a complains" >&2; sleep 0.4; touch "$DIR/a.ready"; exec sleep 30''']
            env = {{ DIR = "{dir}" }}
            health = "{url}"

            [[process]]
            name = "c"
            command = "/bin/sh"
            args = ["-c", '''echo "$KEEL_TEST_DEFAULT_ENV" > "$DIR/env"; if [ -e "$DIR/a.ready" ]; then echo "c waited" >> "$DIR/c"; else echo "c in parallel" >> "$DIR/c"; fi; exec sleep 30''']
            env = {{ DIR = "{dir}" }}
            ready_after_ms = 50
            "#
        ),
        vec!["try: curl http://127.0.0.1:1/".to_owned()],
    );
    run.capture
        .wait_for("supervisor | ready: 3 processes up in")
        .await;

    assert_eq!(s.read("order"), "a\nb after a ready\n");
    assert_eq!(s.read("c"), "c in parallel\n");

    let out = run.capture.text();
    assert_eq!(out.matches("| ready:").count(), 1, "{out}");
    let summary: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains("| ready:"))
        .collect();
    // Dependencies first, then file order.
    assert!(summary[1].starts_with("supervisor |   a  pid "), "{out}");
    assert!(summary[1].ends_with(&url), "{out}");
    assert!(summary[2].starts_with("supervisor |   c  pid "), "{out}");
    assert!(summary[3].starts_with("supervisor |   b  pid "), "{out}");
    assert!(
        summary[3].ends_with("(no health URL; up for 50ms)"),
        "{out}"
    );
    assert_eq!(summary[4], "supervisor |   dashboard: http://127.0.0.1:2/");
    assert_eq!(summary[5], "supervisor | try: curl http://127.0.0.1:1/");
    assert_eq!(
        s.read("env"),
        "from-options\n",
        "Options::env reaches children"
    );
    let lines = run.capture.0.lock().unwrap().clone();
    assert!(
        lines.contains(&(Stream::Stdout, prefixed("a", "a says hi"))),
        "{out}"
    );
    assert!(
        lines.contains(&(Stream::Stderr, prefixed("a", "a complains"))),
        "{out}"
    );

    let (result, capture) = run.stop().await;
    result.unwrap();
    assert!(
        capture.contains("supervisor | all processes stopped"),
        "{}",
        capture.text()
    );
}

#[tokio::test]
async fn instances_get_their_own_name_and_port() {
    let run = start(
        r#"
        [[process]]
        name = "w"
        command = "/bin/sh"
        args = ["-c", 'echo "port={port} instance={instance} name={name} env=$P"; exec sleep 30']
        env = { P = "{port}" }
        instances = 2
        port = 9101
        ready_after_ms = 50
        "#,
        vec![],
    );
    run.capture.wait_for("| ready: 2 processes").await;
    run.capture
        .wait_for(&prefixed("w-1", "port=9101 instance=1 name=w-1 env=9101"))
        .await;
    run.capture
        .wait_for(&prefixed("w-2", "port=9102 instance=2 name=w-2 env=9102"))
        .await;
    run.stop().await.0.unwrap();
}

#[tokio::test]
async fn restarts_a_crashed_process_with_backoff() {
    let s = Scratch::new("restart");
    let run = start(
        &format!(
            r#"
            [supervisor]
            restart_initial_ms = 50
            restart_max_ms = 1000
            grace_period_ms = 2000

            [[process]]
            name = "flaky"
            command = "/bin/sh"
            args = ["-c", '''echo start >> "$DIR/starts"; if [ ! -e "$DIR/crashed" ]; then touch "$DIR/crashed"; sleep 1.5; echo crashing; exit 1; fi; echo up; exec sleep 30''']
            env = {{ DIR = "{}" }}
            ready_after_ms = 100
            "#,
            s.dir()
        ),
        vec![],
    );
    run.capture.wait_for("| ready: 1 process up").await;
    run.capture
        .wait_for("supervisor | flaky exited with status 1; restarting in 50ms (restart #1)")
        .await;
    run.capture
        .wait_for("supervisor | restarted flaky (pid ")
        .await;
    run.capture.wait_for(&prefixed("flaky", "up")).await;
    // It stays up: no second restart.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !run.capture.contains("restart #2"),
        "{}",
        run.capture.text()
    );
    assert_eq!(s.read("starts"), "start\nstart\n");
    run.stop().await.0.unwrap();
}

#[tokio::test]
async fn stops_every_child_and_grandchild_and_sigkills_the_stubborn() {
    let s = Scratch::new("stop");
    let run = start(
        &format!(
            r#"
            [supervisor]
            grace_period_ms = 300

            [[process]]
            name = "tree"
            command = "/bin/sh"
            # A grandchild that ignores SIGTERM and outlives its parent's exit.
            args = ["-c", '''(trap '' TERM; exec sleep 30) & echo $! > "$DIR/grandchild.pid"; echo $$ > "$DIR/tree.pid"; wait''']
            env = {{ DIR = "{dir}" }}
            ready_after_ms = 100

            [[process]]
            name = "stubborn"
            command = "/bin/sh"
            args = ["-c", '''trap '' TERM; echo $$ > "$DIR/stubborn.pid"; exec sleep 30''']
            env = {{ DIR = "{dir}" }}
            ready_after_ms = 100
            "#,
            dir = s.dir()
        ),
        vec![],
    );
    run.capture.wait_for("| ready: 2 processes").await;
    let pids = [
        s.pid("tree.pid").await,
        s.pid("grandchild.pid").await,
        s.pid("stubborn.pid").await,
    ];
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");

    let started = Instant::now();
    let (result, capture) = run.stop().await;
    let took = started.elapsed();
    result.unwrap();
    // The group leaders have been reaped; the grandchild got SIGKILL and may take a moment
    // to be torn down by the kernel.
    assert!(
        !alive(pids[0]) && !alive(pids[2]),
        "{pids:?}; output:\n{}",
        capture.text()
    );
    wait_dead(&pids, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(300), "stopped in {took:?}");
    // The 300 ms grace, not the stubborn one's sleep (room left for a stall).
    assert!(took < Duration::from_secs(8), "stopped in {took:?}");
    let out = capture.text();
    assert!(
        out.contains(&format!(
            "supervisor | stubborn (pid {}) did not stop within 300ms; sending SIGKILL",
            pids[2]
        )),
        "{out}"
    );
    assert!(
        out.contains("supervisor | stubborn stopped (was killed by signal 9 (SIGKILL))"),
        "{out}"
    );
    assert!(
        out.contains("supervisor | tree stopped (was killed by signal 15 (SIGTERM))"),
        "{out}"
    );
}

#[tokio::test]
async fn stops_in_reverse_dependency_order() {
    let s = Scratch::new("reverse");
    let script = |name: &str| {
        format!(
            r#"args = ["-c", '''trap 'echo {name} >> "$DIR/stopped"; exit 0' TERM; sleep 30 & wait''']"#
        )
    };
    let run = start(
        &format!(
            r#"
            [supervisor]
            grace_period_ms = 2000

            [[process]]
            name = "a"
            command = "/bin/sh"
            {a}
            env = {{ DIR = "{dir}" }}
            ready_after_ms = 50

            [[process]]
            name = "c"
            command = "/bin/sh"
            {c}
            env = {{ DIR = "{dir}" }}
            ready_after_ms = 50
            depends_on = ["b"]

            [[process]]
            name = "b"
            command = "/bin/sh"
            {b}
            env = {{ DIR = "{dir}" }}
            ready_after_ms = 50
            depends_on = ["a"]
            "#,
            a = script("a"),
            b = script("b"),
            c = script("c"),
            dir = s.dir()
        ),
        vec![],
    );
    run.capture.wait_for("| ready: 3 processes").await;
    let (result, capture) = run.stop().await;
    result.unwrap();
    assert_eq!(s.read("stopped"), "c\nb\na\n", "{}", capture.text());
    assert!(capture.contains("supervisor | a stopped (exited with status 0)"));
}

#[tokio::test]
async fn health_timeout_names_the_process_and_stops_what_was_started() {
    let s = Scratch::new("health-timeout");
    let url = health_server(|| false).await;
    let started = Instant::now();
    let run = start(
        &format!(
            r#"
            [supervisor]
            health_timeout_ms = 300
            health_interval_ms = 20
            grace_period_ms = 1000

            [[process]]
            name = "db"
            command = "/bin/sh"
            args = ["-c", '''echo $$ > "$DIR/db.pid"; exec sleep 30''']
            env = {{ DIR = "{dir}" }}
            ready_after_ms = 50

            [[process]]
            name = "api"
            command = "/bin/sh"
            args = ["-c", '''echo $$ > "$DIR/api.pid"; exec sleep 30''']
            env = {{ DIR = "{dir}" }}
            health = "{url}"
            depends_on = ["db"]
            "#,
            dir = s.dir()
        ),
        vec![],
    );
    let (result, capture) = run.finish().await;
    let err = result.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    let SupervisorError::Start {
        process,
        failure:
            StartFailure::HealthTimeout {
                url: got,
                timeout,
                last,
            },
    } = &err
    else {
        panic!("unexpected error {err:?}");
    };
    assert_eq!(process, "api");
    assert_eq!(got, &url);
    assert_eq!(*timeout, Duration::from_millis(300));
    assert_eq!(last, "HTTP 503 Service Unavailable");
    assert_eq!(
        err.to_string(),
        format!(
            "process \"api\" failed to start: not healthy at {url} within 300ms (last probe: HTTP 503 Service Unavailable)"
        )
    );
    assert!(!capture.contains("| ready:"), "{}", capture.text());
    wait_dead(
        &[s.pid("db.pid").await, s.pid("api.pid").await],
        Duration::from_millis(100),
    )
    .await;
}

#[tokio::test]
async fn exit_during_start_up_names_the_process_and_stops_its_dependencies() {
    let s = Scratch::new("startup-exit");
    let run = start(
        &format!(
            r#"
            [[process]]
            name = "db"
            command = "/bin/sh"
            args = ["-c", '''echo $$ > "$DIR/db.pid"; exec sleep 30''']
            env = {{ DIR = "{dir}" }}
            ready_after_ms = 50

            [[process]]
            name = "api"
            command = "/bin/sh"
            args = ["-c", "echo 'cannot bind' >&2; exit 3"]
            depends_on = ["db"]
            "#,
            dir = s.dir()
        ),
        vec![],
    );
    let (result, capture) = run.finish().await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, SupervisorError::Start { process, failure: StartFailure::Exited { status } }
            if process == "api" && status.code() == Some(3)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "process \"api\" failed to start: exited with status 3 during start-up"
    );
    assert!(
        capture.contains(&prefixed("api", "cannot bind")),
        "{}",
        capture.text()
    );
    assert!(
        capture.contains("supervisor | api failed to start: exited with status 3 during start-up")
    );
    wait_dead(&[s.pid("db.pid").await], Duration::from_millis(100)).await;
}

#[tokio::test]
async fn spawn_failure_names_the_process() {
    let run = start(
        r#"
        [[process]]
        name = "ghost"
        command = "/nonexistent/keel-test-binary"
        "#,
        vec![],
    );
    let err = run.finish().await.0.unwrap_err();
    let SupervisorError::Start {
        process,
        failure: StartFailure::Spawn { command, .. },
    } = &err
    else {
        panic!("unexpected error {err:?}");
    };
    assert_eq!(process, "ghost");
    assert_eq!(command, "/nonexistent/keel-test-binary");
    assert!(
        err.to_string().starts_with(
            "process \"ghost\" failed to start: cannot execute /nonexistent/keel-test-binary: "
        ),
        "{err}"
    );
}

#[tokio::test]
async fn self_command_runs_self_exe_and_run_returns_when_all_have_exited() {
    let s = Scratch::new("all-exit");
    let run = start(
        &format!(
            r#"
            [[process]]
            name = "good"
            command = "$KEEL"
            args = ["-c", '''echo ran > "$DIR/good"; sleep 1.5; exit 0''']
            env = {{ DIR = "{}" }}
            ready_after_ms = 50

            [[process]]
            name = "bad"
            command = "$KEEL"
            args = ["-c", "sleep 1.5; exit 2"]
            ready_after_ms = 50
            restart = "never"
            "#,
            s.dir()
        ),
        vec![],
    );
    // No shutdown: the run ends by itself.
    let (result, capture) = run.finish().await;
    assert_eq!(s.read("good"), "ran\n");
    let out = capture.text();
    assert!(
        out.contains(
            r#"supervisor | good exited with status 0; not restarting (restart = "on-failure")"#
        ),
        "{out}"
    );
    assert!(
        out.contains(
            r#"supervisor | bad exited with status 2; not restarting (restart = "never")"#
        ),
        "{out}"
    );
    let err = result.unwrap_err();
    assert!(
        matches!(&err, SupervisorError::AllExited { failed } if failed == &["bad"]),
        "{err:?}"
    );
}

#[tokio::test]
async fn shutdown_during_start_up_stops_everything() {
    let s = Scratch::new("early-shutdown");
    let url = health_server(|| false).await;
    let run = start(
        &format!(
            r#"
            [supervisor]
            grace_period_ms = 1000
            [[process]]
            name = "slow"
            command = "/bin/sh"
            args = ["-c", '''echo $$ > "$DIR/slow.pid"; exec sleep 30''']
            env = {{ DIR = "{}" }}
            health = "{url}"
            "#,
            s.dir()
        ),
        vec![],
    );
    let pid = s.pid("slow.pid").await;
    let (result, capture) = run.stop().await;
    result.unwrap();
    assert!(capture.contains("supervisor | shutdown requested during start-up"));
    wait_dead(&[pid], Duration::from_millis(100)).await;
}

#[tokio::test]
async fn dropping_the_run_kills_every_process_group() {
    let s = Scratch::new("drop");
    let run = start(
        &format!(
            r#"
            [[process]]
            name = "tree"
            command = "/bin/sh"
            args = ["-c", '''sleep 30 & echo $! > "$DIR/grandchild.pid"; echo $$ > "$DIR/tree.pid"; wait''']
            env = {{ DIR = "{}" }}
            ready_after_ms = 50
            "#,
            s.dir()
        ),
        vec![],
    );
    run.capture.wait_for("| ready: 1 process").await;
    let pids = [s.pid("tree.pid").await, s.pid("grandchild.pid").await];
    run.handle.abort();
    assert!(run.handle.await.unwrap_err().is_cancelled());
    wait_dead(&pids, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn relative_program_paths_resolve_against_cwd() {
    let s = Scratch::new("relative");
    let sub = s.path("sub");
    std::fs::create_dir_all(&sub).unwrap();
    // A link rather than a freshly written script: exec'ing a just-written file can fail
    // with ETXTBSY while another test thread forks.
    std::os::unix::fs::symlink("/bin/sh", sub.join("shell")).unwrap();
    let run = start(
        &format!(
            r#"
            [[process]]
            name = "rel"
            command = "./shell"
            args = ["-c", 'pwd > ../where; exec sleep 30']
            cwd = "{}"
            ready_after_ms = 50
            "#,
            sub.display()
        ),
        vec![],
    );
    run.capture.wait_for("| ready: 1 process").await;
    run.stop().await.0.unwrap();
    assert_eq!(s.read("where").trim(), sub.to_str().unwrap());
}

#[tokio::test]
async fn a_one_shot_job_that_succeeds_is_not_a_start_up_failure() {
    let s = Scratch::new("job");
    let dir = s.dir();
    let run = start(
        &format!(
            r#"
            [supervisor]
            grace_period_ms = 2000

            [[process]]
            name = "server"
            command = "/bin/sh"
            args = ["-c", "exec sleep 30"]
            ready_after_ms = 50

            [[process]]
            name = "seed"
            command = "/bin/sh"
            args = ["-c", '''echo seeded > "$DIR/seeded"''']
            env = {{ DIR = "{dir}" }}
            depends_on = ["server"]
            restart = "never"

            [[process]]
            name = "after"
            command = "/bin/sh"
            args = ["-c", '''echo after > "$DIR/after"; exec sleep 30''']
            env = {{ DIR = "{dir}" }}
            depends_on = ["seed"]
            ready_after_ms = 50
            "#
        ),
        Vec::new(),
    );
    run.capture.wait_for("seed finished").await;
    run.capture.wait_for("ready:").await;
    assert_eq!(s.read("seeded").trim(), "seeded");
    assert_eq!(s.read("after").trim(), "after");
    let (result, _) = run.stop().await;
    result.unwrap();

    // A failing job is still a start-up failure.
    let run = start(
        r#"
        [[process]]
        name = "seed"
        command = "/bin/sh"
        args = ["-c", "exit 3"]
        restart = "never"
        "#,
        Vec::new(),
    );
    let (result, _) = run.finish().await;
    assert!(result.unwrap_err().to_string().contains("seed"));
}
