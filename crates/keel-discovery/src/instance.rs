//! The client's view of a service instance, whatever source it came from.

use std::collections::BTreeMap;

use keel_eureka::Status;
use serde::Serialize;

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceInstance {
    /// Unique id within the service.
    pub id: String,
    /// Service name, lower case.
    pub service: String,
    /// Host or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Whether to use HTTPS.
    pub secure: bool,
    /// Status; only `UP` instances receive traffic.
    pub status: Status,
    /// Zone (metadata `zone`), for zone-preferring balancing.
    pub zone: Option<String>,
    /// Relative weight (metadata `weight`, default 1), for weighted balancing.
    pub weight: u32,
    /// All metadata.
    pub metadata: BTreeMap<String, String>,
}

impl ServiceInstance {
    /// A plain UP instance at `host:port`.
    pub fn new(service: &str, id: &str, host: &str, port: u16) -> Self {
        Self {
            id: id.to_owned(),
            service: service.to_ascii_lowercase(),
            host: host.to_owned(),
            port,
            secure: false,
            status: Status::Up,
            zone: None,
            weight: 1,
            metadata: BTreeMap::new(),
        }
    }

    /// `host:port`.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `http://host:port` (or `https://`).
    pub fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.secure { "https" } else { "http" },
            self.authority()
        )
    }

    /// Whether the instance may receive traffic.
    pub fn is_up(&self) -> bool {
        self.status == Status::Up
    }

    /// From a Eureka record: the IP address, the enabled port (plain preferred), zone and
    /// weight from metadata.
    pub fn from_eureka(i: &keel_eureka::Instance) -> Self {
        let (port, secure) = match (&i.port, &i.secure_port) {
            (Some(p), _) if p.enabled => (p.port, false),
            (_, Some(p)) if p.enabled => (p.port, true),
            (Some(p), _) => (p.port, false),
            _ => (80, false),
        };
        let host = if i.ip_addr.is_empty() {
            i.host_name.clone()
        } else {
            i.ip_addr.clone()
        };
        Self {
            id: i.instance_id.clone(),
            service: i.app.to_ascii_lowercase(),
            host,
            port,
            secure,
            status: i.effective_status(),
            zone: i.metadata.get("zone").cloned(),
            weight: i
                .metadata
                .get("weight")
                .and_then(|w| w.parse().ok())
                .unwrap_or(1),
            metadata: i.metadata.clone(),
        }
    }

    /// From a URL such as `http://10.0.0.5:8080` (static lists).
    pub fn from_url(service: &str, url: &str) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let secure = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("URL {url:?} must start with http:// or https://")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("URL {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let mut i = Self::new(service, &format!("{host}:{port}"), &host, port);
        i.secure = secure;
        Ok(i)
    }
}
