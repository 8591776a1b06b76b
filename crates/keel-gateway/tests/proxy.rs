//! The gateway driven over real sockets against real upstream servers: routing, filters,
//! forwarding headers, errors as problem+json, streaming, lb://, retry, circuit breaker,
//! WebSocket-style upgrades, the actuator and hot reload.

mod support;

use std::{sync::atomic::Ordering, time::Duration};

use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn routes_by_path_and_applies_request_filters() {
    let up = upstream("orders").await;
    let gw = gateway(&format!(
        r#"
gateway:
  routes:
    - id: orders
      uri: {url}
      predicates: ["Path=/api/orders/{{id}}", "Method=GET,POST"]
      filters:
        - StripPrefix=1
        - AddRequestHeader=X-Order, {{id}}
        - AddRequestParameter=source, gw
        - RemoveRequestHeader=X-Secret
        - AddResponseHeader=X-Gw, keel
    - id: set-path
      uri: {url}
      predicates: ["Path=/v1/{{segment}}"]
      filters: ["SetPath=/internal/{{segment}}", "PrefixPath=/svc"]
    - id: rewrite
      uri: {url}
      predicates: ["Path=/red/**"]
      filters: ["RewritePath=/red/?(?<segment>.*), /$\\{{segment}}"]
"#,
        url = up.url()
    ))
    .await;
    let c = client();
    let res = c
        .get(gw.url("/api/orders/42?x=1"))
        .header("x-secret", "s")
        .header("host", "shop.example:8443")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-gw"], "keel");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["path"], "/orders/42");
    assert_eq!(body["query"], "x=1&source=gw");
    // Origin form on the request line; the authority is in Host.
    assert_eq!(body["target"], "/orders/42?x=1&source=gw");
    let h = &body["headers"];
    assert_eq!(h["x-order"], "42");
    assert!(h.get("x-secret").is_none());
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example:8443");
    assert_eq!(h["x-forwarded-port"], "8443");
    assert_eq!(h["x-forwarded-prefix"], "/api");
    assert!(h["forwarded"].as_str().unwrap().contains("for=127.0.0.1"));
    assert_eq!(h["host"], up.addr.to_string());
    assert!(h["traceparent"].as_str().unwrap().starts_with("00-"));

    let body: Value = c
        .get(gw.url("/v1/abc"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["path"], "/svc/internal/abc");
    let body: Value = c
        .get(gw.url("/red/blue/x"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["path"], "/blue/x");

    // DELETE is not one of the route's methods.
    let p = problem(
        c.delete(gw.url("/api/orders/42")).send().await.unwrap(),
        404,
    )
    .await;
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("DELETE /api/orders/42")
    );
}

#[tokio::test]
async fn predicates_select_routes() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let gw = gateway(&format!(
        r#"
spring:
  cloud:
    gateway:
      routes:
        - id: header
          uri: {b}
          predicates: ['Header=X-Version, 2\d*']
        - id: query
          uri: {b}
          predicates: [Query=beta]
        - id: cookie
          uri: {b}
          predicates: ['Cookie=tier, gold']
        - id: host
          uri: {b}
          predicates: ['Host=**.beta.example']
        - id: default
          uri: {a}
          predicates: ['Path=/**']
"#,
        a = a.url(),
        b = b.url()
    ))
    .await;
    let c = client();
    let who = |r: reqwest::RequestBuilder| async move {
        let v: Value = r.send().await.unwrap().json().await.unwrap();
        v["upstream"].as_str().unwrap().to_owned()
    };
    assert_eq!(who(c.get(gw.url("/x"))).await, "a");
    assert_eq!(
        who(c.get(gw.url("/x")).header("x-version", "21")).await,
        "b"
    );
    assert_eq!(who(c.get(gw.url("/x")).header("x-version", "3")).await, "a");
    assert_eq!(who(c.get(gw.url("/x?beta"))).await, "b");
    assert_eq!(
        who(c.get(gw.url("/x")).header("cookie", "a=1; tier=gold")).await,
        "b"
    );
    assert_eq!(
        who(c.get(gw.url("/x")).header("host", "api.beta.example")).await,
        "b"
    );
}

