//! API composition: a route that fans out to several upstreams in parallel (their paths filled
//! with the route's path variables), merges their JSON into one document, and marks each part
//! that failed or timed out as unavailable instead of failing the whole response.
//!
//! ```yaml
//! - id: order-details
//!   predicates: [Path=/orders/{id}, Method=GET]
//!   compose:
//!     timeout: 2s
//!     parts:
//!       - { name: order, uri: "lb://order/orders/{id}", merge: true, required: true }
//!       - { name: ticket, uri: "lb://kitchen/tickets/{id}", timeout: 500ms }
//! ```

use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde_json::{Map, Value};

use crate::{
    body::Body,
    config::{
        spec,
        tree::{lookup, scalar_string},
    },
    exchange::Exchange,
    problem::{GatewayProblem, types},
    proxy::Proxy,
    route::Target,
    template::Template,
};

/// Largest part body read, in bytes.
const PART_LIMIT: usize = 8 << 20;

/// One upstream call of a composition.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub(crate) name: String,
    pub(crate) target: Target,
    pub(crate) path: Template,
    /// Merge the part's object into the top level instead of nesting it under `name`.
    pub(crate) merge: bool,
    /// A required part that fails fails the whole response.
    pub(crate) required: bool,
    pub(crate) timeout: Option<Duration>,
}

/// A compiled `compose` section.
#[derive(Debug, Clone)]
pub(crate) struct Composition {
    pub(crate) parts: Vec<Part>,
    pub(crate) timeout: Duration,
}

impl Composition {
    /// Compiles `compose`; errors name the field below `compose`.
    pub(crate) fn build(v: &Value, has_discovery: bool) -> Result<Self, (String, String)> {
        let timeout = match lookup(v, "timeout").filter(|x| !x.is_null()) {
            Some(t) => spec::duration(t).map_err(|e| ("compose.timeout".to_owned(), e))?,
            None => Duration::from_secs(5),
        };
        let parts_v = lookup(v, "parts")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                (
                    "compose.parts".to_owned(),
                    "needs at least one part".to_owned(),
                )
            })?;
        let mut parts = Vec::with_capacity(parts_v.len());
        for (i, p) in parts_v.iter().enumerate() {
            let at = |k: &str, e: String| (format!("compose.parts[{i}].{k}"), e);
            let name = lookup(p, "name")
                .and_then(scalar_string)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| at("name", "missing".into()))?;
            let uri = lookup(p, "uri")
                .and_then(scalar_string)
                .ok_or_else(|| at("uri", "missing".into()))?;
            let (base, path) = split_uri(&uri).map_err(|e| at("uri", e))?;
            let target = Target::parse(&base).map_err(|e| at("uri", e))?;
            if !matches!(target, Target::Http { .. } | Target::Lb { .. }) {
                return Err(at("uri", "must be http://… or lb://…".into()));
            }
            if matches!(target, Target::Lb { .. }) && !has_discovery {
                return Err(at("uri", "lb:// needs discovery settings".into()));
            }
            let flag = |k: &str| -> Result<bool, (String, String)> {
                lookup(p, k)
                    .filter(|x| !x.is_null())
                    .map(spec::boolean)
                    .transpose()
                    .map(|b| b.unwrap_or(false))
                    .map_err(|e| at(k, e))
            };
            let part_timeout = lookup(p, "timeout")
                .filter(|x| !x.is_null())
                .map(spec::duration)
                .transpose()
                .map_err(|e| at("timeout", e))?;
            parts.push(Part {
                merge: flag("merge")?,
                required: flag("required")?,
                name,
                target,
                path: Template::parse(&path),
                timeout: part_timeout,
            });
        }
        Ok(Self { parts, timeout })
    }
}

/// `lb://order/orders/{id}` → (`lb://order`, `/orders/{id}`).
fn split_uri(uri: &str) -> Result<(String, String), String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| format!("{uri:?} is not a URI"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((format!("{scheme}://{host}"), path.to_owned()))
}

enum PartResult {
    Value(Value),
    NotFound,
    Failed(String),
}

