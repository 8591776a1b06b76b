//! Route predicates (Spring Cloud Gateway's set), compiled once per route table. A route
//! matches when every one of its predicates holds.
//!
//! | Predicate | Shortcut | Holds when |
//! |---|---|---|
//! | `Path` | `Path=/orders/{id},/o/**[,false]` | the path matches a pattern (trailing-slash flag last) |
//! | `Method` | `Method=GET,POST` | the method is one of them |
//! | `Host` | `Host=**.example.org,{sub}.example.com` | the `Host` header (port ignored) matches a pattern |
//! | `Header` | `Header=X-Request-Id, \d+` | the header is present (and a value matches the regex) |
//! | `Query` | `Query=green[, gree.]` | the parameter is present (and a value matches) |
//! | `Cookie` | `Cookie=chocolate, ch.p` | the cookie is present and its value matches |
//! | `RemoteAddr` | `RemoteAddr=192.168.1.1/24` | the client address is in a range |
//! | `XForwardedRemoteAddr` | `XForwardedRemoteAddr=10.0.0.0/8` | the trusted `X-Forwarded-For` entry is in a range |
//! | `Weight` | `Weight=group1, 8` | this route was drawn for the group (in proportion to weights) |
//! | `After`, `Before`, `Between` | `After=2017-01-20T17:42:47.789-07:00[America/Denver]` | the time is after / before / between |
//!
//! Regexes must match the whole value (Java's `String.matches`).

pub(crate) mod cidr;
pub(crate) mod datetime;

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use http::{HeaderMap, HeaderName, Method, header};
use regex::{Regex, RegexBuilder};

use crate::{
    config::Spec,
    pattern::{Captures, Pattern},
    text,
};
use cidr::Cidr;

/// What predicates look at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestView<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) client: IpAddr,
}

/// Weight groups of a route table: group → (route id, weight), in table order.
pub(crate) type WeightGroups = HashMap<Arc<str>, Vec<(Arc<str>, u32)>>;

/// Per-request state of predicate evaluation: the route drawn for each weight group.
#[derive(Debug, Default)]
pub(crate) struct Draws {
    drawn: Vec<(Arc<str>, Arc<str>)>,
}

impl Draws {
    fn drawn(&mut self, group: &Arc<str>, groups: &WeightGroups) -> Option<Arc<str>> {
        if let Some((_, id)) = self.drawn.iter().find(|(g, _)| g == group) {
            return Some(id.clone());
        }
        let members = groups.get(group)?;
        let total: u64 = members.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut r = rand::random_range(0..total);
        let mut chosen = members.last()?.0.clone();
        for (id, w) in members {
            let w = u64::from(*w);
            if r < w {
                chosen = id.clone();
                break;
            }
            r -= w;
        }
        self.drawn.push((group.clone(), chosen.clone()));
        Some(chosen)
    }
}

/// A compiled predicate.
#[derive(Debug, Clone)]
pub(crate) enum Predicate {
    Path(Vec<Pattern>),
    Method(Vec<Method>),
    Host(Vec<Pattern>),
    Header(HeaderName, Option<Regex>),
    Query(String, Option<Regex>),
    Cookie(String, Regex),
    RemoteAddr(Vec<Cidr>),
    XForwardedRemoteAddr(Vec<Cidr>, usize),
    Weight(Arc<str>, u32),
    After(i64),
    Before(i64),
    Between(i64, i64),
    /// A disabled route (`enabled: false`).
    Never,
}

fn full_match(re: &str) -> Result<Regex, String> {
    RegexBuilder::new(&format!("^(?:{re})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            format!(
                "invalid regex {re:?}: {}",
                e.to_string().lines().last().unwrap_or_default().trim()
            )
        })
}

fn header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.trim().as_bytes()).map_err(|_| format!("{s:?} is not a header name"))
}

