//! The request head as it goes upstream: which of the client's headers pass (hop-by-hop ones
//! do not), and what the gateway sets — `Host`, `X-Forwarded-*`/`Forwarded` joined to any the
//! client sent, trace context, the remaining deadline and, for a body held in memory, its
//! length. One set of rules for both ways out: a `HeaderMap` for hyper's client, and bytes
//! written straight from the exchange on the fast path (no copy of the client's headers).

use http::{HeaderMap, HeaderName, HeaderValue, header};
use tokio::time::Instant;

use crate::{
    config::ForwardedSettings,
    exchange::{Exchange, header_value},
};

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub(crate) const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
pub(crate) const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// What the upstream head does with a client header, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Host,
    /// Hop-by-hop by itself (`Upgrade` is apart: it passes for an upgrade handshake).
    HopByHop,
    Upgrade,
    Expect,
    /// One of the forwarding headers, by its index in [`JOINED`].
    Joined(usize),
    Other,
}

/// The forwarding headers the gateway joins to the client's lists, in the order it adds them.
static JOINED: [HeaderName; 5] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_FORWARDED_PORT,
    FORWARDED,
];

/// One match on the name instead of comparing it with each special name in turn.
fn kind(name: &HeaderName) -> Kind {
    match name.as_str() {
        "host" => Kind::Host,
        "connection"
        | "keep-alive"
        | "proxy-connection"
        | "proxy-authenticate"
        | "proxy-authorization"
        | "te"
        | "trailer"
        | "transfer-encoding" => Kind::HopByHop,
        "upgrade" => Kind::Upgrade,
        "expect" => Kind::Expect,
        "x-forwarded-for" => Kind::Joined(0),
        "x-forwarded-proto" => Kind::Joined(1),
        "x-forwarded-host" => Kind::Joined(2),
        "x-forwarded-port" => Kind::Joined(3),
        "forwarded" => Kind::Joined(4),
        _ => Kind::Other,
    }
}

/// Whether `name` is hop-by-hop by itself. `Upgrade` is kept for an upgrade handshake.
fn is_hop_by_hop(name: &HeaderName, upgrade: bool) -> bool {
    match kind(name) {
        Kind::HopByHop => true,
        Kind::Upgrade => !upgrade,
        _ => false,
    }
}

/// The header names `Connection` lists (hop-by-hop too). `close` and `keep-alive` are options
/// here, not names to look for; `upgrade` stays for an upgrade handshake. Empty, without
/// allocating, when nothing is listed.
fn connection_listed(h: &HeaderMap, upgrade: bool) -> Vec<HeaderName> {
    let mut values = h.get_all(header::CONNECTION).iter().peekable();
    if values.peek().is_none() {
        return Vec::new();
    }
    values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.eq_ignore_ascii_case("keep-alive") && !n.eq_ignore_ascii_case("close"))
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .filter(|n| !(upgrade && *n == header::UPGRADE))
        .collect()
}

