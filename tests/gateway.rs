//! `keel gateway` as a process: it refuses a bad route file at start-up naming the file,
//! route and field; it serves a good one on the `--listen` address, proxies to a real
//! upstream process (the greeter), and drains on SIGTERM.

mod support;

use std::time::Duration;

use support::{Proc, free_port, keel, wait_healthy};

#[tokio::test]
async fn a_bad_route_file_stops_start_up_with_the_route_named() {
    let dir = std::env::temp_dir().join(format!("keel-gw-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("routes.yaml");
    std::fs::write(
        &file,
        "gateway:\n  routes:\n    - id: orders\n      uri: http://127.0.0.1:1\n      filters: [StripPrefix=two]\n",
    )
    .unwrap();
    let out = keel()
        .args([
            "gateway",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--config",
        ])
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("routes.yaml") && err.contains("\"orders\"") && err.contains("filters[0]"),
        "{err}"
    );
    let out = keel()
        .args(["gateway", "--config", "/nonexistent/routes.yaml"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/routes.yaml"));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn proxies_to_a_greeter_process_and_drains_on_sigterm() {
    let greeter_port = free_port();
    let mut greeter = Proc::spawn({
        let mut c = keel();
        c.args([
            "example",
            "greeter",
            "--listen",
            &format!("127.0.0.1:{greeter_port}"),
        ]);
        c
    });
    wait_healthy(
        &format!("http://127.0.0.1:{greeter_port}/health/ready"),
        Duration::from_secs(20),
    )
    .await;
    let dir = std::env::temp_dir().join(format!("keel-gw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("routes.yaml");
    std::fs::write(
        &file,
        format!(
            "server:\n  port: 1\ngateway:\n  routes:\n    - id: greeter\n      uri: http://127.0.0.1:{greeter_port}\n      predicates: [Path=/api/greet/**]\n      filters: [StripPrefix=1]\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let mut gw = Proc::spawn({
        let mut c = keel();
        c.args([
            "gateway",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--config",
        ])
        .arg(&file);
        c
    });
    wait_healthy(
        &format!("http://127.0.0.1:{port}/health/ready"),
        Duration::from_secs(20),
    )
    .await;
    let body: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/api/greet/ada"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["greeting"], "Hello, ada!", "{body}");
    gw.term();
    assert!(gw.wait_exit(Duration::from_secs(15)).await.success());
    greeter.term();
    greeter.wait_exit(Duration::from_secs(15)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn the_repository_route_files_load() {
    for file in ["services/gateway.yaml", "examples/greeter/routes.yaml"] {
        let out = keel()
            .args(["gateway", "--check", "--config", file])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("routes"));
    }
}
