//! Route filters (Spring Cloud Gateway's set plus a few of Keel's), compiled once per route
//! table. Request filters run in order before the upstream call; response filters run in
//! order after it; Retry and CircuitBreaker wrap the call.
//!
//! See `docs/gateway.md` for every filter with its arguments.

pub(crate) mod headers;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use regex::Regex;

use crate::{
    body::Body,
    config::Spec,
    exchange::Exchange,
    problem::{GatewayProblem, types},
    template::Template,
    text,
};
use headers::Dedupe;

/// The filters [`Filter::build_basic`] compiles (relaxed names).
const NAMES: &[&str] = &[
    "strip_prefix",
    "prefix_path",
    "rewrite_path",
    "set_path",
    "add_request_header",
    "set_request_header",
    "remove_request_header",
    "add_request_headers_if_not_present",
    "add_request_parameter",
    "remove_request_parameter",
    "map_request_header",
    "preserve_host_header",
    "set_request_host_header",
    "request_size",
    "request_header_size",
    "redirect_to",
    "add_response_header",
    "set_response_header",
    "remove_response_header",
    "rewrite_response_header",
    "set_status",
    "dedupe_response_header",
    "secure_headers",
    "set_response_body",
];

/// When a filter acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// On the request, before the upstream call (may answer instead).
    Request,
    /// On the response.
    Response,
}

/// A compiled filter.
#[derive(Debug, Clone)]
pub(crate) enum Filter {
    StripPrefix(usize),
    PrefixPath(String),
    RewritePath(Regex, String),
    SetPath(Template),
    AddRequestHeader(HeaderName, Template),
    SetRequestHeader(HeaderName, Template),
    RemoveRequestHeader(HeaderName),
    AddRequestHeadersIfNotPresent(Vec<(HeaderName, Template)>),
    AddRequestParameter(String, Template),
    RemoveRequestParameter(String),
    MapRequestHeader(HeaderName, HeaderName),
    PreserveHostHeader,
    SetRequestHostHeader(HeaderValue),
    RequestSize(u64),
    RequestHeaderSize(usize, HeaderName),
    RedirectTo(StatusCode, String, bool),
    AddResponseHeader(HeaderName, Template),
    SetResponseHeader(HeaderName, Template),
    RemoveResponseHeader(HeaderName),
    RewriteResponseHeader(HeaderName, Regex, String),
    SetStatus(StatusCode),
    DedupeResponseHeader(Vec<HeaderName>, Dedupe),
    SecureHeaders(std::sync::Arc<[(HeaderName, HeaderValue)]>),
    SetResponseBody(Bytes, HeaderValue),
}

fn header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.trim().as_bytes()).map_err(|_| format!("{s:?} is not a header name"))
}

/// Java's `$\{name}` (the YAML escape Spring's docs use) and `$name` replacement syntax, in
/// the regex crate's form.
fn replacement(s: &str) -> String {
    s.replace("$\\", "$")
}

fn regex(s: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(s)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            format!(
                "invalid regex {s:?}: {}",
                e.to_string().lines().last().unwrap_or_default().trim()
            )
        })
}

impl Filter {
    /// Compiles one of the filters this module implements; `None` for other names (the
    /// route compiler knows the rest).
    pub(crate) fn build_basic(spec: &Spec) -> Option<Result<Self, String>> {
        let key = spec.key();
        NAMES
            .contains(&key.as_str())
            .then(|| Self::build_known(&key, &spec.args))
    }

