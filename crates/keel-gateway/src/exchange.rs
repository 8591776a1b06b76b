//! A request on its way through a route: what the filters rewrite before it goes upstream.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http::{HeaderMap, HeaderValue, Method, Version, uri::PathAndQuery};
use keel_chassis::TraceContext;
use keel_resilience::Deadline;

use crate::pattern::Captures;

/// Claims of a verified JWT.
pub(crate) type Claims = serde_json::Map<String, serde_json::Value>;

/// The client's connection, with the forwarding header values made once per connection
/// (the address) or once per `Host` value it sends (a connection nearly always sends one).
#[derive(Debug)]
pub(crate) struct Peer {
    /// The address, for `X-Forwarded-For`.
    pub(crate) ip: HeaderValue,
    /// The `for=` value of `Forwarded` (IPv6 quoted in brackets).
    forwarded_for: Box<str>,
    /// Whether the connection is TLS (`proto=https`, default port 443).
    secure: bool,
    /// The values derived from the last `Host` seen on this connection.
    by_host: Mutex<Option<HostValues>>,
}

/// `X-Forwarded-Port` and `Forwarded` for one `Host` value (or none) on one connection.
#[derive(Debug, Clone)]
pub(crate) struct HostValues {
    host: Option<HeaderValue>,
    /// `X-Forwarded-Port`: the `Host` header's port, or the scheme's default.
    pub(crate) port: HeaderValue,
    /// `Forwarded: for=…;proto=…;host="…"`.
    pub(crate) forwarded: HeaderValue,
}

impl Peer {
    pub(crate) fn new(client: SocketAddr, secure: bool) -> Self {
        let ip = client.ip().to_string();
        let forwarded_for = if client.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip.clone()
        };
        Self {
            ip: HeaderValue::from_str(&ip).unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            forwarded_for: forwarded_for.into(),
            secure,
            by_host: Mutex::new(None),
        }
    }

    /// The forwarding values for a request with this `Host` (made once per distinct value in
    /// a row, not per request).
    pub(crate) fn host_values(&self, host: Option<&HeaderValue>) -> HostValues {
        let mut cached = self.by_host.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some(v) if v.host.as_ref() == host => v.clone(),
            _ => {
                let v = self.make_host_values(host);
                *cached = Some(v.clone());
                v
            }
        }
    }

    fn make_host_values(&self, host: Option<&HeaderValue>) -> HostValues {
        let text = host.and_then(|h| h.to_str().ok());
        let port = match text
            .and_then(|t| t.rsplit_once(':'))
            .map(|(_, p)| p)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            Some(p) => header_value(p),
            None => HeaderValue::from_static(if self.secure { "443" } else { "80" }),
        };
        let proto = if self.secure { "https" } else { "http" };
        let mut v = String::with_capacity(64);
        v.push_str("for=");
        v.push_str(&self.forwarded_for);
        v.push_str(";proto=");
        v.push_str(proto);
        if let Some(h) = text {
            v.push_str(";host=\"");
            v.push_str(h);
            v.push('"');
        }
        HostValues {
            // A copy: the request's own value shares the connection's read buffer, which the
            // cache would otherwise keep alive for as long as the connection lasts.
            host: host.map(|h| HeaderValue::from_bytes(h.as_bytes()).unwrap_or_else(|_| h.clone())),
            port,
            forwarded: header_value(&v),
        }
    }
}

/// `s` as a header value (`invalid` if it cannot be one).
pub(crate) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The request as filters see and change it.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) method: Method,
    pub(crate) version: Version,
    /// The path, percent-encoded, as it will be sent upstream.
    pub(crate) path: String,
    /// The query string, without `?`.
    pub(crate) query: Option<String>,
    /// The path and query as the client sent them: sent upstream as they are (without being
    /// rebuilt and validated again) when no filter changed `path` or `query`.
    pub(crate) original: Option<PathAndQuery>,
    pub(crate) headers: HeaderMap,
    /// Variables captured by `Path` and `Host`.
    pub(crate) vars: Captures,
    /// The client's address.
    pub(crate) client: SocketAddr,
    /// The same, as text for the forwarding headers (shared by the connection's requests).
    pub(crate) peer: Arc<Peer>,
    /// Whether the client connected over TLS.
    pub(crate) secure: bool,
    /// The `Host` the client sent (or the HTTP/2 authority).
    pub(crate) host: Option<HeaderValue>,
    /// The path prefix removed by StripPrefix (sent as `X-Forwarded-Prefix`).
    pub(crate) prefix: Option<String>,
    /// Send the client's `Host` upstream (PreserveHostHeader).
    pub(crate) preserve_host: bool,
    /// Verified JWT claims (set by the JWT filter).
    pub(crate) claims: Option<Arc<Claims>>,
    /// This request's trace context (the gateway's server span).
    pub(crate) trace: TraceContext,
    /// Largest body the route accepts.
    pub(crate) max_body: Option<u64>,
    /// When the request must be answered by (from `keel-deadline-ms`).
    pub(crate) deadline: Option<Deadline>,
    /// How many internal forwards led here (fallbacks to `forward:` URIs).
    pub(crate) forwards: u8,
}

