//! CORS at the edge, with Spring's `CorsConfiguration` semantics: global configurations by
//! path pattern (`globalcors.cors-configurations`) and per-route ones (`metadata.cors`, which
//! win). Preflights are answered by the gateway; actual requests get the response headers;
//! a request from an origin that is not allowed is refused with 403 problem+json.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use regex::Regex;
use serde_json::Value;

use crate::{
    body::Body,
    config::tree::{lookup, scalar_string, string_list},
    pattern::Pattern,
    problem::{GatewayProblem, types},
};

/// One compiled CORS configuration.
#[derive(Debug, Clone)]
pub(crate) struct CorsConfig {
    origins: Vec<String>,
    any_origin: bool,
    origin_patterns: Vec<Regex>,
    /// `None`: Spring's default (GET, HEAD, POST).
    methods: Option<Vec<Method>>,
    any_method: bool,
    headers: Vec<String>,
    any_header: bool,
    exposed: Vec<String>,
    credentials: bool,
    max_age: u64,
}

fn list(v: &Value, key: &str) -> Vec<String> {
    lookup(v, key)
        .filter(|x| !x.is_null())
        .map(string_list)
        .unwrap_or_default()
}

impl CorsConfig {
    /// Compiles one configuration (Spring's keys, relaxed).
    pub(crate) fn build(v: &Value) -> Result<Self, String> {
        if !v.is_object() {
            return Err("a CORS configuration must be a map".to_owned());
        }
        let origins = list(v, "allowed_origins");
        let any_origin = origins.iter().any(|o| o == "*");
        let origin_patterns = list(v, "allowed_origin_patterns")
            .iter()
            .map(|p| {
                let re = format!(
                    "^{}$",
                    regex::escape(&p.to_ascii_lowercase()).replace("\\*", ".*")
                );
                Regex::new(&re).map_err(|e| format!("allowedOriginPatterns {p:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let m = list(v, "allowed_methods");
        let any_method = m.iter().any(|x| x == "*");
        let methods = if m.is_empty() {
            None
        } else {
            Some(
                m.iter()
                    .filter(|x| *x != "*")
                    .map(|x| crate::config::spec::method(x))
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("allowedMethods: {e}"))?,
            )
        };
        let h = list(v, "allowed_headers");
        let credentials = match lookup(v, "allow_credentials").filter(|x| !x.is_null()) {
            None => false,
            Some(x) => {
                crate::config::spec::boolean(x).map_err(|e| format!("allowCredentials: {e}"))?
            }
        };
        if credentials && any_origin {
            return Err(
                "allowCredentials cannot be true when allowedOrigins contains \"*\"; use allowedOriginPatterns"
                    .to_owned(),
            );
        }
        let max_age = match lookup(v, "max_age").and_then(scalar_string) {
            None => 1800,
            Some(s) => s
                .trim_end_matches('s')
                .parse()
                .map_err(|_| format!("maxAge must be seconds, got {s:?}"))?,
        };
        Ok(Self {
            origins: origins.iter().map(|o| o.to_ascii_lowercase()).collect(),
            any_origin,
            origin_patterns,
            methods,
            any_method,
            any_header: h.iter().any(|x| x == "*"),
            headers: h.iter().map(|x| x.to_ascii_lowercase()).collect(),
            exposed: list(v, "exposed_headers"),
            credentials,
            max_age,
        })
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let o = origin.to_ascii_lowercase();
        self.any_origin
            || self.origins.contains(&o)
            || self.origin_patterns.iter().any(|re| re.is_match(&o))
    }

    fn method_allowed(&self, m: &Method) -> bool {
        self.any_method
            || match &self.methods {
                Some(list) => list.contains(m),
                None => matches!(*m, Method::GET | Method::HEAD | Method::POST),
            }
    }

    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }
}

/// Global configurations by path pattern.
#[derive(Debug, Clone, Default)]
pub(crate) struct GlobalCors(Vec<(Pattern, Arc<CorsConfig>)>);

impl GlobalCors {
    pub(crate) fn build(list: &[(String, Value)]) -> Result<Self, (String, String)> {
        let mut out = Vec::new();
        for (p, v) in list {
            let field = format!("globalcors.cors-configurations.[{p}]");
            let pattern = Pattern::path(p, true).map_err(|e| (field.clone(), e.to_string()))?;
            let config = CorsConfig::build(v).map_err(|e| (field, e))?;
            out.push((pattern, Arc::new(config)));
        }
        // The file's order is not kept by the parser, so the most specific pattern (longest
        // literal prefix) is tried first and `/**` last.
        out.sort_by_key(|(p, _)| std::cmp::Reverse(p.literal_prefix().len()));
        Ok(Self(out))
    }

    /// The first configuration whose pattern matches `path`, shared (a request holds it
    /// without copying its lists).
    pub(crate) fn find(&self, path: &str) -> Option<&Arc<CorsConfig>> {
        self.0
            .iter()
            .find(|(p, _)| p.is_match(path))
            .map(|(_, c)| c)
    }
}

/// Whether the request is cross-origin: it has an `Origin` that differs from the scheme and
/// host it was sent to (Spring's `CorsUtils.isCorsRequest` plus its same-origin check).
pub(crate) fn is_cross_origin(headers: &HeaderMap, secure: bool) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let scheme = if secure { "https" } else { "http" };
    let default_port = if secure { ":443" } else { ":80" };
    let same = |o: &str| {
        o.strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
            .is_some_and(|rest| {
                rest.eq_ignore_ascii_case(host)
                    || rest.eq_ignore_ascii_case(host.trim_end_matches(default_port))
                    || format!("{rest}{default_port}").eq_ignore_ascii_case(host)
            })
    };
    !same(origin)
}

/// Whether this is a CORS preflight.
pub(crate) fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    *method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn rejected(route: Option<&str>, path: &str, detail: String) -> Response<Body> {
    let mut p =
        GatewayProblem::new(StatusCode::FORBIDDEN, types::CORS_REJECTED, detail).instance(path);
    if let Some(r) = route {
        p = p.route(r);
    }
    p.into_response()
}

/// Answers a preflight.
pub(crate) fn preflight(
    c: &CorsConfig,
    headers: &HeaderMap,
    route: Option<&str>,
    path: &str,
) -> Response<Body> {
    let origin = headers
        .get(header::ORIGIN)
        .cloned()
        .unwrap_or(HeaderValue::from_static(""));
    let o = origin.to_str().unwrap_or_default();
    if !c.origin_allowed(o) {
        return rejected(route, path, format!("origin {o:?} is not allowed"));
    }
    let method = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok());
    let Some(method) = method.filter(|m| c.method_allowed(m)) else {
        return rejected(
            route,
            path,
            "the requested method is not allowed".to_owned(),
        );
    };
    let requested: Vec<String> = headers
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    if let Some(bad) = requested
        .iter()
        .find(|h| !(c.any_header || c.headers.contains(h)))
    {
        return rejected(
            route,
            path,
            format!("the request header {bad:?} is not allowed"),
        );
    }
    let mut res = Response::new(Body::Empty);
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        c.allow_origin_value(&origin),
    );
    let methods = if c.any_method {
        method.to_string()
    } else {
        match &c.methods {
            Some(m) => m.iter().map(Method::as_str).collect::<Vec<_>>().join(","),
            None => "GET,HEAD,POST".to_owned(),
        }
    };
    if let Ok(v) = HeaderValue::from_str(&methods) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if !requested.is_empty()
        && let Ok(v) = HeaderValue::from_str(&requested.join(", "))
    {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if c.credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(c.max_age));
    add_vary(h);
    res
}