    fn build_known(key: &str, a: &crate::config::Args) -> Result<Self, String> {
        {
            Ok(match key {
                "strip_prefix" => {
                    let parts = a.string(0, "parts")?.unwrap_or_else(|| "1".to_owned());
                    Filter::StripPrefix(
                        parts.parse().map_err(|_| {
                            format!("`parts` must be a whole number, got {parts:?}")
                        })?,
                    )
                }
                "prefix_path" => {
                    let p = a.required(0, "prefix")?;
                    if !p.starts_with('/') {
                        return Err(format!("`prefix` must start with /, got {p:?}"));
                    }
                    Filter::PrefixPath(p.trim_end_matches('/').to_owned())
                }
                "rewrite_path" => {
                    let re = regex(&a.required(0, "regexp")?)?;
                    let rep = a.string(1, "replacement")?.unwrap_or_default();
                    Filter::RewritePath(re, replacement(&rep))
                }
                "set_path" => Filter::SetPath(Template::parse(&a.required(0, "template")?)),
                "add_request_header" => Filter::AddRequestHeader(
                    header_name(&a.required(0, "name")?)?,
                    Template::parse(&a.string(1, "value")?.unwrap_or_default()),
                ),
                "set_request_header" => Filter::SetRequestHeader(
                    header_name(&a.required(0, "name")?)?,
                    Template::parse(&a.string(1, "value")?.unwrap_or_default()),
                ),
                "remove_request_header" => {
                    Filter::RemoveRequestHeader(header_name(&a.required(0, "name")?)?)
                }
                "add_request_headers_if_not_present" => {
                    let items = a.list(0, "headers");
                    if items.is_empty() {
                        return Err("needs at least one `name:value`".to_owned());
                    }
                    let mut out = Vec::new();
                    for item in items {
                        let (n, v) = item
                            .split_once(':')
                            .ok_or_else(|| format!("{item:?} is not `name:value`"))?;
                        out.push((header_name(n)?, Template::parse(v.trim())));
                    }
                    Filter::AddRequestHeadersIfNotPresent(out)
                }
                "add_request_parameter" => Filter::AddRequestParameter(
                    a.required(0, "name")?,
                    Template::parse(&a.string(1, "value")?.unwrap_or_default()),
                ),
                "remove_request_parameter" => {
                    Filter::RemoveRequestParameter(a.required(0, "name")?)
                }
                "map_request_header" => Filter::MapRequestHeader(
                    header_name(&a.required(0, "from_header")?)?,
                    header_name(&a.required(1, "to_header")?)?,
                ),
                "preserve_host_header" => Filter::PreserveHostHeader,
                "set_request_host_header" => {
                    let host = a.required(0, "host")?;
                    Filter::SetRequestHostHeader(
                        HeaderValue::from_str(&host)
                            .map_err(|_| format!("{host:?} is not a host"))?,
                    )
                }
                "request_size" => {
                    let v = a.get(0, "max_size").ok_or("missing argument `maxSize`")?;
                    Filter::RequestSize(crate::config::spec::size(v)?)
                }
                "request_header_size" => {
                    let v = a.get(0, "max_size").ok_or("missing argument `maxSize`")?;
                    let n = crate::config::spec::size(v)?;
                    let error_header = a
                        .string(1, "error_header_name")?
                        .unwrap_or_else(|| "errorMessage".to_owned());
                    Filter::RequestHeaderSize(
                        usize::try_from(n).unwrap_or(usize::MAX),
                        header_name(&error_header)?,
                    )
                }
                "redirect_to" => {
                    let status = crate::config::spec::status(&a.required(0, "status")?)?;
                    if !status.is_redirection() {
                        return Err(format!("`status` must be a 3xx status, got {status}"));
                    }
                    let url = a.required(1, "url")?;
                    HeaderValue::from_str(&url)
                        .map_err(|_| format!("{url:?} is not a valid URL"))?;
                    let include = a
                        .string(2, "include_request_params")?
                        .is_some_and(|s| s.eq_ignore_ascii_case("true"));
                    Filter::RedirectTo(status, url, include)
                }
                "add_response_header" => Filter::AddResponseHeader(
                    header_name(&a.required(0, "name")?)?,
                    Template::parse(&a.string(1, "value")?.unwrap_or_default()),
                ),
                "set_response_header" => Filter::SetResponseHeader(
                    header_name(&a.required(0, "name")?)?,
                    Template::parse(&a.string(1, "value")?.unwrap_or_default()),
                ),
                "remove_response_header" => {
                    Filter::RemoveResponseHeader(header_name(&a.required(0, "name")?)?)
                }
                "rewrite_response_header" => Filter::RewriteResponseHeader(
                    header_name(&a.required(0, "name")?)?,
                    regex(&a.required(1, "regexp")?)?,
                    replacement(&a.string(2, "replacement")?.unwrap_or_default()),
                ),
                "set_status" => {
                    Filter::SetStatus(crate::config::spec::status(&a.required(0, "status")?)?)
                }
                "dedupe_response_header" => {
                    let names: Vec<HeaderName> = a
                        .required(0, "name")?
                        .split_whitespace()
                        .map(header_name)
                        .collect::<Result<_, _>>()?;
                    let strategy = match a.string(1, "strategy")? {
                        Some(s) => Dedupe::parse(&s)?,
                        None => Dedupe::First,
                    };
                    Filter::DedupeResponseHeader(names, strategy)
                }
                "secure_headers" => Filter::SecureHeaders(headers::secure_headers(a)?.into()),
                "set_response_body" => {
                    let body = a.string(0, "body")?.unwrap_or_default();
                    let ct = a
                        .string(1, "content_type")?
                        .unwrap_or_else(|| "text/plain; charset=utf-8".to_owned());
                    Filter::SetResponseBody(
                        Bytes::from(body),
                        HeaderValue::from_str(&ct)
                            .map_err(|_| format!("{ct:?} is not a content type"))?,
                    )
                }
                other => return Err(format!("unknown filter {other:?}")),
            })
        }
    }

