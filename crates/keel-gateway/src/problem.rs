//! The gateway's own answers as RFC 9457 `application/problem+json`: what went wrong, on which
//! route, and the trace id to look it up by.

use http::{HeaderValue, Response, StatusCode, header};
use keel_chassis::{Problem, problem::PROBLEM_JSON};

use crate::body::Body;

/// Problem type URIs (stable; documented in `docs/gateway.md`).
pub(crate) mod types {
    pub(crate) const NO_ROUTE: &str = "https://keel.dev/problems/gateway/no-route";
    pub(crate) const UPSTREAM_UNREACHABLE: &str =
        "https://keel.dev/problems/gateway/upstream-unreachable";
    pub(crate) const UPSTREAM_TIMEOUT: &str = "https://keel.dev/problems/gateway/upstream-timeout";
    pub(crate) const UPSTREAM_ERROR: &str = "https://keel.dev/problems/gateway/upstream-error";
    pub(crate) const NO_INSTANCE: &str = "https://keel.dev/problems/gateway/no-instance";
    pub(crate) const CIRCUIT_OPEN: &str = "https://keel.dev/problems/gateway/circuit-open";
    pub(crate) const RATE_LIMITED: &str = "https://keel.dev/problems/gateway/rate-limited";
    pub(crate) const RATE_LIMITER_UNAVAILABLE: &str =
        "https://keel.dev/problems/gateway/rate-limiter-unavailable";
    pub(crate) const UNAUTHORIZED: &str = "https://keel.dev/problems/gateway/unauthorized";
    pub(crate) const FORBIDDEN: &str = "https://keel.dev/problems/gateway/forbidden";
    pub(crate) const BODY_TOO_LARGE: &str = "https://keel.dev/problems/gateway/body-too-large";
    pub(crate) const HEADERS_TOO_LARGE: &str =
        "https://keel.dev/problems/gateway/headers-too-large";
    pub(crate) const BAD_REQUEST: &str = "https://keel.dev/problems/gateway/bad-request";
    pub(crate) const REQUEST_TIMEOUT: &str = "https://keel.dev/problems/gateway/request-timeout";
    pub(crate) const CORS_REJECTED: &str = "https://keel.dev/problems/gateway/cors-rejected";
    pub(crate) const INTERNAL: &str = "https://keel.dev/problems/gateway/internal";
}

/// A problem response under construction.
#[derive(Debug)]
pub(crate) struct GatewayProblem {
    problem: Problem,
    has_trace: bool,
}

impl GatewayProblem {
    pub(crate) fn new(status: StatusCode, type_: &str, detail: impl Into<String>) -> Self {
        Self {
            problem: Problem::new(status).with_type(type_).with_detail(detail),
            has_trace: false,
        }
    }

    pub(crate) fn route(mut self, id: &str) -> Self {
        self.problem = self.problem.with_extension("route", id);
        self
    }

    pub(crate) fn instance(mut self, path: &str) -> Self {
        self.problem = self.problem.with_instance(path);
        self
    }

    pub(crate) fn trace(mut self, trace_id: String) -> Self {
        self.problem = self.problem.with_extension("traceId", trace_id);
        self.has_trace = true;
        self
    }

    pub(crate) fn extension(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.problem = self.problem.with_extension(key, value);
        self
    }

    /// The response; carries `traceId` when the request's trace context is in scope.
    pub(crate) fn into_response(self) -> Response<Body> {
        let p = match keel_chassis::trace_context::current() {
            Some(cx) if !self.has_trace => {
                self.problem.with_extension("traceId", cx.trace_id_hex())
            }
            _ => self.problem,
        };
        problem_response(&p)
    }
}

/// Renders a chassis [`Problem`].
pub(crate) fn problem_response(p: &Problem) -> Response<Body> {
    let mut res = Response::new(Body::full(p.to_bytes()));
    *res.status_mut() = p.status_code();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    res
}
