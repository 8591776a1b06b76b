//! The example service as a real process: config errors, JSON logs with trace ids,
//! and a graceful drain on SIGTERM.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Proc, free_port, keel, wait_healthy};

fn greeter(port: u16) -> tokio::process::Command {
    let mut cmd = keel();
    cmd.args([
        "example",
        "greeter",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .env("KEEL_LOG_FORMAT", "json");
    cmd
}

#[tokio::test]
async fn logs_are_json_lines_carrying_the_callers_trace_id() {
    let port = free_port();
    let mut p = Proc::spawn(greeter(port));
    wait_healthy(
        &format!("http://127.0.0.1:{port}/health/ready"),
        Duration::from_secs(20),
    )
    .await;
    let res = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/greet/ada"))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["greeting"], "Hello, ada!");

    // Both the handler's own log line and the access log carry the trace id.
    for message in ["greeting", "request completed"] {
        let line = p
            .wait_line(Duration::from_secs(5), |l| {
                l.contains("0af7651916cd43dd8448eb211c80319c") && l.contains(message)
            })
            .await;
        let v: Value = serde_json::from_str(&line).expect("a JSON log line");
        assert_eq!(v["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(v["span_id"].as_str().unwrap().len(), 16);
        assert_eq!(v["service"], "greeter");
    }
    p.term();
    assert!(p.wait_exit(Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let port = free_port();
    let mut cmd = greeter(port);
    // Long enough that readiness is read inside it on a stalled machine.
    cmd.env("KEEL_SERVER__DRAIN_DELAY_MS", "3000");
    let mut p = Proc::spawn(cmd);
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&format!("{base}/health/ready"), Duration::from_secs(20)).await;

    let slow = tokio::spawn({
        let url = format!("{base}/greet/slow?delay_ms=3600");
        async move { reqwest::get(url).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.term();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let ready = reqwest::get(format!("{base}/health/ready")).await.unwrap();
    assert_eq!(ready.status(), 503, "readiness is DOWN while draining");

    let res = slow.await.unwrap().expect("in-flight request completes");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["greeting"], "Hello, slow!");

    let status = p.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", p.drain());
}

#[tokio::test]
async fn invalid_config_fails_at_start_naming_field_and_source() {
    let mut cmd = greeter(free_port());
    cmd.env("KEEL_APP__GREETING", "  ");
    let mut p = Proc::spawn(cmd);
    let status = p.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1));
    let out = p.drain();
    assert!(out.contains("`app.greeting`"), "{out}");
    assert!(out.contains("KEEL_APP__GREETING"), "{out}");

    let dir = std::env::temp_dir().join(format!("keel-greeter-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("greeter.toml");
    std::fs::write(&file, "[app]\nmax_delay_ms = \"soon\"\n").unwrap();
    let mut cmd = greeter(free_port());
    cmd.arg("--config").arg(&file);
    let mut p = Proc::spawn(cmd);
    assert_eq!(p.wait_exit(Duration::from_secs(10)).await.code(), Some(1));
    let out = p.drain();
    assert!(out.contains("`app.max_delay_ms`"), "{out}");
    assert!(out.contains("greeter.toml"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn bad_requests_get_problem_json() {
    let port = free_port();
    let mut p = Proc::spawn(greeter(port));
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&format!("{base}/health/ready"), Duration::from_secs(20)).await;
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{base}/greetings"))
        .json(&serde_json::json!({"name": " "}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["field"], "name");

    let res = client
        .post(format!("{base}/greetings"))
        .json(&serde_json::json!({"name": "x", "colour": "red"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422, "unknown fields are rejected");
    assert_eq!(res.headers()["content-type"], "application/problem+json");

    let res = client
        .get(format!("{base}/greet/x?delay_ms=999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    p.term();
    assert!(p.wait_exit(Duration::from_secs(10)).await.success());
}

/// A one-shot OTLP/HTTP collector: accepts connections, answers 200 to every POST and
/// hands each request's path and body to the test.
async fn collector() -> (u16, tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let header_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < header_end + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = tx.send((path, buf[header_end..header_end + len].to_vec()));
                    let _ = sock
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
                        .await;
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn spans_are_exported_over_otlp_when_an_endpoint_is_configured() {
    let (collector_port, mut received) = collector().await;
    let port = free_port();
    let mut cmd = greeter(port);
    cmd.env(
        "KEEL_TELEMETRY__OTLP_ENDPOINT",
        format!("http://127.0.0.1:{collector_port}"),
    );
    let mut p = Proc::spawn(cmd);
    wait_healthy(
        &format!("http://127.0.0.1:{port}/health/ready"),
        Duration::from_secs(20),
    )
    .await;
    let trace_hex = "5b8efff798038103d269b633813fc60c";
    let res = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/greet/otel"))
        .header("traceparent", format!("00-{trace_hex}-eee19b7ec3c1b174-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let tp = res.headers()["traceparent"].to_str().unwrap().to_owned();
    // Shutdown flushes the batch.
    p.term();
    assert!(
        p.wait_exit(Duration::from_secs(15)).await.success(),
        "{}",
        p.drain()
    );

    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let span_hex = tp.split('-').nth(2).unwrap().to_owned();
    let span_bytes: Vec<u8> = (0..8)
        .map(|i| u8::from_str_radix(&span_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut bodies = Vec::new();
    while let Ok(Some((path, body))) =
        tokio::time::timeout(Duration::from_secs(5), received.recv()).await
    {
        assert_eq!(path, "/v1/traces");
        bodies.push(body);
        if bodies
            .iter()
            .any(|b| b.windows(16).any(|w| w == trace_bytes.as_slice()))
        {
            break;
        }
    }
    let body = bodies
        .iter()
        .find(|b| b.windows(16).any(|w| w == trace_bytes.as_slice()))
        .expect("an exported span carries the caller's trace id");
    assert!(
        body.windows(8).any(|w| w == span_bytes.as_slice()),
        "the exported server span has the span id the response advertised"
    );
    assert!(
        body.windows(7).any(|w| w == b"greeter"),
        "service.name resource attribute"
    );
}