impl Predicate {
    /// Compiles one definition.
    pub(crate) fn build(spec: &Spec) -> Result<Self, String> {
        let a = &spec.args;
        Ok(match spec.key().as_str() {
            "path" => {
                let mut patterns = a.list(0, "patterns");
                if patterns.is_empty() {
                    patterns = a.list(0, "pattern");
                }
                let mut trailing = match a.string(usize::MAX, "match_trailing_slash")? {
                    Some(s) => s.eq_ignore_ascii_case("true"),
                    None => true,
                };
                if let Some(last) = patterns.last()
                    && (last.eq_ignore_ascii_case("true") || last.eq_ignore_ascii_case("false"))
                {
                    trailing = last.eq_ignore_ascii_case("true");
                    patterns.pop();
                }
                if patterns.is_empty() {
                    return Err("needs at least one pattern".to_owned());
                }
                Predicate::Path(
                    patterns
                        .iter()
                        .map(|p| Pattern::path(p, trailing).map_err(|e| e.to_string()))
                        .collect::<Result<_, _>>()?,
                )
            }
            "method" => {
                let methods = a.list(0, "methods");
                if methods.is_empty() {
                    return Err("needs at least one method".to_owned());
                }
                Predicate::Method(
                    methods
                        .iter()
                        .map(|m| crate::config::spec::method(m))
                        .collect::<Result<_, _>>()?,
                )
            }
            "host" => {
                let patterns = a.list(0, "patterns");
                if patterns.is_empty() {
                    return Err("needs at least one pattern".to_owned());
                }
                Predicate::Host(
                    patterns
                        .iter()
                        .map(|p| Pattern::host(&p.to_ascii_lowercase()).map_err(|e| e.to_string()))
                        .collect::<Result<_, _>>()?,
                )
            }
            "header" => {
                let name =
                    header_name(&a.required(0, "header").or_else(|_| a.required(0, "name"))?)?;
                let re = a.string(1, "regexp")?.map(|r| full_match(&r)).transpose()?;
                Predicate::Header(name, re)
            }
            "query" => {
                let name = a.required(0, "param")?;
                let re = a.string(1, "regexp")?.map(|r| full_match(&r)).transpose()?;
                Predicate::Query(name, re)
            }
            "cookie" => {
                let name = a.required(0, "name")?;
                let re = full_match(&a.required(1, "regexp")?)?;
                Predicate::Cookie(name, re)
            }
            "remote_addr" => Predicate::RemoteAddr(cidrs(&a.list(0, "sources"))?),
            "x_forwarded_remote_addr" => {
                let max = match a.string(usize::MAX, "max_trusted_index")? {
                    Some(s) => s
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or("`max_trusted_index` must be at least 1")?,
                    None => 1,
                };
                Predicate::XForwardedRemoteAddr(cidrs(&a.list(0, "sources"))?, max)
            }
            "weight" => {
                let group = a.required(0, "group")?;
                let weight = a
                    .required(1, "weight")?
                    .parse::<u32>()
                    .map_err(|_| "`weight` must be a whole number".to_owned())?;
                Predicate::Weight(group.into(), weight)
            }
            "after" => Predicate::After(datetime::parse_instant(&a.required(0, "datetime")?)?),
            "before" => Predicate::Before(datetime::parse_instant(&a.required(0, "datetime")?)?),
            "between" => {
                let from = datetime::parse_instant(&a.required(0, "datetime1")?)?;
                let to = datetime::parse_instant(&a.required(1, "datetime2")?)?;
                if from >= to {
                    return Err("`datetime1` must be before `datetime2`".to_owned());
                }
                Predicate::Between(from, to)
            }
            "never" => Predicate::Never,
            "read_body" | "cloud_foundry_route_service" => {
                return Err(format!(
                    "the {} predicate is not supported (it needs Java code)",
                    spec.name
                ));
            }
            _ => return Err(format!("unknown predicate {:?}", spec.name)),
        })
    }