impl Proxy {
    /// Answers a composition route.
    pub(crate) async fn compose(
        &self,
        route_id: &str,
        c: &Composition,
        ex: &Exchange,
    ) -> Response<Body> {
        let overall = tokio::time::Instant::now() + c.timeout;
        let calls = c.parts.iter().map(|p| async move {
            // One deadline per part, within the composition's: head and body together.
            let deadline = p
                .timeout
                .map_or(overall, |t| (tokio::time::Instant::now() + t).min(overall));
            let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut px = crate::proxy::ex_clone(ex);
            let path_and_query = p.path.expand(&ex.vars);
            let (path, query) = match path_and_query.split_once('?') {
                Some((a, b)) => (a.to_owned(), Some(b.to_owned())),
                None => (path_and_query, None),
            };
            px.path = path;
            px.query = query;
            px.method = Method::GET;
            px.headers.remove(header::CONTENT_LENGTH);
            px.headers.remove(header::CONTENT_TYPE);
            px.headers
                .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
            px.trace = ex.trace.child();
            let r = self
                .fetch(
                    &p.target,
                    None,
                    Some(limit),
                    &px,
                    Body::Empty,
                    &mut Vec::new(),
                )
                .await;
            let out = match r {
                Err(e) => PartResult::Failed(e.detail()),
                Ok(res) if res.status() == StatusCode::NOT_FOUND => PartResult::NotFound,
                Ok(res) if !res.status().is_success() => {
                    PartResult::Failed(format!("answered {}", res.status()))
                }
                Ok(res) => {
                    let body = tokio::time::timeout_at(
                        deadline,
                        Limited::new(res.into_body(), PART_LIMIT).collect(),
                    )
                    .await;
                    match body {
                        Ok(Ok(b)) => match serde_json::from_slice::<Value>(&b.to_bytes()) {
                            Ok(v) => PartResult::Value(v),
                            Err(e) => PartResult::Failed(format!("invalid JSON: {e}")),
                        },
                        Ok(Err(e)) => PartResult::Failed(format!("body: {e}")),
                        Err(_) => PartResult::Failed("timed out reading the body".into()),
                    }
                }
            };
            (p, out)
        });
        let results = join_all(calls).await;
        let mut doc = Map::new();
        let mut unavailable = Vec::new();
        for (p, r) in results {
            let v = match r {
                PartResult::Value(v) => v,
                PartResult::NotFound if p.required => {
                    return GatewayProblem::new(
                        StatusCode::NOT_FOUND,
                        types::UPSTREAM_ERROR,
                        format!("`{}` not found", p.name),
                    )
                    .route(route_id)
                    .instance(&ex.path)
                    .into_response();
                }
                PartResult::NotFound => Value::Null,
                PartResult::Failed(why) if p.required => {
                    return GatewayProblem::new(
                        StatusCode::BAD_GATEWAY,
                        types::UPSTREAM_ERROR,
                        format!("required part `{}` failed: {why}", p.name),
                    )
                    .route(route_id)
                    .instance(&ex.path)
                    .into_response();
                }
                PartResult::Failed(why) => {
                    tracing::debug!(route = route_id, part = %p.name, %why, "composition part unavailable");
                    unavailable.push(Value::String(p.name.clone()));
                    Value::Null
                }
            };
            match v {
                Value::Object(m) if p.merge => doc.extend(m),
                v => {
                    doc.insert(p.name.clone(), v);
                }
            }
        }
        doc.insert("unavailable".into(), Value::Array(unavailable));
        let bytes = Bytes::from(serde_json::to_vec(&Value::Object(doc)).unwrap_or_default());
        let mut res = Response::new(Body::full(bytes));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_and_names_bad_fields() {
        let c = Composition::build(
            &json!({"timeout": "1s", "parts": [{"name": "a", "uri": "http://127.0.0.1:1/x/{id}", "merge": true}]}),
            false,
        )
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert!(c.parts[0].merge && !c.parts[0].required);
        let e = Composition::build(&json!({"parts": [{"name": "a", "uri": "lb://x/y"}]}), false)
            .unwrap_err();
        assert_eq!(e.0, "compose.parts[0].uri");
        let e = Composition::build(&json!({"parts": []}), true).unwrap_err();
        assert_eq!(e.0, "compose.parts");
        assert_eq!(
            split_uri("lb://order/orders/{id}").unwrap(),
            ("lb://order".into(), "/orders/{id}".into())
        );
    }
}
