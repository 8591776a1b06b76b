//! DNS discovery. `host:port` resolves A/AAAA records (every address becomes an instance on
//! that port: a Kubernetes headless service). `_service._proto.name` resolves SRV records
//! (each gives a target and its port). A target may name its DNS server as `…@ip:port`
//! (like `dig @server`); otherwise the first `nameserver` in `/etc/resolv.conf` is asked.
//!
//! The SRV lookup is a small RFC 1035 client over UDP: one question, answers parsed with
//! name compression, targets resolved through the system resolver.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use crate::{catalog::Catalog, instance::ServiceInstance};

/// What to resolve for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsTarget {
    /// A/AAAA records of `host`, all on `port`.
    Host {
        /// Host name.
        host: String,
        /// Port.
        port: u16,
    },
    /// SRV records of `name`.
    Srv {
        /// The SRV name, e.g. `_http._tcp.orders.default.svc.cluster.local`.
        name: String,
        /// DNS server to ask (default: from `/etc/resolv.conf`).
        server: Option<SocketAddr>,
    },
}

impl DnsTarget {
    /// Parses `host:port`, `_svc._proto.name` or `_svc._proto.name@ip:port`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.starts_with('_') {
            let (name, server) = match s.split_once('@') {
                Some((n, srv)) => (
                    n,
                    Some(
                        srv.parse::<SocketAddr>()
                            .map_err(|_| format!("DNS server {srv:?} must be ip:port"))?,
                    ),
                ),
                None => (s, None),
            };
            if name.split('.').count() < 3 {
                return Err(format!(
                    "SRV name {name:?} must look like _service._proto.domain"
                ));
            }
            return Ok(DnsTarget::Srv {
                name: name.trim_end_matches('.').to_owned(),
                server,
            });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} must be host:port or an SRV name starting with _"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("invalid port in {s:?}"))?;
        if host.is_empty() {
            return Err(format!("no host in {s:?}"));
        }
        Ok(DnsTarget::Host {
            host: host.to_owned(),
            port,
        })
    }
}

pub(super) async fn run(
    targets: &BTreeMap<String, String>,
    interval: Duration,
    catalog: &Catalog,
    stop: &CancellationToken,
) {
    let parsed: Vec<(String, DnsTarget)> = targets
        .iter()
        .filter_map(|(svc, t)| DnsTarget::parse(t).ok().map(|t| (svc.clone(), t)))
        .collect();
    loop {
        let mut all_ok = true;
        let mut found: HashMap<String, Vec<ServiceInstance>> = HashMap::new();
        for (svc, target) in &parsed {
            match resolve(svc, target).await {
                Ok(list) => {
                    found.insert(svc.clone(), list);
                }
                Err(e) => {
                    all_ok = false;
                    tracing::debug!(service = %svc, error = %e, "DNS lookup failed; keeping last known instances");
                }
            }
        }
        for (svc, list) in found {
            catalog.set(&svc, list);
        }
        if all_ok {
            catalog.mark_contact();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

async fn resolve(svc: &str, target: &DnsTarget) -> Result<Vec<ServiceInstance>, String> {
    match target {
        DnsTarget::Host { host, port } => {
            let addrs = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|e| e.to_string())?;
            let mut list: Vec<ServiceInstance> = addrs
                .map(|a| ServiceInstance::new(svc, &a.to_string(), &a.ip().to_string(), a.port()))
                .collect();
            list.dedup_by(|a, b| a.id == b.id);
            Ok(list)
        }
        DnsTarget::Srv { name, server } => {
            let server = match server {
                Some(s) => *s,
                None => system_nameserver().ok_or("no nameserver in /etc/resolv.conf")?,
            };
            let records = resolve_srv(name, server, Duration::from_secs(2)).await?;
            let mut list = Vec::new();
            for r in records {
                let addrs = tokio::net::lookup_host((r.target.as_str(), r.port))
                    .await
                    .map_err(|e| format!("{}: {e}", r.target))?;
                for a in addrs {
                    let mut i =
                        ServiceInstance::new(svc, &a.to_string(), &a.ip().to_string(), a.port());
                    i.weight = u32::from(r.weight.max(1));
                    i.metadata.insert("srv.target".into(), r.target.clone());
                    i.metadata
                        .insert("srv.priority".into(), r.priority.to_string());
                    if !list.iter().any(|x: &ServiceInstance| x.id == i.id) {
                        list.push(i);
                    }
                }
            }
            Ok(list)
        }
    }
}

fn system_nameserver() -> Option<SocketAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    conf.lines().find_map(|l| {
        let ip = l.trim().strip_prefix("nameserver")?.trim();
        ip.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    /// Priority (lower first).
    pub priority: u16,
    /// Weight among equal priorities.
    pub weight: u16,
    /// Port.
    pub port: u16,
    /// Target host name.
    pub target: String,
}

/// Queries `server` for the SRV records of `name`.
pub async fn resolve_srv(
    name: &str,
    server: SocketAddr,
    timeout: Duration,
) -> Result<Vec<SrvRecord>, String> {
    let id: u16 = rand::random();
    let query = build_query(id, name, 33)?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| e.to_string())?;
    sock.connect(server).await.map_err(|e| e.to_string())?;
    sock.send(&query).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(timeout, async {
        loop {
            let n = sock.recv(&mut buf).await.map_err(|e| e.to_string())?;
            if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                return Ok::<usize, String>(n);
            }
        }
    })
    .await
    .map_err(|_| format!("no answer from {server} within {timeout:?}"))??;
    parse_srv_response(&buf[..n])
}

fn build_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // recursion desired
    q.extend_from_slice(&1u16.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("invalid DNS name {name:?}"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes()); // IN
    Ok(q)
}

/// Reads a (possibly compressed) name at `pos`; returns it and the position after it.
fn read_name(msg: &[u8], mut pos: usize) -> Result<(String, usize), String> {
    let mut labels = Vec::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *msg.get(pos).ok_or("truncated name")? as usize;
        if len & 0xc0 == 0xc0 {
            let lo = *msg.get(pos + 1).ok_or("truncated pointer")? as usize;
            if end.is_none() {
                end = Some(pos + 2);
            }
            pos = ((len & 0x3f) << 8) | lo;
            jumps += 1;
            if jumps > 32 {
                return Err("name compression loop".into());
            }
            continue;
        }
        if len == 0 {
            return Ok((labels.join("."), end.unwrap_or(pos + 1)));
        }
        let label = msg.get(pos + 1..pos + 1 + len).ok_or("truncated label")?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        pos += 1 + len;
    }
}