#[tokio::test]
async fn response_filters_status_redirect_and_size_limits() {
    let up = upstream("u").await;
    let gw = gateway(&format!(
        r#"
gateway:
  routes:
    - id: teapot
      uri: {url}
      predicates: [Path=/tea]
      filters: [SetStatus=418, SecureHeaders, "SetResponseHeader=Server, keel"]
    - id: moved
      uri: no://op
      predicates: [Path=/old/**]
      filters: ["RedirectTo=302, https://new.example/"]
    - id: small
      uri: {url}
      predicates: [Path=/count]
      filters: [RequestSize=1KB]
    - id: dedupe
      uri: {url}
      predicates: [Path=/dedupe]
      filters: ["AddResponseHeader=X-Dup, a", "AddResponseHeader=X-Dup, a", "DedupeResponseHeader=X-Dup"]
"#,
        url = up.url()
    ))
    .await;
    let c = client();
    let res = c.get(gw.url("/tea")).send().await.unwrap();
    assert_eq!(res.status(), 418);
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    assert_eq!(res.headers()["server"], "keel");
    let res = c.get(gw.url("/old/page")).send().await.unwrap();
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "https://new.example/");
    let p = problem(
        c.post(gw.url("/count"))
            .body(vec![0u8; 4096])
            .send()
            .await
            .unwrap(),
        413,
    )
    .await;
    assert_eq!(p["route"], "small");
    let res = c
        .post(gw.url("/count"))
        .body(vec![0u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = c.get(gw.url("/dedupe")).send().await.unwrap();
    let dups: Vec<_> = res.headers().get_all("x-dup").iter().collect();
    assert_eq!(dups.len(), 1);
}

#[tokio::test]
async fn upstream_failures_are_problems_naming_the_route() {
    let up = upstream("u").await;
    let dead = upstream("dead").await;
    let dead_url = dead.url();
    dead.kill();
    drop(dead);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let gw = gateway(&format!(
        r#"
gateway:
  routes:
    - id: down
      uri: {dead_url}
      predicates: [Path=/down/**]
    - id: slow
      uri: {url}
      predicates: [Path=/slow/**]
      metadata: {{ response-timeout: 200 }}
"#,
        url = up.url()
    ))
    .await;
    let c = client();
    let p = problem(c.get(gw.url("/down/x")).send().await.unwrap(), 502).await;
    assert_eq!(p["route"], "down");
    assert!(
        p["type"]
            .as_str()
            .unwrap()
            .ends_with("upstream-unreachable")
    );
    let p = problem(c.get(gw.url("/slow/10000")).send().await.unwrap(), 504).await;
    assert_eq!(p["route"], "slow");
    let res = c.get(gw.url("/slow/10")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let p = problem(c.get(gw.url("/nowhere")).send().await.unwrap(), 404).await;
    assert!(p["type"].as_str().unwrap().ends_with("no-route"));

    // A small body that stops arriving is held no longer than the upstream call would be.
    let (text, waited) = stalled_body_problem(gw.addr, "/slow/1").await;
    assert!(text.contains("\"route\":\"slow\""), "{text}");
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
}

/// Sends a `POST` to `path` declaring a 10-byte body and only 3 bytes of it; returns the
/// 408 request-timeout problem it gets back and how long that took.
async fn stalled_body_problem(addr: std::net::SocketAddr, path: &str) -> (String, Duration) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("POST {path} HTTP/1.1\r\nhost: shop\r\ncontent-length: 10\r\n\r\nabc").as_bytes(),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let got = read_until(&mut s, |b| b.ends_with(b"}")).await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("/request-timeout\""), "{text}");
    (text, started.elapsed())
}

#[tokio::test]
async fn streams_large_bodies_both_ways() {
    let up = upstream("u").await;
    let gw = gateway(&format!(
        "gateway:\n  routes:\n    - {{id: u, uri: '{}', predicates: ['Path=/**']}}\n",
        up.url()
    ))
    .await;
    let c = client();
    let n = 32 * 1024 * 1024;
    let res = c.get(gw.url(&format!("/bytes/{n}"))).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let got = res.bytes().await.unwrap();
    assert_eq!(got.len(), n);
    // A chunked upload of 32 MiB streams through (no buffering, no limit by default).
    let chunks = futures::stream::iter(
        (0..512).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; 64 * 1024]))),
    );
    let res = c
        .post(gw.url("/count"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["received"], 512 * 64 * 1024);
}

#[tokio::test]
async fn retry_filter_retries_idempotent_requests() {
    let up = upstream("u").await;
    let gw = gateway(&format!(
        r#"
gateway:
  routes:
    - id: flaky
      uri: {url}
      predicates: [Path=/flaky/**]
      filters:
        - name: Retry
          args:
            retries: 3
            statuses: SERVICE_UNAVAILABLE
            backoff: {{ firstBackoff: 10ms, maxBackoff: 50ms, factor: 2 }}
    - id: short
      uri: {url}
      predicates: [Path=/short/**]
      filters: [StripPrefix=1, "Retry=2, SERVICE_UNAVAILABLE, POST, 5ms, 20ms, 2"]
"#,
        url = up.url()
    ))
    .await;
    let c = client();
    let res = c.get(gw.url("/flaky/a/2")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["attempts"], 3);
    // Too many failures: the last answer is passed on.
    let res = c.get(gw.url("/flaky/b/10")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    // POST is not retried by default.
    let res = c.post(gw.url("/flaky/c/1")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    // Spring's shortcut form: retries, statuses, methods, firstBackoff, maxBackoff, factor.
    let res = c.post(gw.url("/short/flaky/d/2")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn circuit_breaker_opens_falls_back_and_recovers() {
    let up = upstream("u").await;
    let gw = gateway(&format!(
        r#"
gateway:
  routes:
    - id: guarded
      uri: {url}
      predicates: [Path=/status/**]
      filters:
        - name: CircuitBreaker
          args:
            name: orders
            fallbackUri: forward:/fallback
            statusCodes: [500, BAD_GATEWAY]
    - id: plain
      uri: {url}
      predicates: [Path=/plain/**]
      filters: [StripPrefix=1, "CircuitBreaker=plain"]
    - id: fallback
      uri: no://op
      predicates: [Path=/fallback]
      filters: ["SetStatus=503", "AddResponseHeader=X-Fallback, yes"]
resilience4j.circuitbreaker.instances.plain:
  slidingWindowSize: 4
  minimumNumberOfCalls: 4
resilience4j.circuitbreaker.instances.orders:
  slidingWindowSize: 4
  minimumNumberOfCalls: 4
  failureRateThreshold: 50
  waitDurationInOpenState: 3s
  permittedNumberOfCallsInHalfOpenState: 1
"#,
        url = up.url()
    ))
    .await;
    let c = client();
    // Before the failures: the breaker opens after this, so its wait ends after this + 3 s.
    let opening = std::time::Instant::now();
    for _ in 0..4 {
        let res = c.get(gw.url("/status/500")).send().await.unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["x-fallback"], "yes");
    }
    let before = up.hits.load(Ordering::Relaxed);
    // Open: the upstream is not called, even for a path that would succeed.
    let res = c.get(gw.url("/status/200")).send().await.unwrap();
    assert_eq!(res.headers()["x-fallback"], "yes");
    assert_eq!(up.hits.load(Ordering::Relaxed), before);
    let routes: Value = c
        .get(gw.url("/actuator/gateway/circuitbreakers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(routes[0]["name"], "orders");
    assert_eq!(routes[0]["state"], "OPEN");
    // After the wait (3 s: long enough that a stalled run still sees it open above), a trial
    // call goes through and closes it.
    let mut status = 0;
    for _ in 0..200 {
        status = c
            .get(gw.url("/status/200"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
    assert!(
        opening.elapsed() >= Duration::from_secs(3),
        "it stayed open for its wait"
    );
    let res = c.get(gw.url("/status/201")).send().await.unwrap();
    assert_eq!(res.status(), 201);
    // Without statusCodes an answer is a success whatever its status, as in Spring.
    for _ in 0..6 {
        let res = c.get(gw.url("/plain/status/500")).send().await.unwrap();
        assert_eq!(res.status(), 500);
    }
}

#[tokio::test]
async fn lb_routes_balance_and_survive_a_killed_instance() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let gw = gateway(&format!(
        r#"
gateway:
  discovery:
    services:
      orders: ["{a}", "{b}"]
  routes:
    - id: orders
      uri: lb://orders
      predicates: [Path=/orders/**]
"#,
        a = a.url(),
        b = b.url()
    ))
    .await;
    let c = client();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..20 {
        let res = c.get(gw.url("/orders/1")).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }
    assert!(a.hits.load(Ordering::Relaxed) > 0 && b.hits.load(Ordering::Relaxed) > 0);
    b.kill();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..20 {
        let res = c.get(gw.url("/orders/1")).send().await.unwrap();
        assert_eq!(res.status(), 200, "request {i} after the kill");
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["upstream"], "a");
    }
    // A POST with a body also fails over (the body is buffered so it can be resent).
    let res = c.post(gw.url("/orders/2")).body("{}").send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn lb_route_without_instances_is_503() {
    let gw = gateway(
        "gateway:\n  discovery:\n    services:\n      other: ['http://127.0.0.1:1']\n  routes:\n    - {id: x, uri: 'lb://missing', predicates: ['Path=/**']}\n",
    )
    .await;
    let p = problem(client().get(gw.url("/a")).send().await.unwrap(), 503).await;
    assert!(p["detail"].as_str().unwrap().contains("missing"));
}

/// An upstream that accepts `Upgrade: echo` and echoes bytes on the upgraded connection.
async fn upgrade_upstream() -> std::net::SocketAddr {
    use hyper::{Response, service::service_fn};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(
                    |mut req: hyper::Request<hyper::body::Incoming>| async move {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(up) = on.await {
                                let mut io = hyper_util::rt::TokioIo::new(up);
                                let mut buf = [0u8; 1024];
                                while let Ok(n) = io.read(&mut buf).await {
                                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        });
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(101)
                                .header("connection", "upgrade")
                                .header("upgrade", "echo")
                                .body(http_body_util::Empty::<bytes::Bytes>::new())
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upgrades_tunnel_both_ways() {
    let up = upgrade_upstream().await;
    let gw = gateway(&format!(
        "gateway:\n  routes:\n    - {{id: ws, uri: 'ws://{up}', predicates: ['Path=/ws']}}\n"
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"hello through the gateway").await.unwrap();
    let mut buf = vec![0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"hello through the gateway");
}

#[tokio::test]
async fn actuator_lists_routes_and_reload_keeps_good_routes() {
    let a = upstream("a").await;
    let b = upstream("b").await;
    let gw = gateway(&format!(
        "gateway:\n  routes:\n    - {{id: one, uri: '{}', predicates: ['Path=/**']}}\n",
        a.url()
    ))
    .await;
    let c = client();
    let routes: Value = c
        .get(gw.url("/actuator/gateway/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(routes[0]["route_id"], "one");
    assert_eq!(routes[0]["predicates"][0], "Path=/**");
    let ready = c.get(gw.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let one: Value = c
        .get(gw.url("/actuator/gateway/routes/one"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["route_id"], "one");
    let p = problem(
        c.get(gw.url("/actuator/gateway/routes/nope"))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("nope"), "{p}");
    problem(
        c.get(gw.url("/actuator/gateway/refresh"))
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;

    // A broken file is rejected by refresh; the old routes keep serving.
    std::fs::write(
        &gw.file,
        "gateway:\n  routes:\n    - {id: bad, uri: 'http://x', filters: ['Bogus=1']}\n",
    )
    .unwrap();
    let p = problem(
        c.post(gw.url("/actuator/gateway/refresh"))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("Bogus"), "{p}");
    assert_eq!(p["route"], "bad");
    let v: Value = c
        .get(gw.url("/x"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["upstream"], "a");

    // A good file is picked up by the watcher without a refresh call.
    std::fs::write(
        &gw.file,
        format!(
            "gateway:\n  routes:\n    - {{id: two, uri: '{}', predicates: ['Path=/**']}}\n",
            b.url()
        ),
    )
    .unwrap();
    let mut switched = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let v: Value = c
            .get(gw.url("/x"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["upstream"] == "b" {
            switched = true;
            break;
        }
    }
    assert!(switched, "the watcher did not reload the file");
}

#[tokio::test]
async fn drains_in_flight_requests_on_stop() {
    let up = upstream("u").await;
    let gw = gateway(&format!(
        "gateway:\n  routes:\n    - {{id: u, uri: '{}', predicates: ['Path=/**']}}\n",
        up.url()
    ))
    .await;
    let url = gw.url("/slow/1000");
    let inflight = tokio::spawn(async move { client().get(url).send().await });
    // Stopped once the request has reached the upstream (it is in flight).
    for _ in 0..400 {
        if up.hits.load(Ordering::Relaxed) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(up.hits.load(Ordering::Relaxed), 1);
    gw.stop().await;
    let res = inflight.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn cors_preflight_and_actual_requests() {
    let up = upstream("u").await;
    let gw = gateway(&format!(
        r#"
spring.cloud.gateway:
  globalcors:
    cors-configurations:
      '[/**]':
        allowedOrigins: "https://shop.example"
        allowedMethods: [GET, POST]
        allowedHeaders: [content-type]
        exposedHeaders: [x-total]
  routes:
    - id: api
      uri: {url}
      predicates: [Path=/api/**, Method=GET]
    - id: open
      uri: {url}
      predicates: [Path=/open/**]
      metadata:
        cors:
          allowedOriginPatterns: "https://*.partner.example"
          allowedMethods: "*"
          allowedHeaders: "*"
          allowCredentials: true
"#,
        url = up.url()
    ))
    .await;
    let c = client();
    let pre = |path: &str, origin: &str, method: &str| {
        c.request(reqwest::Method::OPTIONS, gw.url(path))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let before = up.hits.load(Ordering::Relaxed);
    // The route only takes GET, but a preflight ignores Method predicates.
    let res = pre("/api/x", "https://shop.example", "POST").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert_eq!(res.headers()["access-control-allow-methods"], "GET,POST");
    assert_eq!(
        up.hits.load(Ordering::Relaxed),
        before,
        "preflights are answered at the edge"
    );
    problem(
        pre("/api/x", "https://evil.example", "GET").await.unwrap(),
        403,
    )
    .await;
    problem(
        pre("/api/x", "https://shop.example", "DELETE")
            .await
            .unwrap(),
        403,
    )
    .await;
    // Per-route configuration wins.
    let res = pre("/open/x", "https://a.partner.example", "DELETE")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["access-control-allow-credentials"], "true");
    // Actual requests get the headers, or 403 from a foreign origin.
    let res = c
        .get(gw.url("/api/x"))
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert_eq!(res.headers()["access-control-expose-headers"], "x-total");
    problem(
        c.get(gw.url("/api/x"))
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    // Same-origin requests (no Origin header) are untouched.
    let res = c.get(gw.url("/api/x")).send().await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn composition_merges_parts_and_marks_failures() {
    let a = upstream("order").await;
    let b = upstream("kitchen").await;
    let dead = upstream("dead").await;
    let dead_url = dead.url();
    dead.kill();
    drop(dead);
    let gw = gateway(&format!(
        r#"
gateway:
  discovery:
    services:
      kitchen: ["{b}"]
  routes:
    - id: details
      predicates: ["Path=/orders/{{id}}", Method=GET]
      compose:
        timeout: 5s
        parts:
          - {{ name: order, uri: "{a}/orders/{{id}}", merge: true, required: true }}
          - {{ name: ticket, uri: "lb://kitchen/tickets/{{id}}" }}
          - {{ name: payment, uri: "{a}/status/500" }}
          - {{ name: delivery, uri: "{a}/status/404" }}
          - {{ name: slow, uri: "{a}/slow/10000", timeout: 200ms }}
          - {{ name: down, uri: "{dead_url}/x" }}
    - id: missing-order
      predicates: ["Path=/missing/{{id}}"]
      compose:
        parts:
          - {{ name: order, uri: "{a}/status/404", required: true }}
"#,
        a = a.url(),
        b = b.url()
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = client();
    let t0 = std::time::Instant::now();
    let res = c.get(gw.url("/orders/42")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    // The slow part's own 200 ms limit, not the composition's 5 s (room left for a stall).
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "a part's timeout bounds it: {:?}",
        t0.elapsed()
    );
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        v["path"], "/orders/42",
        "the order part is merged at the top: {v}"
    );
    assert_eq!(v["ticket"]["path"], "/tickets/42");
    assert_eq!(v["ticket"]["upstream"], "kitchen");
    assert!(v["payment"].is_null() && v["delivery"].is_null() && v["slow"].is_null());
    let unavailable: Vec<&str> = v["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(unavailable, ["payment", "slow", "down"]);
    problem(c.get(gw.url("/missing/1")).send().await.unwrap(), 404).await;
}

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";

fn token(claims: Value, secret: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let head = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64.encode(serde_json::to_vec(&claims).unwrap());
    let input = format!("{head}.{body}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let sig = b64.encode(ring::hmac::sign(&key, input.as_bytes()).as_ref());
    format!("{input}.{sig}")
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn jwt_guards_routes_and_forwards_claims() {
    let up = upstream("u").await;
    let gw = gateway(&format!(
        r#"
gateway:
  jwt:
    keys: [{{ alg: HS256, secret: "{SECRET}" }}]
    issuer: https://auth.example
  routes:
    - id: admin
      uri: {url}
      predicates: [Path=/admin/**]
      filters:
        - name: JWT
          args: {{ roles: [admin] }}
    - id: me
      uri: {url}
      predicates: [Path=/me/**]
      filters: [JWT]
"#,
        url = up.url()
    ))
    .await;
    let c = client();
    let good = |roles: Value, exp: i64| {
        token(
            serde_json::json!({"sub": "ada", "iss": "https://auth.example", "exp": exp, "roles": roles}),
            SECRET,
        )
    };
    // No token: 401 with a challenge; the upstream is not called.
    let res = c.get(gw.url("/me/x")).send().await.unwrap();
    assert_eq!(
        res.headers()["www-authenticate"],
        "Bearer error=\"invalid_request\""
    );
    problem(res, 401).await;
    assert_eq!(up.hits.load(Ordering::Relaxed), 0);
    // Good token: claims forwarded, forged headers replaced.
    let res = c
        .get(gw.url("/me/x"))
        .bearer_auth(good(serde_json::json!(["user"]), now_s() + 60))
        .header("x-auth-subject", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["headers"]["x-auth-subject"], "ada");
    assert_eq!(v["headers"]["x-auth-roles"], "user");
    // Expired, wrong key, wrong issuer: 401.
    for bad in [
        good(serde_json::json!(["user"]), now_s() - 3600),
        token(
            serde_json::json!({"sub": "ada", "iss": "https://auth.example", "exp": now_s() + 60}),
            "another-secret-another-secret-0000",
        ),
        token(
            serde_json::json!({"sub": "ada", "iss": "https://evil.example", "exp": now_s() + 60}),
            SECRET,
        ),
    ] {
        let res = c
            .get(gw.url("/me/x"))
            .bearer_auth(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        problem(res, 401).await;
    }
    // Missing role: 403; with it: 200.
    let p = problem(
        c.get(gw.url("/admin/x"))
            .bearer_auth(good(serde_json::json!(["user"]), now_s() + 60))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    assert_eq!(p["route"], "admin");
    let res = c
        .get(gw.url("/admin/x"))
        .bearer_auth(good(serde_json::json!(["admin"]), now_s() + 60))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn local_rate_limiter_answers_429_with_headers() {
    let up = upstream("u").await;
    let gw = gateway(&format!(
        r#"
gateway:
  routes:
    - id: limited
      uri: {url}
      predicates: [Path=/**]
      filters:
        - name: RequestRateLimiter
          args: {{ replenishRate: 1, burstCapacity: 3, key-resolver: "header:X-Api-Key" }}
"#,
        url = up.url()
    ))
    .await;
    let c = client();
    for i in 0..3 {
        let res = c
            .get(gw.url("/x"))
            .header("x-api-key", "k1")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "request {i}");
        assert_eq!(res.headers()["x-ratelimit-burst-capacity"], "3");
        assert_eq!(
            res.headers()["x-ratelimit-remaining"],
            (2 - i).to_string().as_str()
        );
    }
    let res = c
        .get(gw.url("/x"))
        .header("x-api-key", "k1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
    assert!(res.headers().contains_key("retry-after"));
    problem(res, 429).await;
    // Another key has its own bucket; no key at all is refused (deny-empty-key).
    let res = c
        .get(gw.url("/x"))
        .header("x-api-key", "k2")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    problem(c.get(gw.url("/x")).send().await.unwrap(), 403).await;
}

#[tokio::test]
async fn redis_rate_limiter_is_shared_and_fails_as_configured() {
    let up = upstream("u").await;
    let route = |redis: &str, fail_open: bool, key: &str| {
        format!(
            r#"
gateway:
  rate-limiter:
    redis: {{ url: "{redis}", timeout: 200ms, fail-open: {fail_open} }}
  routes:
    - id: shared-{key}
      uri: {url}
      predicates: [Path=/**]
      filters:
        - name: RequestRateLimiter
          args:
            key-resolver: "header:X-Api-Key"
            redis-rate-limiter: {{ replenishRate: 1, burstCapacity: 4 }}
"#,
            url = up.url()
        )
    };
    let c = client();
    // Redis down: fail closed is 503, fail open lets requests through.
    let closed = gateway(&route("redis://127.0.0.1:1", false, "closed")).await;
    let p = problem(
        c.get(closed.url("/x"))
            .header("x-api-key", "k")
            .send()
            .await
            .unwrap(),
        503,
    )
    .await;
    assert!(
        p["type"]
            .as_str()
            .unwrap()
            .ends_with("rate-limiter-unavailable")
    );
    let open = gateway(&route("redis://127.0.0.1:1", true, "open")).await;
    let res = c
        .get(open.url("/x"))
        .header("x-api-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let Ok(redis) = std::env::var("KEEL_TEST_REDIS_URL") else {
        eprintln!("NOTICE: KEEL_TEST_REDIS_URL is not set; skipping the shared Redis bucket part");
        return;
    };
    // Two gateways, one Redis: one budget of 4 for the same route and key.
    let key = format!("k{}", now_s());
    let g1 = gateway(&route(&redis, false, &key)).await;
    let g2 = gateway(&route(&redis, false, &key)).await;
    let mut ok = 0;
    for i in 0..8 {
        let gw = if i % 2 == 0 { &g1 } else { &g2 };
        let res = c
            .get(gw.url("/x"))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            ok += 1;
        } else {
            assert_eq!(res.status(), 429);
        }
    }
    assert_eq!(ok, 4, "the burst is shared by both gateways");
}

#[tokio::test]
async fn terminates_tls() {
    use tokio_rustls::rustls::{
        self,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    };
    let up = upstream("u").await;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let gw = gateway(&format!(
        "server:\n  tls:\n    certificate: {c}\n    private-key: {k}\ngateway:\n  routes:\n    - {{id: u, uri: '{url}', predicates: ['Path=/**']}}\n",
        c = fixtures.join("cert.pem").display(),
        k = fixtures.join("key.pem").display(),
        url = up.url()
    ))
    .await;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(fixtures.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /secure HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#""x-forwarded-proto":"https""#), "{text}");
    // Plain HTTP on the TLS port gets nowhere.
    let plain = client().get(gw.url("/secure")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

/// An `https://` upstream: here a TLS-terminating gateway (the test CA's certificate for
/// `localhost`) in front of a plain upstream.
async fn tls_upstream(up: &Upstream) -> Gw {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    gateway(&format!(
        "server:\n  tls:\n    certificate: {c}\n    private-key: {k}\ngateway:\n  routes:\n    - {{id: u, uri: '{url}', predicates: ['Path=/**']}}\n",
        c = fixtures.join("cert.pem").display(),
        k = fixtures.join("key.pem").display(),
        url = up.url()
    ))
    .await
}

fn spring_https_route(port: u16, ssl: &str) -> String {
    format!(
        "spring:\n  cloud:\n    gateway:\n      httpclient:\n        ssl:\n{ssl}      routes:\n        - id: s\n          uri: https://localhost:{port}\n          predicates: ['Path=/**']\n"
    )
}

#[tokio::test]
async fn https_upstreams_are_verified_against_the_trusted_certificates() {
    let up = upstream("secure").await;
    let front = tls_upstream(&up).await;
    let port = front.addr.port();
    let ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ca.pem");
    // Trusting the test CA: proxied over TLS, with the upstream's own Host.
    let trusted = gateway(&spring_https_route(
        port,
        &format!(
            "          trusted-x509-certificates: ['file:{}']\n",
            ca.display()
        ),
    ))
    .await;
    for _ in 0..3 {
        let res = client().get(trusted.url("/hello")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["upstream"], "secure", "{body}");
        // The second hop was https to localhost (the certificate's name).
        assert_eq!(
            body["headers"]["x-forwarded-proto"], "http, https",
            "{body}"
        );
        let host = format!("localhost:{port}");
        assert!(
            body["headers"]["x-forwarded-host"]
                .as_str()
                .is_some_and(|h| h.ends_with(&host)),
            "{body}"
        );
    }
    // Only the system's roots: the test CA is unknown, the handshake fails, 502 problem.
    let untrusted = gateway(&spring_https_route(
        port,
        "          use-insecure-trust-manager: false\n",
    ))
    .await;
    let res = client().get(untrusted.url("/hello")).send().await.unwrap();
    let p = problem(res, 502).await;
    assert!(
        p["detail"].as_str().unwrap_or_default().contains("TLS")
            || p.to_string().contains("certificate"),
        "{p}"
    );
    // The insecure trust manager accepts any certificate.
    let insecure = gateway(&spring_https_route(
        port,
        "          use-insecure-trust-manager: true\n",
    ))
    .await;
    let res = client().get(insecure.url("/hello")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    // A trusted-certificates file that holds no certificate is a load error naming the key.
    let file = std::env::temp_dir().join(format!("keel-gw-notcert-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        spring_https_route(port, "          trusted-x509-certificates: [/dev/null]\n"),
    )
    .unwrap();
    let config = keel_gateway::GatewayConfig::load(&file, &[]).unwrap();
    let _ = std::fs::remove_file(&file);
    let e = keel_gateway::check(&config).unwrap_err().to_string();
    assert!(
        e.contains("httpclient.ssl.trusted-x509-certificates"),
        "{e}"
    );
    assert!(e.contains("/dev/null"), "{e}");
}

#[tokio::test]
async fn discovery_locator_routes_by_service_name() {
    let a = upstream("inventory").await;
    let gw = gateway(&format!(
        r#"
spring.cloud.gateway:
  discovery.locator:
    enabled: true
    lower-case-service-id: true
gateway.discovery.services:
  inventory: ["{a}"]
"#,
        a = a.url()
    ))
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = client();
    let res = c.get(gw.url("/INVENTORY/items/7")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["path"], "/items/7");
    assert_eq!(v["headers"]["x-forwarded-prefix"], "/INVENTORY");
    problem(c.get(gw.url("/unknown/x")).send().await.unwrap(), 404).await;
}

#[tokio::test]
async fn oversized_heads_and_metrics() {
    let up = upstream("u").await;
    let gw = gateway(&format!(
        "server:\n  max-header-bytes: 2KB\ngateway:\n  routes:\n    - {{id: metered, uri: '{}', predicates: ['Path=/m/**']}}\n",
        up.url()
    ))
    .await;
    let c = client();
    let p = problem(
        c.get(gw.url("/m/x"))
            .header("x-big", "b".repeat(4096))
            .send()
            .await
            .unwrap(),
        431,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("2048"), "{p}");
    assert_eq!(c.get(gw.url("/m/x")).send().await.unwrap().status(), 200);
    let text = c
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("keel_gateway_requests_total")
                && l.contains("route=\"metered\"")
                && l.contains("status=\"200\"")),
        "{text}"
    );
    assert!(text.contains("keel_gateway_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn h2c_upstreams() {
    use hyper::{Response, service::service_fn};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = format!("{:?} {}", req.version(), req.uri().path());
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        bytes::Bytes::from(body),
                    )))
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
    let gw = gateway(&format!(
        "gateway:\n  routes:\n    - {{id: grpcish, uri: 'h2c://{addr}', predicates: ['Path=/**']}}\n"
    ))
    .await;
    let text = client()
        .get(gw.url("/svc/Method"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "HTTP/2.0 /svc/Method");
}

/// Every remaining predicate and filter, each against the real upstream.
#[tokio::test]
async fn every_other_predicate_and_filter() {
    let up = upstream("u").await;
    let gw = gateway(&format!(
        r#"
gateway:
  routes:
    - id: weight-a
      uri: {url}
      predicates: [Path=/w, "Weight=g, 1"]
      filters: ["AddResponseHeader=X-Pick, a"]
    - id: weight-b
      uri: {url}
      predicates: [Path=/w, "Weight=g, 1"]
      filters: ["AddResponseHeader=X-Pick, b"]
    - id: remote
      uri: {url}
      predicates: [Path=/remote, "RemoteAddr=10.0.0.0/8"]
    - id: remote-local
      uri: {url}
      predicates: [Path=/remote, "RemoteAddr=127.0.0.1/32"]
      filters: ["AddResponseHeader=X-Remote, local"]
    - id: time
      uri: {url}
      predicates: [Path=/time, "After=2000-01-01T00:00:00Z", "Before=2999-01-01T00:00:00Z[UTC]"]
    - id: never
      uri: {url}
      predicates: [Path=/between, "Between=1990-01-01T00:00:00Z, 1991-01-01T00:00:00Z"]
    - id: headers
      uri: {url}
      predicates: ["Path=/h/{{x}}"]
      filters:
        - PreserveHostHeader
        - MapRequestHeader=X-From, X-To
        - "SetRequestHeader=X-Set, v-{{x}}"
        - RemoveRequestParameter=drop
        - "AddRequestHeadersIfNotPresent=X-Default:d,X-From:ignored"
        - "SetResponseHeader=Content-Type, application/x-keel"
        - RemoveResponseHeader=Content-Length
        - "AddResponseHeader=X-Echo, left-right"
        - "RewriteResponseHeader=X-Echo, (\\w+)-(\\w+), $2-$1"
    - id: host
      uri: {url}
      predicates: [Path=/sethost]
      filters: [SetRequestHostHeader=api.internal]
    - id: head-size
      uri: {url}
      predicates: [Path=/small-head]
      filters: ["RequestHeaderSize=200B"]
    - id: body
      uri: no://op
      predicates: [Path=/body]
      filters: ["SetResponseBody=hello, text/plain"]
"#,
        url = up.url()
    ))
    .await;
    let c = client();
    // Weight: both routes of the group are drawn, roughly half each.
    let mut a = 0;
    for _ in 0..200 {
        let res = c.get(gw.url("/w")).send().await.unwrap();
        if res.headers()["x-pick"] == "a" {
            a += 1;
        }
    }
    assert!((50..=150).contains(&a), "{a} of 200 went to a");
    // RemoteAddr: the client is 127.0.0.1.
    let res = c.get(gw.url("/remote")).send().await.unwrap();
    assert_eq!(res.headers()["x-remote"], "local");
    assert_eq!(c.get(gw.url("/time")).send().await.unwrap().status(), 200);
    assert_eq!(
        c.get(gw.url("/between")).send().await.unwrap().status(),
        404
    );
    // Request and response header filters.
    let res = c
        .get(gw.url("/h/7?keep=1&drop=2"))
        .header("host", "public.example")
        .header("x-from", "f")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "application/x-keel");
    assert_eq!(res.headers()["x-echo"], "right-left");
    let v: Value = res.json().await.unwrap();
    let h = &v["headers"];
    assert_eq!(h["host"], "public.example");
    assert_eq!(h["x-to"], "f");
    assert_eq!(h["x-set"], "v-7");
    assert_eq!(h["x-default"], "d");
    assert_eq!(h["x-from"], "f");
    assert_eq!(v["query"], "keep=1");
    let v: Value = c
        .get(gw.url("/sethost"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["headers"]["host"], "api.internal");
    let p = problem(
        c.get(gw.url("/small-head"))
            .header("x-long", "l".repeat(300))
            .send()
            .await
            .unwrap(),
        431,
    )
    .await;
    assert_eq!(p["route"], "head-size");
    let res = c.get(gw.url("/body")).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/plain");
    assert_eq!(res.text().await.unwrap(), "hello");
}

#[tokio::test]
async fn per_route_connect_timeout() {
    // A listener whose accept queue is full: further connection attempts hang.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let gw = gateway(&format!(
        "gateway:\n  routes:\n    - id: full\n      uri: http://{addr}\n      predicates: [Path=/**]\n      metadata: {{ connect-timeout: 150, response-timeout: 5000 }}\n"
    ))
    .await;
    let t0 = std::time::Instant::now();
    let p = problem(client().get(gw.url("/x")).send().await.unwrap(), 502).await;
    assert!(p["detail"].as_str().unwrap().contains("connect"), "{p}");
    // The 150 ms connect timeout, not the 5 s response timeout (room left for a stall).
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    drop(listener);
}

/// An upstream that counts the connections it accepted and answers every request with a
/// fixed body (known length, or chunked for `/chunked`).
async fn counting_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use hyper::{Response, service::service_fn};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            n.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = if req.uri().path() == "/chunked" {
                        let stream = futures::stream::iter(["one ", "two ", "three"].map(|p| {
                            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                                bytes::Bytes::from(p),
                            ))
                        }));
                        http_body_util::Either::Left(http_body_util::StreamBody::new(stream))
                    } else {
                        http_body_util::Either::Right(http_body_util::Full::new(
                            bytes::Bytes::from("one two three"),
                        ))
                    };
                    Ok::<_, std::convert::Infallible>(Response::new(body))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// Upstream connections are kept alive and reused: many requests in a row, with bodies of
/// known length and chunked ones, go over one connection.
#[tokio::test]
async fn upstream_connections_are_reused() {
    let (addr, accepted) = counting_upstream().await;
    let gw = one_route_gateway(addr).await;
    let c = client();
    for i in 0..30 {
        let path = if i % 2 == 0 { "/fixed" } else { "/chunked" };
        let res = c.get(gw.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), "one two three", "request {i}");
    }
    let n = accepted.load(Ordering::SeqCst);
    assert!(
        n <= 2,
        "30 sequential requests opened {n} upstream connections"
    );
}

/// A gateway routing everything to `up`, with `server.header-read-timeout` at 300 ms.
async fn short_idle_gateway(up: &Upstream) -> Gw {
    gateway(&format!(
        "server:\n  header-read-timeout: 300ms\ngateway:\n  routes:\n    - {{id: u, uri: '{}', predicates: ['Path=/**']}}\n",
        up.url()
    ))
    .await
}

/// `server.header-read-timeout` is how long a connection may go without a request in
/// progress: a client that sends part of a request head (all at once or a byte at a time)
/// and an idle keep-alive connection are closed after it; a request whose upstream takes
/// longer than it is not cut, and its connection serves the next request.
#[tokio::test]
async fn slow_heads_and_idle_connections_are_closed_but_slow_responses_are_not() {
    use tokio::net::TcpStream;
    let up = upstream("u").await;
    let gw = short_idle_gateway(&up).await;
    // Reads until the gateway closes the connection; how long that took and what came.
    async fn until_closed(s: &mut TcpStream, started: std::time::Instant) -> (Duration, String) {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .expect("the gateway did not close the connection");
        (
            started.elapsed(),
            String::from_utf8_lossy(&buf).into_owned(),
        )
    }

    // Upper bounds leave room for a stalled machine: a connection that is never closed
    // waits out the 10 s above, a dribbled head would take over 20 s.
    // Half a head, then silence.
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (took, got) = until_closed(&mut s, started).await;
    assert!(took >= Duration::from_millis(290), "closed after {took:?}");
    assert!(took < Duration::from_secs(8), "closed after {took:?}");
    assert!(!got.contains("200 OK"), "{got}");

    // A byte every 50 ms: the head never completes, and dribbling buys no time.
    let started = std::time::Instant::now();
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let dribble = tokio::spawn(async move {
        let head = format!(
            "GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: {}",
            "a".repeat(400)
        );
        for b in head.bytes() {
            if w.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut buf))
        .await
        .expect("the gateway did not close a dribbling connection");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "closed after {took:?}");
    dribble.abort();

    // One request on a keep-alive connection, then nothing.
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (took, got) = until_closed(&mut s, started).await;
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    assert!(took >= Duration::from_millis(290), "closed after {took:?}");
    assert!(took < Duration::from_secs(8), "closed after {took:?}");

    // An upstream slower than the timeout: the response comes, and the same connection
    // (the client keeps one) serves the next request.
    let c = client();
    let res = c.get(gw.url("/slow/900")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["slept"], 900);
    let res = c.get(gw.url("/echo")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    gw.stop().await;
}

/// The same limit closes an idle HTTP/2 (prior knowledge) client connection — gracefully,
/// so the client's connection ends without an error — and a request in progress on it is not
/// cut.
#[tokio::test]
async fn idle_http2_connections_are_closed_after_the_timeout() {
    use http_body_util::{BodyExt, Empty};
    let up = upstream("u").await;
    let gw = short_idle_gateway(&up).await;
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let conn = tokio::spawn(conn);
    // Slower than the timeout: answered in full.
    let req = hyper::Request::get(format!("http://{}/slow/700", gw.addr))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("\"slept\":700"));
    // Then idle: the gateway ends the connection about the timeout later.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the idle HTTP/2 connection was not closed");
    let took = started.elapsed();
    let ended = ended.unwrap();
    assert!(
        ended.is_ok(),
        "the connection ended with an error: {ended:?}"
    );
    assert!(took >= Duration::from_millis(990), "closed after {took:?}");
    assert!(took < Duration::from_secs(8), "closed after {took:?}");
    gw.stop().await;
}

/// An upstream written byte by byte: each connection reads request heads and answers each
/// with the canned bytes for its path (with pauses where `|` stands), closing where the
/// script says so. Counts the connections it accepted.
async fn scripted_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Connections the gateway closed (the upstream read their end).
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (n, gone) = (accepted.clone(), closed.clone());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            n.fetch_add(1, Ordering::SeqCst);
            let gone = gone.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) => {
                                gone.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let (script, close): (&str, bool) = match path.as_str() {
                        "/split-chunked" => (
                            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nab|cd\r\n3;x=y\r\nefg\r\n0\r\ntrailer: t\r\n|\r\n",
                            false,
                        ),
                        "/until-close" => (
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart one |part two",
                            true,
                        ),
                        "/length-slow" => (
                            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n01234|56789",
                            false,
                        ),
                        "/close" => (
                            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                            true,
                        ),
                        "/interim" => (
                            "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                            false,
                        ),
                        "/malformed" => ("HTTP/1.1 abc\r\n\r\n", true),
                        "/truncated" => ("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", true),
                        "/drop" => ("", true),
                        // Answers, then closes the idle connection shortly after, as an
                        // upstream with a short keep-alive timeout does.
                        "/idle-close" => ("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok|", true),
                        _ => ("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nhey", false),
                    };
                    for (i, part) in script.split('|').enumerate() {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(40)).await;
                        }
                        if s.write_all(part.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, closed)
}

/// The fast path to plain HTTP/1.1 upstreams (requests without a body) reads every response
/// framing as it arrives — chunked in pieces with trailers, close-delimited, a length split
/// over two writes, interim 1xx responses skipped — reuses connections only when the upstream
/// allows it, goes around an idle connection the upstream closed, and answers 502 for a
/// malformed response or a connection closed without one.
#[tokio::test]
async fn every_response_framing_is_read_on_the_fast_path() {
    let (addr, accepted, _) = scripted_upstream().await;
    let gw = one_route_gateway(addr).await;
    let c = client();
    let get = |path: &'static str| {
        let c = c.clone();
        let url = gw.url(path);
        async move {
            let res = c.get(url).send().await.unwrap();
            let status = res.status().as_u16();
            (status, res.text().await)
        }
    };
    for (path, want) in [
        ("/split-chunked", "abcdefg"),
        ("/length-slow", "0123456789"),
        ("/interim", "ok"),
        ("/plain", "hey"),
    ] {
        let (status, body) = get(path).await;
        assert_eq!((status, body.unwrap().as_str()), (200, want), "{path}");
    }
    // All four on one kept-alive connection.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    let (status, body) = get("/until-close").await;
    assert_eq!((status, body.unwrap().as_str()), (200, "part one part two"));
    let (status, body) = get("/close").await;
    assert_eq!((status, body.unwrap().as_str()), (200, "ok"));
    let before = accepted.load(Ordering::SeqCst);
    let (status, body) = get("/plain").await;
    assert_eq!((status, body.unwrap().as_str()), (200, "hey"));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        before + 1,
        "a connection the upstream asked to close is not reused"
    );

    // The upstream closes the connection after answering; the next request goes around it.
    let (status, _) = get("/idle-close").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let (status, body) = get("/plain").await;
        assert_eq!((status, body.unwrap().as_str()), (200, "hey"));
    }

    // A HEAD's response has no body, whatever its Content-Length says.
    let res = c.head(gw.url("/length-slow")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.unwrap().len(), 0);

    for path in ["/malformed", "/drop"] {
        let res = c.get(gw.url(path)).send().await.unwrap();
        let p = problem(res, 502).await;
        assert_eq!(p["route"], "up", "{path}: {p}");
    }
    // A body cut short reaches the client as a failed response (its head may or may not
    // have been sent before the upstream's end was seen), never as a complete one.
    let cut = match c.get(gw.url("/truncated")).send().await {
        Ok(res) => res.bytes().await.err(),
        Err(e) => Some(e),
    };
    assert!(cut.is_some(), "a truncated body was answered as complete");
}

/// An idle fast-path connection is closed once `httpclient.pool.max-idle-time` has passed,
/// even when no request goes to its upstream any more.
#[tokio::test]
async fn idle_fast_path_connections_are_closed_after_the_idle_time() {
    let (addr, accepted, closed) = scripted_upstream().await;
    let gw = gateway(&format!(
        "gateway:\n  httpclient:\n    pool:\n      max-idle-time: 300ms\n  routes:\n    - {{id: up, uri: 'http://{addr}', predicates: ['Path=/**']}}\n"
    ))
    .await;
    let res = client().get(gw.url("/plain")).send().await.unwrap();
    assert_eq!(res.text().await.unwrap(), "hey");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let started = std::time::Instant::now();
    while closed.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the idle upstream connection was not closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the idle time: {:?}",
        started.elapsed()
    );
}

/// What [`recording_upstream`] saw: each request's head (lower-cased) and body, as they
/// arrived on the wire.
type Recorded = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// An upstream read off the wire: records each request's head and `Content-Length` body and
/// answers with that body. Counts the connections it accepted.
async fn recording_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    Recorded,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let recorded = Recorded::default();
    let (n, seen) = (accepted.clone(), recorded.clone());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            n.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    buf.drain(..end);
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..len).collect();
                    let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
                    seen.lock().unwrap().push((head, body.clone()));
                    if s.write_all(answer.as_bytes()).await.is_err()
                        || s.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted, recorded)
}

/// Request bodies reach the upstream whole with their exact length: small ones (read before
/// the call, then sent with the head in one write on the fast path) over reused connections,
/// one at the 16 KiB limit, a larger one streamed; a client's `Expect: 100-continue` gets its
/// `100 Continue` from the gateway and is not passed on with a body sent at once.
#[tokio::test]
async fn request_bodies_reach_plain_upstreams_whole() {
    let (addr, accepted, recorded) = recording_upstream().await;
    let gw = one_route_gateway(addr).await;
    let c = client();
    for i in 0..20 {
        let body = format!("{{\"order\":{i},\"items\":[\"soup\",\"bread\"]}}");
        let res = c
            .post(gw.url("/orders"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), body, "request {i}");
    }
    let n = accepted.load(Ordering::SeqCst);
    assert!(
        n <= 2,
        "20 sequential POSTs opened {n} upstream connections"
    );
    {
        let seen = recorded.lock().unwrap();
        assert_eq!(seen.len(), 20);
        for (i, (head, body)) in seen.iter().enumerate() {
            assert!(head.starts_with("post /orders http/1.1\r\n"), "{head}");
            assert!(
                head.contains(&format!("content-length: {}\r\n", body.len())),
                "{head}"
            );
            assert!(
                head.contains("content-type: application/json\r\n"),
                "{head}"
            );
            assert_eq!(
                body,
                format!("{{\"order\":{i},\"items\":[\"soup\",\"bread\"]}}").as_bytes()
            );
        }
    }
    for size in [16 * 1024, 64 * 1024 + 7] {
        let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        let res = c
            .put(gw.url("/blob"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.bytes().await.unwrap(), body, "{size} bytes");
    }

    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /expect HTTP/1.1\r\nhost: shop\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_until(&mut s, |b| b.windows(4).any(|w| w == b"\r\n\r\n")).await;
    assert!(
        got.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(b"hello").await.unwrap();
    let got = read_until(&mut s, |b| b.ends_with(b"hello")).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let seen = recorded.lock().unwrap();
    let (head, body) = seen.last().unwrap();
    assert!(head.starts_with("post /expect "), "{head}");
    assert!(!head.contains("expect:"), "{head}");
    assert_eq!(body, b"hello");
}

#[tokio::test]
async fn a_small_body_that_stops_arriving_is_answered_408_after_the_body_read_timeout() {
    // A route with no time limit of its own: `server.body-read-timeout` bounds the read.
    let (addr, _accepted, recorded) = recording_upstream().await;
    let gw = gateway(&format!(
        "server:\n  body-read-timeout: 2s\ngateway:\n  routes:\n    - {{id: up, uri: 'http://{addr}', predicates: ['Path=/**']}}\n"
    ))
    .await;
    let (text, waited) = stalled_body_problem(gw.addr, "/orders").await;
    assert!(text.contains("\"route\":\"up\""), "{text}");
    assert!(text.contains("within 2000 ms"), "{text}");
    assert!(waited >= Duration::from_millis(1950), "{waited:?}");
    assert!(recorded.lock().unwrap().is_empty(), "nothing went upstream");
    // A body that arrives, even in pieces, within the time goes through whole (2 s: room for
    // a stalled machine between the pieces).
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /orders HTTP/1.1\r\nhost: shop\r\ncontent-length: 10\r\n\r\nabc")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"defghij").await.unwrap();
    let got = read_until(&mut s, |b| b.ends_with(b"abcdefghij")).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

/// A gateway with one route sending everything to the plain HTTP upstream at `addr`.
async fn one_route_gateway(addr: std::net::SocketAddr) -> Gw {
    gateway(&format!(
        "gateway:\n  routes:\n    - {{id: up, uri: 'http://{addr}', predicates: ['Path=/**']}}\n"
    ))
    .await
}

/// Reads from a raw client connection until `done` holds for what arrived (at most 5 s per
/// read; the connection closing first fails the test).
async fn read_until(s: &mut tokio::net::TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 2048];
    while !done(&got) {
        let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no answer; so far: {}", String::from_utf8_lossy(&got)))
            .unwrap();
        assert!(
            k > 0,
            "closed early; so far: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..k]);
    }
    got
}