    /// Whether the predicate holds; `Path` and `Host` add their captures to `vars`.
    pub(crate) fn test(
        &self,
        req: &RequestView<'_>,
        vars: &mut Captures,
        route: &Arc<str>,
        groups: &WeightGroups,
        draws: &mut Draws,
    ) -> bool {
        match self {
            Predicate::Path(patterns) => patterns.iter().any(|p| {
                if p.variables().next().is_none() {
                    return p.is_match(req.path);
                }
                match p.captures(req.path) {
                    Some(c) => {
                        vars.extend(c);
                        true
                    }
                    None => false,
                }
            }),
            Predicate::Method(methods) => methods.contains(req.method),
            Predicate::Host(patterns) => {
                let Some(host) = request_host(req.headers) else {
                    return false;
                };
                let host = host.to_ascii_lowercase();
                patterns.iter().any(|p| match p.captures(&host) {
                    Some(c) => {
                        vars.extend(c);
                        true
                    }
                    None => false,
                })
            }
            Predicate::Header(name, re) => {
                let mut values = req.headers.get_all(name).iter().peekable();
                match re {
                    None => values.peek().is_some(),
                    Some(re) => values.any(|v| v.to_str().is_ok_and(|v| re.is_match(v))),
                }
            }
            Predicate::Query(name, re) => req.query.is_some_and(|q| {
                text::query_pairs(q).any(|(k, v)| {
                    k == name.as_str() && re.as_ref().is_none_or(|re| re.is_match(&v))
                })
            }),
            Predicate::Cookie(name, re) => {
                text::cookies(req.headers.get_all(header::COOKIE).iter())
                    .any(|(k, v)| k == name && re.is_match(v))
            }
            Predicate::RemoteAddr(ranges) => ranges.iter().any(|c| c.contains(req.client)),
            Predicate::XForwardedRemoteAddr(ranges, max) => {
                let entries: Vec<&str> = req
                    .headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                let ip = if entries.is_empty() {
                    Some(req.client)
                } else {
                    let idx = entries.len().saturating_sub(*max);
                    entries[idx].parse::<IpAddr>().ok()
                };
                ip.is_some_and(|ip| ranges.iter().any(|c| c.contains(ip)))
            }
            Predicate::Weight(group, _) => draws.drawn(group, groups).as_ref() == Some(route),
            Predicate::After(t) => datetime::now_ms() > *t,
            Predicate::Before(t) => datetime::now_ms() < *t,
            Predicate::Between(a, b) => {
                let now = datetime::now_ms();
                now > *a && now < *b
            }
            Predicate::Never => false,
        }
    }

    /// Whether this is a `Method` predicate (ignored when routing a CORS preflight).
    pub(crate) fn is_method(&self) -> bool {
        matches!(self, Predicate::Method(_))
    }
}

/// The request's host: `Host`, or the URI authority for HTTP/2. Without the port.
pub(crate) fn request_host(headers: &HeaderMap) -> Option<&str> {
    let h = headers.get(header::HOST)?.to_str().ok()?;
    Some(strip_port(h))
}

/// `host:port` → `host` (IPv6 literals keep their brackets).
pub(crate) fn strip_port(h: &str) -> &str {
    if h.starts_with('[') {
        return h.split_inclusive(']').next().unwrap_or(h);
    }
    h.rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(h, |(host, _)| host)
}