    /// When the filter acts.
    pub(crate) fn phase(&self) -> Phase {
        match self {
            Filter::AddResponseHeader(..)
            | Filter::SetResponseHeader(..)
            | Filter::RemoveResponseHeader(..)
            | Filter::RewriteResponseHeader(..)
            | Filter::SetStatus(..)
            | Filter::DedupeResponseHeader(..)
            | Filter::SecureHeaders(..)
            | Filter::SetResponseBody(..) => Phase::Response,
            _ => Phase::Request,
        }
    }

    /// Applies a request filter. `Some(response)` answers the request without calling upstream.
    pub(crate) fn on_request(&self, ex: &mut Exchange, route: &str) -> Option<Response<Body>> {
        match self {
            Filter::StripPrefix(n) => {
                let (stripped, rest) = strip_segments(&ex.path, *n);
                if !stripped.is_empty() {
                    let prefix = match ex.prefix.take() {
                        Some(p) => p + stripped,
                        None => stripped.to_owned(),
                    };
                    ex.prefix = Some(prefix);
                }
                ex.path = rest;
            }
            Filter::PrefixPath(p) => {
                ex.path = format!("{p}{}", ex.path);
            }
            Filter::RewritePath(re, rep) => {
                let out = re.replace_all(&ex.path, rep.as_str()).into_owned();
                ex.path = normalize_path(out);
            }
            Filter::SetPath(t) => {
                ex.path = normalize_path(t.expand(&ex.vars));
            }
            Filter::AddRequestHeader(n, v) => {
                if let Some(v) = value(v, ex) {
                    ex.headers.append(n.clone(), v);
                }
            }
            Filter::SetRequestHeader(n, v) => {
                if let Some(v) = value(v, ex) {
                    ex.headers.insert(n.clone(), v);
                }
            }
            Filter::RemoveRequestHeader(n) => {
                ex.headers.remove(n);
            }
            Filter::AddRequestHeadersIfNotPresent(list) => {
                for (n, v) in list {
                    if !ex.headers.contains_key(n)
                        && let Some(v) = value(v, ex)
                    {
                        ex.headers.insert(n.clone(), v);
                    }
                }
            }
            Filter::AddRequestParameter(name, v) => {
                let pair = format!(
                    "{}={}",
                    text::encode_component(name),
                    text::encode_component(&v.expand(&ex.vars))
                );
                ex.query = Some(match ex.query.take() {
                    Some(q) if !q.is_empty() => format!("{q}&{pair}"),
                    _ => pair,
                });
            }
            Filter::RemoveRequestParameter(name) => {
                if let Some(q) = ex.query.take() {
                    let kept: Vec<&str> = q
                        .split('&')
                        .filter(|p| {
                            let k = p.split_once('=').map_or(*p, |(k, _)| k);
                            !p.is_empty() && text::decode(k, true) != name.as_str()
                        })
                        .collect();
                    ex.query = (!kept.is_empty()).then(|| kept.join("&"));
                }
            }
            Filter::MapRequestHeader(from, to) => {
                let values: Vec<HeaderValue> = ex.headers.get_all(from).iter().cloned().collect();
                for v in values {
                    ex.headers.append(to.clone(), v);
                }
            }
            Filter::PreserveHostHeader => ex.preserve_host = true,
            Filter::SetRequestHostHeader(h) => {
                ex.preserve_host = true;
                ex.host = Some(h.clone());
            }
            Filter::RequestSize(max) => {
                let len = ex
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if let Some(len) = len
                    && len > *max
                {
                    let detail = format!(
                        "Request size is larger than permissible limit. Request size is {} where permissible limit is {}",
                        human_size(len),
                        human_size(*max)
                    );
                    let mut res = GatewayProblem::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        types::BODY_TOO_LARGE,
                        detail.clone(),
                    )
                    .route(route)
                    .instance(&ex.path)
                    .extension("limit", *max)
                    .into_response();
                    if let Ok(v) = HeaderValue::from_str(&detail) {
                        res.headers_mut().insert("errormessage", v);
                    }
                    return Some(res);
                }
                ex.max_body = Some(ex.max_body.map_or(*max, |m| m.min(*max)));
            }
            Filter::RequestHeaderSize(max, error_header) => {
                let total: usize = ex
                    .headers
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len())
                    .sum();
                if total > *max {
                    let largest = ex
                        .headers
                        .iter()
                        .max_by_key(|(k, v)| k.as_str().len() + v.len())
                        .map(|(k, _)| k.as_str().to_owned())
                        .unwrap_or_default();
                    let detail = format!(
                        "Request Header/s size is larger than permissible limit ({}). The largest is `{largest}`",
                        human_size(*max as u64)
                    );
                    let mut res = GatewayProblem::new(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        types::HEADERS_TOO_LARGE,
                        detail.clone(),
                    )
                    .route(route)
                    .instance(&ex.path)
                    .into_response();
                    if let Ok(v) = HeaderValue::from_str(&detail) {
                        res.headers_mut().insert(error_header.clone(), v);
                    }
                    return Some(res);
                }
            }
            Filter::RedirectTo(status, url, include) => {
                let mut location = url.clone();
                if *include && let Some(q) = ex.query.as_deref().filter(|q| !q.is_empty()) {
                    location.push(if location.contains('?') { '&' } else { '?' });
                    location.push_str(q);
                }
                let mut res = Response::new(Body::Empty);
                *res.status_mut() = *status;
                if let Ok(v) = HeaderValue::from_str(&location) {
                    res.headers_mut().insert(header::LOCATION, v);
                }
                return Some(res);
            }
            _ => {}
        }
        None
    }

    /// Applies a response filter.
    pub(crate) fn on_response(&self, ex: &Exchange, res: &mut Response<Body>) {
        match self {
            Filter::AddResponseHeader(n, v) => {
                if let Some(v) = value(v, ex) {
                    res.headers_mut().append(n.clone(), v);
                }
            }
            Filter::SetResponseHeader(n, v) => {
                if res.headers().contains_key(n)
                    && let Some(v) = value(v, ex)
                {
                    res.headers_mut().insert(n.clone(), v);
                } else if let Some(v) = value(v, ex) {
                    res.headers_mut().insert(n.clone(), v);
                }
            }
            Filter::RemoveResponseHeader(n) => {
                res.headers_mut().remove(n);
            }
            Filter::RewriteResponseHeader(n, re, rep) => {
                let values: Vec<HeaderValue> = res.headers().get_all(n).iter().cloned().collect();
                if values.is_empty() {
                    return;
                }
                res.headers_mut().remove(n);
                for v in values {
                    let new = match v.to_str() {
                        Ok(s) => {
                            HeaderValue::from_str(&re.replace_all(s, rep.as_str())).unwrap_or(v)
                        }
                        Err(_) => v,
                    };
                    res.headers_mut().append(n.clone(), new);
                }
            }
            Filter::SetStatus(s) => {
                let original = res.status();
                *res.status_mut() = *s;
                if let Ok(v) = HeaderValue::from_str(original.as_str()) {
                    res.headers_mut().insert("x-keel-original-status", v);
                }
            }
            Filter::DedupeResponseHeader(names, strategy) => {
                for n in names {
                    strategy.apply(res.headers_mut(), n);
                }
            }
            Filter::SecureHeaders(list) => {
                for (n, v) in list.iter() {
                    if !res.headers().contains_key(n) {
                        res.headers_mut().insert(n.clone(), v.clone());
                    }
                }
            }
            Filter::SetResponseBody(body, ct) => {
                *res.body_mut() = Body::full(body.clone());
                let h = res.headers_mut();
                h.remove(header::TRANSFER_ENCODING);
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                h.insert(header::CONTENT_TYPE, ct.clone());
            }
            _ => {}
        }
    }
}

