//! DNS discovery against a real DNS server (dnsmasq, started by the test) serving SRV
//! records the way a Kubernetes headless service does.

use std::{collections::BTreeSet, process::Stdio, time::Duration};

use keel_discovery::{Discovery, DiscoveryConfig, SourceKind, source::resolve_srv};

fn dnsmasq() -> Option<std::path::PathBuf> {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn srv_records_become_instances() {
    let Some(bin) = dnsmasq() else {
        eprintln!(
            "NOTICE: skipping the DNS SRV test: dnsmasq is not installed (apt-get install dnsmasq-base; CI installs it)"
        );
        return;
    };
    let port = free_udp_port();
    let mut server = tokio::process::Command::new(bin)
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            &format!("--port={port}"),
            "--user=root",
            "--pid-file=",
            "--address=/pod-a.orders.test/127.0.0.1",
            "--srv-host=_http._tcp.orders.test,pod-a.orders.test,9001,0,10",
            "--srv-host=_http._tcp.orders.test,pod-a.orders.test,9002,0,30",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start dnsmasq");
    let dns: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let mut records = Vec::new();
    for _ in 0..50 {
        if let Ok(r) = resolve_srv("_http._tcp.orders.test", dns, Duration::from_millis(200)).await
            && !r.is_empty()
        {
            records = r;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(
        records[0].port, 9002,
        "higher weight first among equal priorities"
    );
    assert_eq!(records[0].target, "pod-a.orders.test");
    let missing = resolve_srv("_http._tcp.nothing.test", dns, Duration::from_millis(500)).await;
    assert!(missing.is_err() || missing.unwrap().is_empty());

    // As a discovery source. The targets resolve through the system resolver, which does
    // not know pod-a.orders.test — so this part uses localhost targets.
    let port2 = free_udp_port();
    let mut server2 = tokio::process::Command::new(dnsmasq().unwrap())
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            &format!("--port={port2}"),
            "--user=root",
            "--pid-file=",
            "--srv-host=_http._tcp.kitchen.test,localhost,9101,0,1",
            "--srv-host=_http._tcp.kitchen.test,localhost,9102,0,1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start dnsmasq");
    let mut config = DiscoveryConfig {
        source: SourceKind::Dns,
        poll_interval_ms: 100,
        ..Default::default()
    };
    config.dns.insert(
        "kitchen".into(),
        format!("_http._tcp.kitchen.test@127.0.0.1:{port2}"),
    );
    let d = Discovery::start(config, reqwest::Client::new());
    let got = d
        .catalog()
        .wait_for("kitchen", Duration::from_secs(10))
        .await
        .expect("instances from SRV records");
    let ports: BTreeSet<u16> = got.iter().map(|i| i.port).collect();
    assert!(ports.contains(&9101), "{got:?}");
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while d
            .catalog()
            .instances("kitchen")
            .iter()
            .map(|i| i.port)
            .collect::<BTreeSet<_>>()
            .len()
            < 2
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let ports: BTreeSet<u16> = d
        .catalog()
        .instances("kitchen")
        .iter()
        .map(|i| i.port)
        .collect();
    assert_eq!(ports, BTreeSet::from([9101, 9102]));
    let _ = server.start_kill();
    let _ = server2.start_kill();
}

#[tokio::test]
async fn a_host_target_resolves_a_records() {
    let mut config = DiscoveryConfig {
        source: SourceKind::Dns,
        poll_interval_ms: 100,
        ..Default::default()
    };
    config.dns.insert("local".into(), "localhost:8080".into());
    let d = Discovery::start(config, reqwest::Client::new());
    let got = d
        .catalog()
        .wait_for("local", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(got.iter().all(|i| i.port == 8080));
    assert!(got.iter().any(|i| i.host == "127.0.0.1" || i.host == "::1"));
}