fn cidrs(sources: &[String]) -> Result<Vec<Cidr>, String> {
    if sources.is_empty() {
        return Err("needs at least one address or range".to_owned());
    }
    sources.iter().map(|s| Cidr::parse(s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn build(s: &str) -> Predicate {
        Predicate::build(&Spec::parse(&json!(s)).unwrap()).unwrap()
    }

    fn holds(p: &Predicate, method: &str, uri: &str, headers: &[(&str, &str)]) -> bool {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri, None),
        };
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let view = RequestView {
            method: &m,
            path,
            query,
            headers: &h,
            client: "10.1.2.3".parse().unwrap(),
        };
        p.test(
            &view,
            &mut Vec::new(),
            &Arc::from("r"),
            &HashMap::new(),
            &mut Draws::default(),
        )
    }

    #[test]
    fn each_predicate() {
        assert!(holds(&build("Path=/a/**,/b/{x}"), "GET", "/b/1", &[]));
        assert!(!holds(&build("Path=/a/**,/b/{x}"), "GET", "/c", &[]));
        assert!(!holds(&build("Path=/a,false"), "GET", "/a/", &[]));
        assert!(holds(&build("Method=GET,POST"), "POST", "/", &[]));
        assert!(!holds(&build("Method=GET"), "DELETE", "/", &[]));
        assert!(holds(
            &build("Host=**.example.org"),
            "GET",
            "/",
            &[("host", "api.example.org:8080")]
        ));
        assert!(!holds(
            &build("Host=**.example.org"),
            "GET",
            "/",
            &[("host", "example.com")]
        ));
        assert!(holds(
            &build("Header=X-Id, \\d+"),
            "GET",
            "/",
            &[("x-id", "123")]
        ));
        assert!(!holds(
            &build("Header=X-Id, \\d+"),
            "GET",
            "/",
            &[("x-id", "12a")]
        ));
        assert!(holds(&build("Header=X-Id"), "GET", "/", &[("x-id", "")]));
        assert!(holds(&build("Query=green"), "GET", "/?green", &[]));
        assert!(holds(&build("Query=red, gree."), "GET", "/?red=greet", &[]));
        assert!(!holds(&build("Query=red, gree."), "GET", "/?red=blue", &[]));
        assert!(holds(
            &build("Cookie=chocolate, ch.p"),
            "GET",
            "/",
            &[("cookie", "a=1; chocolate=chip")]
        ));
        assert!(!holds(
            &build("Cookie=chocolate, ch.p"),
            "GET",
            "/",
            &[("cookie", "chocolate=chips")]
        ));
        assert!(holds(&build("RemoteAddr=10.1.0.0/16"), "GET", "/", &[]));
        assert!(!holds(&build("RemoteAddr=192.168.0.0/16"), "GET", "/", &[]));
        assert!(holds(
            &build("XForwardedRemoteAddr=192.168.0.0/16"),
            "GET",
            "/",
            &[("x-forwarded-for", "1.1.1.1, 192.168.3.4")]
        ));
        assert!(holds(&build("After=2000-01-01T00:00:00Z"), "GET", "/", &[]));
        assert!(!holds(
            &build("Before=2000-01-01T00:00:00Z"),
            "GET",
            "/",
            &[]
        ));
        assert!(holds(
            &build("Between=2000-01-01T00:00:00Z, 2999-01-01T00:00:00Z"),
            "GET",
            "/",
            &[]
        ));
    }

    #[test]
    fn bad_definitions() {
        for s in [
            "Path",
            "Path=/a/{",
            "Method=G E T",
            "Header=Bad Name",
            "Header=X, (",
            "Cookie=c",
            "RemoteAddr=nope",
            "Weight=g",
            "Weight=g, x",
            "Between=2999-01-01T00:00:00Z, 2000-01-01T00:00:00Z",
            "Nope=1",
        ] {
            assert!(
                Predicate::build(&Spec::parse(&json!(s)).unwrap()).is_err(),
                "{s}"
            );
        }
    }

    #[test]
    fn weight_draws_once_per_group() {
        let mut groups = WeightGroups::new();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        groups.insert(Arc::from("g"), vec![(a.clone(), 8), (b.clone(), 2)]);
        let p = Predicate::Weight(Arc::from("g"), 8);
        let h = HeaderMap::new();
        let view = RequestView {
            method: &Method::GET,
            path: "/",
            query: None,
            headers: &h,
            client: "127.0.0.1".parse().unwrap(),
        };
        let mut hits_a = 0;
        for _ in 0..1000 {
            let mut draws = Draws::default();
            let ra = p.test(&view, &mut Vec::new(), &a, &groups, &mut draws);
            let rb = p.test(&view, &mut Vec::new(), &b, &groups, &mut draws);
            assert!(ra != rb, "exactly one route of the group wins per request");
            hits_a += usize::from(ra);
        }
        assert!((700..900).contains(&hits_a), "{hits_a}");
    }
}