/// Removes hop-by-hop headers (and those the `Connection` header lists). `Upgrade` is kept
/// for WebSocket handshakes, with `Connection: upgrade`.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let mut doomed = connection_listed(h, upgrade);
    doomed.extend(h.keys().filter(|n| is_hop_by_hop(n, upgrade)).cloned());
    for n in doomed {
        h.remove(n);
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether the request asks for a protocol upgrade (`Connection: upgrade` and `Upgrade`).
pub(crate) fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// A forwarding header's value, joined to the client's list of the same name.
enum Join {
    /// The gateway adds nothing under this name.
    Off,
    /// To be sent: after the client's first value of the name when there is one.
    Pending(HeaderValue),
    /// Sent (the client's other values of the name went into it).
    Done,
}

/// `new` after the client's `existing` list (`new` alone when that is empty or not text).
fn joined(existing: &HeaderValue, new: HeaderValue) -> HeaderValue {
    match (existing.to_str(), new.to_str()) {
        (Ok(existing), Ok(add)) if !existing.is_empty() => {
            let mut v = String::with_capacity(existing.len() + 2 + add.len());
            v.push_str(existing);
            v.push_str(", ");
            v.push_str(add);
            header_value(&v)
        }
        _ => new,
    }
}

/// Calls `emit` with every header of the request as sent upstream, `Host` first:
///
/// - the client's headers, less hop-by-hop ones (and those `Connection` lists); for an
///   `upgrade`, `Upgrade` passes and `Connection: upgrade` is sent;
/// - `Host`: `host`, in place of the client's;
/// - `X-Forwarded-For`/`-Proto`/`-Host`/`-Port` and `Forwarded` (as `settings` say), each
///   joined to the client's list of that name; `X-Forwarded-Prefix` when a filter removed one;
/// - the trace context and the time left to the request's deadline, in place of the client's;
/// - `length` (a body in memory, more than 0 bytes): its `Content-Length`, and no `Expect`, as
///   the body goes with the head.
pub(crate) fn upstream_headers(
    settings: &ForwardedSettings,
    ex: &Exchange,
    host: &HeaderValue,
    upgrade: bool,
    length: Option<usize>,
    mut emit: impl FnMut(&HeaderName, &HeaderValue),
) {
    let xf = settings.x_forwarded;
    let by_host = (xf || settings.forwarded).then(|| ex.peer.host_values(ex.host.as_ref()));
    let (xf_host, xf_port) = match (xf, &ex.host, &by_host) {
        (true, Some(h), Some(v)) => (Some(h.clone()), Some(v.port.clone())),
        _ => (None, None),
    };
    let proto = if ex.secure { "https" } else { "http" };
    let pending = |v: Option<HeaderValue>| v.map_or(Join::Off, Join::Pending);
    let mut joins = [
        pending(xf.then(|| ex.peer.ip.clone())),
        pending(xf.then(|| HeaderValue::from_static(proto))),
        pending(xf_host),
        pending(xf_port),
        pending(by_host.filter(|_| settings.forwarded).map(|v| v.forwarded)),
    ];
    let mut trace = ex.trace.headers();
    let own = [
        trace.next(),
        trace.next(),
        ex.deadline.map(|d| d.header_at(Instant::now())),
        ex.prefix
            .as_deref()
            .filter(|_| xf)
            .map(|p| (X_FORWARDED_PREFIX, header_value(p))),
        length.map(|n| (header::CONTENT_LENGTH, HeaderValue::from(n))),
    ];
    let listed = connection_listed(&ex.headers, upgrade);
    emit(&header::HOST, host);
    for (name, value) in &ex.headers {
        let joined_at = match kind(name) {
            Kind::Host | Kind::HopByHop => continue,
            Kind::Upgrade if !upgrade => continue,
            Kind::Expect if length.is_some() => continue,
            Kind::Joined(i) => Some(i),
            _ => None,
        };
        if (!listed.is_empty() && listed.contains(name))
            || own.iter().flatten().any(|(n, _)| n == name)
        {
            continue;
        }
        match joined_at.map(|i| &mut joins[i]) {
            Some(join @ Join::Pending(_)) => {
                if let Join::Pending(new) = std::mem::replace(join, Join::Done) {
                    emit(name, &joined(value, new));
                }
            }
            Some(Join::Done) => {}
            Some(Join::Off) | None => emit(name, value),
        }
    }
    for (name, join) in JOINED.iter().zip(&joins) {
        if let Join::Pending(v) = join {
            emit(name, v);
        }
    }
    for (name, value) in own.iter().flatten() {
        emit(name, value);
    }
    if upgrade {
        emit(&header::CONNECTION, &HeaderValue::from_static("upgrade"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::tests::exchange;

    /// The headers left after stripping hop-by-hop ones from `pairs`.
    fn stripped(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h, false);
        h
    }

    #[test]
    fn names_are_classified_as_the_header_constants_say() {
        for n in [
            header::CONNECTION,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
            header::PROXY_AUTHENTICATE,
            header::PROXY_AUTHORIZATION,
            header::TE,
            header::TRAILER,
            header::TRANSFER_ENCODING,
        ] {
            assert_eq!(kind(&n), Kind::HopByHop, "{n}");
            assert!(is_hop_by_hop(&n, true), "{n}");
        }
        assert!(is_hop_by_hop(&header::UPGRADE, false));
        assert!(!is_hop_by_hop(&header::UPGRADE, true));
        assert_eq!(kind(&header::HOST), Kind::Host);
        assert_eq!(kind(&header::EXPECT), Kind::Expect);
        for (i, n) in JOINED.iter().enumerate() {
            assert_eq!(kind(n), Kind::Joined(i), "{n}");
        }
        assert_eq!(kind(&header::ACCEPT), Kind::Other);
        assert_eq!(
            kind(&HeaderName::from_static("x-forwarded-prefix")),
            Kind::Other
        );
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let h = stripped(&[
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn listed_keep_alive_and_close_go_with_the_rest() {
        let h = stripped(&[
            ("connection", "Keep-Alive, CLOSE, X-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("close-enough", "kept"),
        ]);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("close-enough"));
    }

    #[test]
    fn upgrade_keeps_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    /// What `upstream_headers` emits for `ex`, as `name: value` lines in order.
    fn emitted(ex: &Exchange, upgrade: bool, length: Option<usize>) -> Vec<String> {
        let mut out = Vec::new();
        let host = HeaderValue::from_static("up:8080");
        upstream_headers(
            &ForwardedSettings::default(),
            ex,
            &host,
            upgrade,
            length,
            |n, v| out.push(format!("{n}: {}", v.to_str().unwrap())),
        );
        out
    }

    fn with_headers(pairs: &[(&'static str, &'static str)]) -> Exchange {
        let mut ex = exchange("/o?x=1");
        for (k, v) in pairs {
            ex.headers.append(*k, HeaderValue::from_static(v));
        }
        ex.host = ex.headers.get(header::HOST).cloned();
        ex
    }

    #[test]
    fn the_upstream_head_has_the_clients_headers_less_hop_by_hop_and_the_gateways_own() {
        let ex = with_headers(&[
            ("host", "gw.example:8443"),
            ("accept", "application/json"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("traceparent", "garbage"),
            ("x-custom", "a"),
            ("x-custom", "b"),
        ]);
        let lines = emitted(&ex, false, None);
        let trace = format!("traceparent: {}", ex.trace.traceparent());
        assert_eq!(
            lines,
            [
                "host: up:8080",
                "accept: application/json",
                "x-custom: a",
                "x-custom: b",
                "x-forwarded-for: 127.0.0.1",
                "x-forwarded-proto: http",
                "x-forwarded-host: gw.example:8443",
                "x-forwarded-port: 8443",
                "forwarded: for=127.0.0.1;proto=http;host=\"gw.example:8443\"",
                &trace,
            ],
        );
    }

    #[test]
    fn forwarding_headers_the_gateway_does_not_set_pass_as_the_client_sent_them() {
        let ex = with_headers(&[
            ("host", "gw"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("forwarded", "for=10.0.0.1"),
        ]);
        let settings = ForwardedSettings {
            x_forwarded: false,
            forwarded: true,
        };
        let mut lines = Vec::new();
        let host = HeaderValue::from_static("up");
        upstream_headers(&settings, &ex, &host, false, None, |n, v| {
            lines.push(format!("{n}: {}", v.to_str().unwrap()));
        });
        assert!(
            lines.contains(&"x-forwarded-for: 10.0.0.1".to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"x-forwarded-for: 10.0.0.2".to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(
                &"forwarded: for=10.0.0.1, for=127.0.0.1;proto=http;host=\"gw\"".to_owned()
            ),
            "{lines:?}"
        );
        assert!(
            !lines.iter().any(|l| l.starts_with("x-forwarded-proto")),
            "{lines:?}"
        );
    }

    #[test]
    fn forwarding_headers_join_the_clients_lists_once() {
        let mut ex = with_headers(&[
            ("host", "gw"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("forwarded", "for=10.0.0.1"),
            ("x-forwarded-prefix", "/client"),
        ]);
        ex.prefix = Some("/api".into());
        let lines = emitted(&ex, false, None);
        assert!(
            lines.contains(&"x-forwarded-for: 10.0.0.1, 127.0.0.1".to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(
                &"forwarded: for=10.0.0.1, for=127.0.0.1;proto=http;host=\"gw\"".to_owned()
            ),
            "{lines:?}"
        );
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("x-forwarded-for"))
                .count(),
            1
        );
        assert!(
            lines.contains(&"x-forwarded-prefix: /api".to_owned()),
            "{lines:?}"
        );
        assert!(!lines.iter().any(|l| l.ends_with("/client")), "{lines:?}");
    }

    #[test]
    fn the_time_left_replaces_the_clients_deadline_header() {
        let mut ex = with_headers(&[("host", "gw"), ("keel-deadline-ms", "900000")]);
        assert!(emitted(&ex, false, None).contains(&"keel-deadline-ms: 900000".to_owned()));
        ex.deadline = Some(keel_resilience::Deadline::at(
            Instant::now() + std::time::Duration::from_secs(5),
        ));
        let lines = emitted(&ex, false, None);
        let sent: Vec<_> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("keel-deadline-ms: "))
            .collect();
        assert_eq!(sent.len(), 1, "{lines:?}");
        let ms: u64 = sent[0].parse().unwrap();
        assert!((4_000..=5_000).contains(&ms), "{ms}");
    }

    #[test]
    fn a_body_in_memory_brings_its_own_length_and_no_expect() {
        let ex = with_headers(&[
            ("host", "gw"),
            ("content-length", "999"),
            ("expect", "100-continue"),
        ]);
        let lines = emitted(&ex, false, Some(12));
        assert!(
            lines.contains(&"content-length: 12".to_owned()),
            "{lines:?}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.starts_with("expect") || l.ends_with("999"))
        );
        // Without a body in memory the client's framing headers pass as they are.
        let lines = emitted(&ex, false, None);
        assert!(
            lines.contains(&"content-length: 999".to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"expect: 100-continue".to_owned()),
            "{lines:?}"
        );
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_says_so_in_connection() {
        let ex = with_headers(&[
            ("host", "gw"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        let lines = emitted(&ex, true, None);
        assert!(
            lines.contains(&"upgrade: websocket".to_owned()),
            "{lines:?}"
        );
        assert_eq!(
            lines.last().map(String::as_str),
            Some("connection: upgrade")
        );
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("connection")).count(),
            1
        );
    }
}