fn u16_at(msg: &[u8], pos: usize) -> Result<u16, String> {
    msg.get(pos..pos + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| "truncated message".to_owned())
}

fn parse_srv_response(msg: &[u8]) -> Result<Vec<SrvRecord>, String> {
    if msg.len() < 12 {
        return Err("short DNS response".into());
    }
    let rcode = msg[3] & 0x0f;
    match rcode {
        0 => {}
        3 => return Err("name does not exist (NXDOMAIN)".into()),
        c => return Err(format!("DNS error code {c}")),
    }
    let qd = u16_at(msg, 4)? as usize;
    let an = u16_at(msg, 6)? as usize;
    let mut pos = 12;
    for _ in 0..qd {
        let (_, p) = read_name(msg, pos)?;
        pos = p + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        let (_, p) = read_name(msg, pos)?;
        let rtype = u16_at(msg, p)?;
        let rdlen = u16_at(msg, p + 8)? as usize;
        let rdata = p + 10;
        if rtype == 33 {
            let (target, _) = read_name(msg, rdata + 6)?;
            out.push(SrvRecord {
                priority: u16_at(msg, rdata)?,
                weight: u16_at(msg, rdata + 2)?,
                port: u16_at(msg, rdata + 4)?,
                target,
            });
        }
        pos = rdata + rdlen;
    }
    out.sort_by_key(|r| (r.priority, std::cmp::Reverse(r.weight)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(
            DnsTarget::parse("orders.default.svc.cluster.local:8080").unwrap(),
            DnsTarget::Host {
                host: "orders.default.svc.cluster.local".into(),
                port: 8080
            }
        );
        assert!(matches!(
            DnsTarget::parse("_http._tcp.orders.test@127.0.0.1:5353").unwrap(),
            DnsTarget::Srv {
                server: Some(_),
                ..
            }
        ));
        assert!(DnsTarget::parse("orders").is_err());
        assert!(DnsTarget::parse("orders:http").is_err());
        assert!(DnsTarget::parse("_http.orders@nowhere").is_err());
    }

    #[test]
    fn parses_a_compressed_srv_answer() {
        // A response to _http._tcp.o.test SRV with one answer whose owner name is a
        // pointer to the question and whose target is "a.o.test" (partly compressed).
        let mut msg = build_query(7, "_http._tcp.o.test", 33).unwrap();
        msg[2] = 0x81;
        msg[3] = 0x80;
        msg[7] = 1; // one answer
        msg.extend_from_slice(&[0xc0, 12]); // owner: pointer to the question name
        msg.extend_from_slice(&33u16.to_be_bytes());
        msg.extend_from_slice(&1u16.to_be_bytes());
        msg.extend_from_slice(&60u32.to_be_bytes());
        let rdata: Vec<u8> = [
            &10u16.to_be_bytes()[..],
            &5u16.to_be_bytes()[..],
            &8080u16.to_be_bytes()[..],
            &[1, b'a'][..],
            &[0xc0, 23][..], // "o.test" inside the question
        ]
        .concat();
        msg.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        msg.extend_from_slice(&rdata);
        let recs = parse_srv_response(&msg).unwrap();
        assert_eq!(
            recs,
            vec![SrvRecord {
                priority: 10,
                weight: 5,
                port: 8080,
                target: "a.o.test".into()
            }]
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            &[][..],
            &[0u8; 5][..],
            &[0, 1, 0x81, 0x83, 0, 0, 0, 0, 0, 0, 0, 0][..],
        ] {
            assert!(parse_srv_response(bad).is_err());
        }
        let mut loopy = vec![0u8; 12];
        loopy[5] = 1;
        loopy.extend_from_slice(&[0xc0, 12]);
        assert!(parse_srv_response(&loopy).is_err());
    }

    #[tokio::test]
    async fn host_targets_resolve_through_the_system_resolver() {
        let list = resolve("svc", &DnsTarget::parse("localhost:8080").unwrap())
            .await
            .unwrap();
        assert!(!list.is_empty());
        assert!(list.iter().all(|i| i.port == 8080));
    }
}