fn value(t: &Template, ex: &Exchange) -> Option<HeaderValue> {
    let s = t.expand(&ex.vars);
    HeaderValue::from_str(&s).ok()
}

/// Splits off the first `n` segments of `path`: (`/a/b`, `/c`) for `/a/b/c` and 2.
fn strip_segments(path: &str, n: usize) -> (&str, String) {
    if n == 0 {
        return ("", path.to_owned());
    }
    let mut idx = 0;
    let bytes = path.as_bytes();
    let mut seen = 0;
    // Skip the leading slash of each segment.
    while seen < n && idx < bytes.len() {
        idx += 1; // the '/'
        while idx < bytes.len() && bytes[idx] != b'/' {
            idx += 1;
        }
        seen += 1;
    }
    let rest = &path[idx..];
    let rest = if rest.is_empty() {
        "/".to_owned()
    } else {
        rest.to_owned()
    };
    (&path[..idx], rest)
}

fn normalize_path(p: String) -> String {
    if p.is_empty() {
        "/".to_owned()
    } else if !p.starts_with('/') {
        format!("/{p}")
    } else {
        p
    }
}

fn human_size(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MB", n as f64 / f64::from(1u32 << 20))
    } else if n >= 1 << 10 {
        format!("{:.1} KB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_segments() {
        assert_eq!(
            strip_segments("/name/blue/red", 2),
            ("/name/blue", "/red".to_owned())
        );
        assert_eq!(strip_segments("/name", 2), ("/name", "/".to_owned()));
        assert_eq!(strip_segments("/a/b/", 1), ("/a", "/b/".to_owned()));
        assert_eq!(strip_segments("/a", 0), ("", "/a".to_owned()));
    }

    #[test]
    fn java_replacement_syntax() {
        let re = regex("/red/?(?<segment>.*)").unwrap();
        let rep = replacement("/$\\{segment}");
        assert_eq!(re.replace_all("/red/blue", rep.as_str()), "/blue");
    }
}
