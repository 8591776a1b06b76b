//! `keel up` end to end: the supervisor runs its own executable as children (two greeter
//! instances), waits for health, prints the ready summary, and stops everything on SIGTERM.

mod support;

use std::time::Duration;

use support::{Proc, free_ports, keel, port_open, wait_healthy};

/// Pids of live processes whose command line contains `needle`.
fn pids_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false);
        if cmd.contains(needle) && !zombie {
            out.push(pid);
        }
    }
    out
}

#[tokio::test]
async fn up_runs_the_topology_and_stops_every_child_on_sigterm() {
    let base = free_ports(2);
    let dir = std::env::temp_dir().join(format!("keel-up-{}-{base}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let topology = dir.join("keel.toml");
    std::fs::write(
        &topology,
        format!(
            r#"
[supervisor]
grace_period_ms = 5000

[[process]]
name = "greeter"
command = "$KEEL"
args = ["example", "greeter", "--listen", "127.0.0.1:{{port}}"]
instances = 2
port = {base}
health = "http://127.0.0.1:{{port}}/health/ready"
"#
        ),
    )
    .unwrap();

    let mut cmd = keel();
    cmd.arg("up").arg("--file").arg(&topology);
    let mut p = Proc::spawn(cmd);
    let ports = [base, base + 1];
    for port in ports {
        wait_healthy(
            &format!("http://127.0.0.1:{port}/health/ready"),
            Duration::from_secs(30),
        )
        .await;
    }
    p.wait_line(Duration::from_secs(10), |l| {
        l.to_ascii_lowercase().contains("ready")
    })
    .await;
    // Child output is prefixed with its name.
    let client = reqwest::Client::new();
    for port in ports {
        let r = client
            .get(format!("http://127.0.0.1:{port}/greet/up"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    p.wait_line(Duration::from_secs(10), |l| l.starts_with("greeter-1"))
        .await;

    let needle = format!("127.0.0.1:{base}");
    assert!(!pids_with(&needle).is_empty(), "children are running");
    p.term();
    let status = p.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{}", p.drain());
    for port in ports {
        assert!(!port_open(port), "port {port} still open after stop");
    }
    assert!(pids_with(&needle).is_empty(), "no orphans left");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn up_reports_an_invalid_topology_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("keel-up-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let topology = dir.join("broken.toml");
    std::fs::write(
        &topology,
        "[[process]]\nname = \"a\"\ncommand = \"true\"\ndepends_on = [\"ghost\"]\n",
    )
    .unwrap();
    let mut cmd = keel();
    cmd.arg("up").arg("--file").arg(&topology);
    let mut p = Proc::spawn(cmd);
    let status = p.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1));
    let out = p.drain();
    assert!(out.contains("broken.toml"), "{out}");
    assert!(out.contains("ghost"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}
