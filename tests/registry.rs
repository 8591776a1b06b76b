//! `keel registry` as real processes: an unmodified Eureka client (py-eureka-client from
//! PyPI) registering, heartbeating, discovering and deregistering; and replication across
//! three registries, one killed and restarted.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Proc, free_port, keel, wait_healthy};

fn registry(port: u16, peers: &[u16]) -> tokio::process::Command {
    let mut cmd = keel();
    cmd.args(["registry", "--listen", &format!("127.0.0.1:{port}")]);
    for p in peers {
        cmd.args(["--peer", &format!("http://127.0.0.1:{p}")]);
    }
    cmd.env("KEEL_LOG", "warn");
    cmd
}

fn instance(app: &str, id: &str, port: u16, dirty: u64) -> Value {
    json!({"instance": {
        "instanceId": id, "hostName": "127.0.0.1", "app": app, "ipAddr": "127.0.0.1",
        "status": "UP", "port": {"$": port, "@enabled": "true"},
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
        "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90},
        "metadata": {"version": "3.1"}, "vipAddress": app.to_lowercase(),
        "lastDirtyTimestamp": dirty.to_string()
    }})
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 10 s: {what}");
}

fn py_eureka_client_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import py_eureka_client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn py_eureka_client_registers_heartbeats_discovers_and_deregisters() {
    if !py_eureka_client_available() {
        eprintln!(
            "NOTICE: skipping the py-eureka-client test: `python3 -c 'import py_eureka_client'` failed \
             (pip install py-eureka-client; CI installs it)"
        );
        return;
    }
    let port = free_port();
    let mut reg = Proc::spawn(registry(port, &[]));
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&format!("{base}/health/ready"), Duration::from_secs(20)).await;
    let res = reqwest::Client::new()
        .post(format!("{base}/eureka/apps/RUST-SVC"))
        .json(&instance("RUST-SVC", "rust-1", 7070, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/eureka_client_check.py"
    );
    let mut py = tokio::process::Command::new("python3");
    py.args([script, &format!("{base}/eureka"), "3.5"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut py = Proc::spawn(py);
    py.wait_line(Duration::from_secs(20), |l| l.contains("\"registered\""))
        .await;

    // Keel sees the Python instance, and its heartbeats move the lease forward.
    let url = format!("{base}/eureka/apps/PY-SVC/py-svc-1");
    let (s, v) = get_json(&url).await;
    assert_eq!(s, 200, "registered: {v}");
    assert_eq!(v["instance"]["metadata"]["lang"], "python");
    let first = v["instance"]["leaseInfo"]["lastRenewalTimestamp"]
        .as_u64()
        .unwrap();
    eventually("a heartbeat renews the lease", async || {
        let (_, v) = get_json(&url).await;
        v["instance"]["leaseInfo"]["lastRenewalTimestamp"]
            .as_u64()
            .unwrap_or(0)
            > first
    })
    .await;

    let line = py
        .wait_line(Duration::from_secs(20), |l| l.contains("\"full-fetch\""))
        .await;
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["apps"], json!(["PY-SVC", "RUST-SVC"]));
    assert_eq!(v["hashcode"], "UP_2_");
    assert_eq!(
        v["rust_instances"],
        json!([["rust-1", "127.0.0.1", 7070, "UP"]])
    );
    assert_eq!(v["rust_metadata"]["version"], "3.1");
    let line = py
        .wait_line(Duration::from_secs(5), |l| l.contains("\"delta\""))
        .await;
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["hashcode"], "UP_2_");
    let line = py
        .wait_line(Duration::from_secs(5), |l| l.contains("\"self\""))
        .await;
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], "UP");
    assert!(v["renewal"].as_u64().unwrap() > v["registration"].as_u64().unwrap());
    py.wait_line(Duration::from_secs(15), |l| l.contains("\"stopped\""))
        .await;
    let status = py.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", py.drain());

    // Stopping the client deregistered it.
    let (s, _) = get_json(&url).await;
    assert_eq!(s, 404);
    reg.term();
    assert!(reg.wait_exit(Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn three_registries_replicate_and_a_restarted_one_catches_up() {
    let ports = [free_port(), free_port(), free_port()];
    let peers_of = |i: usize| -> Vec<u16> {
        ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| *p)
            .collect()
    };
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| Proc::spawn(registry(ports[i], &peers_of(i))))
        .collect();
    for p in ports {
        wait_healthy(
            &format!("http://127.0.0.1:{p}/health/ready"),
            Duration::from_secs(20),
        )
        .await;
    }
    let url = |p: u16, path: &str| format!("http://127.0.0.1:{p}{path}");
    let http = reqwest::Client::new();

    // A registration on A shows up on B and C.
    let res = http
        .post(url(ports[0], "/eureka/apps/ORDERS"))
        .json(&instance("ORDERS", "o-1", 9001, 100))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    for p in &ports[1..] {
        let p = *p;
        eventually("replicated registration", async || {
            get_json(&url(p, "/eureka/apps/ORDERS/o-1")).await.0 == 200
        })
        .await;
    }
    // A status change on B reaches A and C; no loop (each sees it once, no ping-pong).
    let res = http
        .put(url(
            ports[1],
            "/eureka/apps/ORDERS/o-1/status?value=OUT_OF_SERVICE",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for p in [ports[0], ports[2]] {
        eventually("replicated status override", async || {
            get_json(&url(p, "/eureka/apps/ORDERS/o-1")).await.1["instance"]["status"]
                == "OUT_OF_SERVICE"
        })
        .await;
    }

    // C dies. Changes continue on A; B keeps serving.
    procs[2].child.start_kill().unwrap();
    procs[2].wait_exit(Duration::from_secs(10)).await;
    let res = http
        .post(url(ports[0], "/eureka/apps/KITCHEN"))
        .json(&instance("KITCHEN", "k-1", 9101, 200))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    eventually("B gets the new registration", async || {
        get_json(&url(ports[1], "/eureka/apps/KITCHEN/k-1")).await.0 == 200
    })
    .await;

    // C returns and syncs the full registry from a peer.
    procs[2] = Proc::spawn(registry(ports[2], &peers_of(2)));
    wait_healthy(&url(ports[2], "/health/ready"), Duration::from_secs(20)).await;
    eventually("restarted C caught up", async || {
        get_json(&url(ports[2], "/eureka/apps/KITCHEN/k-1")).await.0 == 200
            && get_json(&url(ports[2], "/eureka/apps/ORDERS/o-1")).await.1["instance"]["status"]
                == "OUT_OF_SERVICE"
    })
    .await;

    // A cancel on C replicates to A and B.
    let res = http
        .delete(url(ports[2], "/eureka/apps/ORDERS/o-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    for p in &ports[..2] {
        let p = *p;
        eventually("replicated cancel", async || {
            get_json(&url(p, "/eureka/apps/ORDERS/o-1")).await.0 == 404
        })
        .await;
    }
    for mut p in procs {
        p.term();
        assert!(p.wait_exit(Duration::from_secs(10)).await.success());
    }
}