impl Exchange {
    /// The path and query to send upstream.
    pub(crate) fn upstream_path_and_query(&self) -> Result<PathAndQuery, http::uri::InvalidUri> {
        if let Some(o) = &self.original
            && o.path() == self.path
            && o.query() == self.query.as_deref()
        {
            return Ok(o.clone());
        }
        PathAndQuery::from_maybe_shared(bytes::Bytes::from(self.path_and_query()))
    }

    /// The path and query as one string.
    fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) if !q.is_empty() => {
                let mut s = String::with_capacity(self.path.len() + q.len() + 1);
                s.push_str(&self.path);
                s.push('?');
                s.push_str(q);
                s
            }
            _ => self.path.clone(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn value(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn host_values_follow_the_host_and_the_connection() {
        let plain = Peer::new("10.0.0.7:5000".parse().unwrap(), false);
        let v = plain.host_values(Some(&value("shop.example:8443")));
        assert_eq!(v.port, "8443");
        assert_eq!(
            v.forwarded,
            "for=10.0.0.7;proto=http;host=\"shop.example:8443\""
        );
        // Another Host on the same connection gets its own values, not the cached ones.
        let v = plain.host_values(Some(&value("shop.example")));
        assert_eq!(v.port, "80");
        assert_eq!(v.forwarded, "for=10.0.0.7;proto=http;host=\"shop.example\"");
        assert_eq!(plain.host_values(None).forwarded, "for=10.0.0.7;proto=http");
        // An empty port and an IPv6 literal without one fall back to the scheme's default.
        let tls = Peer::new("[2001:db8::1]:5000".parse().unwrap(), true);
        assert_eq!(tls.host_values(Some(&value("a.example:"))).port, "443");
        let v = tls.host_values(Some(&value("[2001:db8::2]")));
        assert_eq!(v.port, "443");
        assert_eq!(
            v.forwarded,
            "for=\"[2001:db8::1]\";proto=https;host=\"[2001:db8::2]\""
        );
    }

    /// A `GET` of `uri` from 127.0.0.1 with no headers.
    pub(crate) fn exchange(uri: &'static str) -> Exchange {
        let uri = http::Uri::from_static(uri);
        Exchange {
            method: Method::GET,
            version: Version::HTTP_11,
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            original: uri.path_and_query().cloned(),
            headers: HeaderMap::new(),
            vars: Vec::new(),
            client: "127.0.0.1:1".parse().unwrap(),
            peer: Arc::new(Peer::new("127.0.0.1:1".parse().unwrap(), false)),
            secure: false,
            host: None,
            prefix: None,
            preserve_host: false,
            claims: None,
            trace: TraceContext::new_root(),
            max_body: None,
            deadline: None,
            forwards: 0,
        }
    }

    #[test]
    fn the_path_goes_upstream_as_received_unless_a_filter_changed_it() {
        let mut ex = exchange("/orders/7?x=%20&y");
        assert_eq!(ex.upstream_path_and_query().unwrap(), "/orders/7?x=%20&y");
        ex.path = "/7".into();
        assert_eq!(ex.upstream_path_and_query().unwrap(), "/7?x=%20&y");
        ex.query = None;
        assert_eq!(ex.upstream_path_and_query().unwrap(), "/7");
        let mut ex = exchange("/a?");
        assert_eq!(ex.upstream_path_and_query().unwrap(), "/a?");
        ex.query = Some("b=1".into());
        assert_eq!(ex.upstream_path_and_query().unwrap(), "/a?b=1");
    }
}