fn add_vary(h: &mut HeaderMap) {
    for v in [
        "Origin",
        "Access-Control-Request-Method",
        "Access-Control-Request-Headers",
    ] {
        h.append(header::VARY, HeaderValue::from_static(v));
    }
}

/// Checks an actual cross-origin request; `Err` is the 403 answer.
pub(crate) fn check_actual(
    c: &CorsConfig,
    headers: &HeaderMap,
    route: Option<&str>,
    path: &str,
) -> Result<(), Box<Response<Body>>> {
    let o = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if c.origin_allowed(o) {
        Ok(())
    } else {
        Err(Box::new(rejected(
            route,
            path,
            format!("origin {o:?} is not allowed"),
        )))
    }
}

/// Adds the CORS response headers to an actual request's response.
pub(crate) fn decorate(c: &CorsConfig, origin: &HeaderValue, res: &mut Response<Body>) {
    let h = res.headers_mut();
    // The upstream's own CORS headers are replaced, so a browser never sees two.
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        c.allow_origin_value(origin),
    );
    if c.credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !c.exposed.is_empty()
        && let Ok(v) = HeaderValue::from_str(&c.exposed.join(", "))
    {
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
    add_vary(h);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn preflight_allowed_and_refused() {
        let c = CorsConfig::build(&json!({
            "allowedOrigins": ["https://app.example"],
            "allowedMethods": ["GET", "PUT"],
            "allowedHeaders": ["content-type", "x-id"],
            "maxAge": 600
        }))
        .unwrap();
        let ok = preflight(
            &c,
            &hm(&[
                ("origin", "https://app.example"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "Content-Type, X-Id"),
            ]),
            Some("r"),
            "/x",
        );
        assert_eq!(ok.status(), 200);
        assert_eq!(
            ok.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        assert_eq!(ok.headers()["access-control-allow-methods"], "GET,PUT");
        assert_eq!(ok.headers()["access-control-max-age"], "600");
        for (origin, method, hdr) in [
            ("https://evil.example", "PUT", ""),
            ("https://app.example", "DELETE", ""),
            ("https://app.example", "GET", "x-other"),
        ] {
            let mut pairs = vec![
                ("origin", origin),
                ("access-control-request-method", method),
            ];
            if !hdr.is_empty() {
                pairs.push(("access-control-request-headers", hdr));
            }
            assert_eq!(
                preflight(&c, &hm(&pairs), None, "/x").status(),
                403,
                "{origin} {method} {hdr}"
            );
        }
    }

    #[test]
    fn same_origin_is_not_cors() {
        assert!(!is_cross_origin(
            &hm(&[("origin", "http://gw:8080"), ("host", "gw:8080")]),
            false
        ));
        assert!(!is_cross_origin(
            &hm(&[("origin", "https://gw"), ("host", "gw:443")]),
            true
        ));
        assert!(is_cross_origin(
            &hm(&[("origin", "https://gw:8080"), ("host", "gw:8080")]),
            false
        ));
        assert!(is_cross_origin(
            &hm(&[("origin", "http://app"), ("host", "gw")]),
            false
        ));
        assert!(!is_cross_origin(&hm(&[("host", "gw")]), false));
    }

    #[test]
    fn specific_patterns_first() {
        let g = GlobalCors::build(&[
            ("/**".to_owned(), json!({"allowedOrigins": "*"})),
            ("/api/**".to_owned(), json!({"allowedOrigins": "https://a"})),
        ])
        .unwrap();
        assert!(!g.find("/api/x").unwrap().any_origin);
        assert!(g.find("/other").unwrap().any_origin);
    }

    #[test]
    fn patterns_wildcards_and_credentials() {
        let c = CorsConfig::build(
            &json!({"allowedOriginPatterns": "https://*.example.org", "allowCredentials": true}),
        )
        .unwrap();
        assert!(c.origin_allowed("https://a.example.org"));
        assert!(!c.origin_allowed("https://example.com"));
        assert!(c.method_allowed(&Method::POST) && !c.method_allowed(&Method::DELETE));
        assert!(
            CorsConfig::build(&json!({"allowedOrigins": "*", "allowCredentials": true})).is_err()
        );
        let any = CorsConfig::build(&json!({"allowedOrigins": "*"})).unwrap();
        assert_eq!(
            any.allow_origin_value(&HeaderValue::from_static("https://x")),
            "*"
        );
    }
}
