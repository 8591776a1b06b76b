//! One route's request metrics (`keel_gateway_requests_total{route,method,status}` and
//! `keel_gateway_request_duration_seconds{route,method}`), with the recorder's handles kept
//! beside the route: a request takes no map lookup and hashes no label, only one uncontended
//! lock over the few statuses its method has answered with.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use http::{Method, StatusCode};

/// How many methods have a label of their own.
const LABELLED: usize = 9;

/// The methods with a label of their own; every other one is counted as `OTHER`.
static METHODS: [(Method, &str); LABELLED] = [
    (Method::GET, "GET"),
    (Method::POST, "POST"),
    (Method::PUT, "PUT"),
    (Method::DELETE, "DELETE"),
    (Method::PATCH, "PATCH"),
    (Method::HEAD, "HEAD"),
    (Method::OPTIONS, "OPTIONS"),
    (Method::CONNECT, "CONNECT"),
    (Method::TRACE, "TRACE"),
];

/// A route's handles, registered on first use of each method and status.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    route: Arc<str>,
    /// By [`METHODS`] index, then `OTHER`.
    methods: [OnceLock<MethodMetrics>; LABELLED + 1],
}

#[derive(Debug)]
struct MethodMetrics {
    duration: metrics::Histogram,
    /// Counters by status; a route answers with few, so a scan beats a hash.
    requests: Mutex<Vec<(u16, metrics::Counter)>>,
}

impl RouteMetrics {
    /// The metrics of route `route` (`unmatched` for requests no route matched).
    pub(crate) fn new(route: Arc<str>) -> Self {
        Self {
            route,
            methods: Default::default(),
        }
    }

    /// Counts one request and records how long it took to its response head.
    pub(crate) fn record(&self, method: &Method, status: StatusCode, elapsed: Duration) {
        let slot = METHODS
            .iter()
            .position(|(m, _)| m == method)
            .unwrap_or(LABELLED);
        let label = METHODS.get(slot).map_or("OTHER", |(_, l)| l);
        let m = self.methods[slot].get_or_init(|| MethodMetrics {
            duration: metrics::histogram!(
                "keel_gateway_request_duration_seconds",
                "route" => self.route.to_string(),
                "method" => label
            ),
            requests: Mutex::default(),
        });
        m.duration.record(elapsed.as_secs_f64());
        let code = status.as_u16();
        let mut requests = m.requests.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = requests.iter().find(|(s, _)| *s == code) {
            c.increment(1);
            return;
        }
        let c = metrics::counter!(
            "keel_gateway_requests_total",
            "route" => self.route.to_string(),
            "method" => label,
            "status" => status.as_str().to_owned()
        );
        c.increment(1);
        requests.push((code, c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_have_their_own_slot_and_others_share_one() {
        let m = RouteMetrics::new(Arc::from("r"));
        m.record(&Method::GET, StatusCode::OK, Duration::from_millis(1));
        m.record(&Method::GET, StatusCode::OK, Duration::from_millis(1));
        m.record(
            &Method::GET,
            StatusCode::NOT_FOUND,
            Duration::from_millis(1),
        );
        let custom = Method::from_bytes(b"PURGE").expect("method");
        m.record(&custom, StatusCode::OK, Duration::from_millis(1));
        let get = m.methods[0].get().expect("GET registered");
        assert_eq!(get.requests.lock().expect("lock").len(), 2);
        assert!(m.methods[LABELLED].get().is_some(), "PURGE counts as OTHER");
        assert!(m.methods[1..LABELLED].iter().all(|s| s.get().is_none()));
    }
}
