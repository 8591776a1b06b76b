//! A request on its way through a route: what the filters rewrite before it goes upstream.

use std::{net::SocketAddr, sync::Arc};

use http::{HeaderMap, HeaderValue, Method, Version};
use keel_chassis::TraceContext;
use keel_resilience::Deadline;

use crate::pattern::Captures;

/// Claims of a verified JWT.
pub(crate) type Claims = serde_json::Map<String, serde_json::Value>;

/// The client's address as text, made once per connection for the forwarding headers.
#[derive(Debug)]
pub(crate) struct Peer {
    /// The address, for `X-Forwarded-For`.
    pub(crate) ip: HeaderValue,
    /// The `for=` value of `Forwarded` (IPv6 quoted in brackets).
    pub(crate) forwarded_for: Box<str>,
}

impl Peer {
    pub(crate) fn new(client: SocketAddr) -> Self {
        let ip = client.ip().to_string();
        let forwarded_for = if client.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip.clone()
        };
        Self {
            ip: HeaderValue::from_str(&ip).unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            forwarded_for: forwarded_for.into(),
        }
    }
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
    /// The path and query as one string.
    pub(crate) fn path_and_query(&self) -> String {
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
