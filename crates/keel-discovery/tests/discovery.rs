//! Discovery end to end against a real registry and real HTTP backends: registration and
//! heartbeats, push-fed cache, `lb://` balancing with retry on another instance, and
//! clients that keep working while the registry is down and recover when it returns.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::future::BoxFuture;
use keel_chassis::{Service as ChassisService, ShutdownHandle, axum};
use keel_discovery::{
    Balancer, BalancerConfig, Discovery, DiscoveryConfig, LoadBalanceLayer, Registrar,
    RegistrationConfig, Strategy,
};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceBuilder, ServiceExt};

async fn start_registry(
    addr: SocketAddr,
) -> (SocketAddr, ShutdownHandle, tokio::task::JoinHandle<()>) {
    let mut c = keel_registry::default_config();
    c.server.listen = addr;
    c.app.eviction_interval_ms = 200;
    let svc = ChassisService::from_config("registry", c).handle_signals(false);
    let router = keel_registry::app(&svc);
    let bound = svc.bind().await.unwrap();
    let addr = bound.local_addr().unwrap();
    let handle = bound.shutdown_handle();
    let task = tokio::spawn(async move {
        let _ = bound.serve(router).await;
    });
    (addr, handle, task)
}

/// A backend answering `GET /who` with its name; optionally always failing with 500.
async fn backend(name: &'static str, fail: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/who",
        axum::routing::get(move || async move {
            if fail {
                (http::StatusCode::INTERNAL_SERVER_ERROR, name)
            } else {
                (http::StatusCode::OK, name)
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn registrar(registry: SocketAddr, port: u16) -> Registrar {
    Registrar::new(
        RegistrationConfig {
            registry: vec![format!("http://{registry}")],
            service: "who".into(),
            port,
            renewal_interval_ms: 200,
            lease_duration_ms: 1_000,
            ..Default::default()
        },
        reqwest::Client::new(),
    )
}

/// An HTTP client as a tower service (reqwest underneath).
#[derive(Clone)]
struct Http(reqwest::Client);

impl Service<http::Request<String>> for Http {
    type Response = http::Response<Bytes>;
    type Error = reqwest::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<String>) -> Self::Future {
        let client = self.0.clone();
        Box::pin(async move {
            let req = reqwest::Request::try_from(req)?;
            let res = client.execute(req).await?;
            let status = res.status();
            let body = res.bytes().await?;
            let mut out = http::Response::new(body);
            *out.status_mut() = status;
            Ok(out)
        })
    }
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within 15 s: {what}");
}

#[tokio::test]
async fn instances_are_pushed_balanced_and_survive_a_registry_outage() {
    let (reg_addr, reg_handle, reg_task) = start_registry("127.0.0.1:0".parse().unwrap()).await;
    let a = backend("a", false).await;
    let b = backend("b", false).await;
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    tokio::spawn(registrar(reg_addr, a.port()).run(stop_a.clone()));
    tokio::spawn(registrar(reg_addr, b.port()).run(stop_b.clone()));

    let discovery = Discovery::start(
        DiscoveryConfig {
            registry: vec![format!("http://{reg_addr}")],
            ..Default::default()
        },
        reqwest::Client::new(),
    );
    let catalog = discovery.catalog().clone();
    eventually("both instances pushed to the client", || {
        catalog.instances("who").len() == 2
    })
    .await;

    let balancer = Balancer::new(
        catalog.clone(),
        BalancerConfig {
            strategy: Strategy::RoundRobin,
            ..Default::default()
        },
    )
    .unwrap();
    let mut client = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(balancer.clone()))
        .service(Http(reqwest::Client::new()));
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        let req = http::Request::get("lb://who/who")
            .body(String::new())
            .unwrap();
        let res = client.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), 200);
        *seen
            .entry(String::from_utf8_lossy(res.body()).into_owned())
            .or_default() += 1;
    }
    assert_eq!(seen.get("a"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&5), "{seen:?}");

    // Graceful stop of b deregisters it; the watch removes it from the client at once.
    stop_b.cancel();
    eventually("b removed by push", || catalog.instances("who").len() == 1).await;

    // The registry dies: the client keeps its last known instances and keeps working.
    reg_handle.shutdown();
    reg_task.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(catalog.instances("who").len(), 1);
    assert!(catalog.staleness().unwrap() >= Duration::from_millis(1_000));
    let req = http::Request::get("lb://who/who")
        .body(String::new())
        .unwrap();
    let res = client.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.body().as_ref(), b"a");

    // It comes back empty on the same port: a's heartbeat gets 404, a registers again,
    // the client's watch reconnects and sees it.
    let (_addr2, reg2_handle, _t) = start_registry(reg_addr).await;
    let fresh = || {
        catalog
            .staleness()
            .is_some_and(|s| s < Duration::from_millis(500))
    };
    eventually("watch reconnected", fresh).await;
    eventually("a re-registered and pushed", || {
        catalog.instances("who").iter().any(|i| i.port == a.port())
    })
    .await;
    stop_a.cancel();
    reg2_handle.shutdown();
}

#[tokio::test]
async fn a_dead_instance_is_retried_elsewhere_and_a_failing_one_ejected() {
    let (reg_addr, _h, _t) = start_registry("127.0.0.1:0".parse().unwrap()).await;
    let good = backend("good", false).await;
    let bad = backend("bad", true).await;
    // An instance that is registered but not listening at all.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for port in [good.port(), bad.port(), dead_port] {
        tokio::spawn(registrar(reg_addr, port).run(CancellationToken::new()));
    }
    let discovery = Discovery::start(
        DiscoveryConfig {
            registry: vec![format!("http://{reg_addr}")],
            ..Default::default()
        },
        reqwest::Client::new(),
    );
    let catalog = discovery.catalog().clone();
    eventually("three instances", || catalog.instances("who").len() == 3).await;
    let balancer = Balancer::new(
        catalog.clone(),
        BalancerConfig {
            strategy: Strategy::RoundRobin,
            retries: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let mut client = ServiceBuilder::new()
        .layer(LoadBalanceLayer::new(balancer.clone()))
        .service(Http(reqwest::Client::new()));
    // Every GET succeeds: a refused connection or a 500 is retried on another instance.
    for _ in 0..30 {
        let req = http::Request::get("lb://who/who")
            .body(String::new())
            .unwrap();
        let res = client.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.body().as_ref(), b"good");
    }
    let id = |port: u16| {
        catalog
            .instances("who")
            .iter()
            .find(|i| i.port == port)
            .unwrap()
            .id
            .clone()
    };
    assert!(balancer.is_ejected("who", &id(bad.port())), "500s eject");
    assert!(
        balancer.is_ejected("who", &id(dead_port)),
        "refused connections eject"
    );
    assert!(!balancer.is_ejected("who", &id(good.port())));
}
