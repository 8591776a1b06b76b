//! The route file as a tree: YAML documents selected by profile and merged, then read with
//! Spring's relaxed binding (`default-filters`, `defaultFilters` and `default_filters` are
//! the same key; `a.b: x` is the same as `a: {b: x}`; `[/**]` is the literal key `/**`).

use serde_json::{Map, Value};

use super::profile;

/// Parses every YAML document in `text`, keeps those whose profile selector matches
/// `profiles` (or that have none) and deep-merges them in order. When no profile is given,
/// `spring.profiles.active` of the unconditional documents supplies the active ones.
pub(crate) fn parse_documents(text: &str, profiles: &[String]) -> Result<Value, String> {
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let value: serde_norway::Value =
            serde::Deserialize::deserialize(doc).map_err(yaml_error)?;
        let json = to_json(value, 0)?;
        let json = match json {
            Value::Null => Value::Object(Map::new()),
            Value::Object(m) => Value::Object(expand_dotted(m)),
            _ => return Err("a route file must be a mapping (key: value) at the top".to_owned()),
        };
        docs.push(json);
    }

    let mut active: Vec<String> = profiles.to_vec();
    if active.is_empty() {
        for doc in &docs {
            if selector(doc).is_none()
                && let Some(v) = lookup(doc, "spring.profiles.active")
            {
                active.extend(string_list(v));
            }
        }
    }

    let mut merged = Value::Object(Map::new());
    for doc in docs {
        let keep = match selector(&doc) {
            None => true,
            Some(expr) => profile::matches(&expr, &active)?,
        };
        if keep {
            merge(&mut merged, doc);
        }
    }
    Ok(merged)
}

fn yaml_error(e: serde_norway::Error) -> String {
    match e.location() {
        Some(l) => format!(
            "not valid YAML at line {}, column {}: {e}",
            l.line(),
            l.column()
        ),
        None => format!("not valid YAML: {e}"),
    }
}

/// The document's profile selector: `spring.config.activate.on-profile` or `spring.profiles`
/// (when that is a string or list, not a map holding `active`/`include`).
fn selector(doc: &Value) -> Option<String> {
    if let Some(v) = lookup(doc, "spring.config.activate.on_profile") {
        return Some(string_list(v).join(","));
    }
    match lookup(doc, "spring.profiles") {
        Some(v @ (Value::String(_) | Value::Array(_))) => Some(string_list(v).join(",")),
        _ => None,
    }
}

const MAX_DEPTH: usize = 64;

fn to_json(v: serde_norway::Value, depth: usize) -> Result<Value, String> {
    use serde_norway::Value as Y;
    if depth > MAX_DEPTH {
        return Err("the document is nested too deeply".to_owned());
    }
    Ok(match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(seq) => Value::Array(
            seq.into_iter()
                .map(|x| to_json(x, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    Y::Null => "null".to_owned(),
                    _ => return Err("mapping keys must be plain scalars".to_owned()),
                };
                out.insert(key, to_json(v, depth + 1)?);
            }
            Value::Object(out)
        }
        Y::Tagged(t) => to_json(t.value, depth + 1)?,
    })
}

/// Turns top-level `a.b.c: v` keys into nested maps (Spring allows both in YAML).
fn expand_dotted(m: Map<String, Value>) -> Map<String, Value> {
    let mut out = Value::Object(Map::new());
    for (k, v) in m {
        if k.contains('.') && !k.starts_with('[') {
            let mut nested = v;
            for part in k.rsplit('.') {
                let mut one = Map::new();
                one.insert(part.to_owned(), nested);
                nested = Value::Object(one);
            }
            merge(&mut out, nested);
        } else {
            let mut one = Map::new();
            one.insert(k, v);
            merge(&mut out, Value::Object(one));
        }
    }
    match out {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Deep merge: maps merge key by key (keys compared relaxed), anything else is replaced.
pub(crate) fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                let rk = relax(&k);
                let existing = b.keys().find(|bk| relax(bk) == rk).cloned();
                match existing {
                    Some(ek) => {
                        if let Some(slot) = b.get_mut(&ek) {
                            merge(slot, v);
                        }
                    }
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// A key in relaxed form: `fallbackUri`, `fallback-uri` and `fallback_uri` all become
/// `fallback_uri`; surrounding `[` `]` are removed.
pub(crate) fn relax(key: &str) -> String {
    let key = key
        .strip_prefix('[')
        .and_then(|k| k.strip_suffix(']'))
        .unwrap_or(key);
    let mut out = String::with_capacity(key.len() + 4);
    let chars: Vec<char> = key.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '-' || c == '_' {
            if !out.ends_with('_') || out.is_empty() {
                out.push('_');
            }
        } else if c.is_ascii_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1).copied();
            let boundary = match prev {
                Some(p) if p.is_ascii_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_ascii_uppercase() => next.is_some_and(|n| n.is_ascii_lowercase()),
                _ => false,
            };
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Looks up a dotted, relaxed path (`spring.cloud.gateway.default_filters`). At each level a
/// literal dotted key is tried as well as nesting.
pub(crate) fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(v);
    }
    let map = v.as_object()?;
    let want = relax(path);
    // A key that is the whole remaining path, written flat.
    if let Some((_, found)) = map.iter().find(|(k, _)| relax(k) == want) {
        return Some(found);
    }
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, r),
        None => return None,
    };
    let head = relax(head);
    let (_, next) = map.iter().find(|(k, _)| relax(k) == head)?;
    lookup(next, rest)
}

/// A value as a list of strings: a YAML list, or a comma-separated string.
pub(crate) fn string_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter_map(scalar_string).collect(),
        Value::Null => Vec::new(),
        other => scalar_string(other)
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// A scalar as a string (numbers and booleans too, as YAML writes them unquoted).
pub(crate) fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxed_keys() {
        assert_eq!(relax("fallbackUri"), "fallback_uri");
        assert_eq!(relax("fallback-uri"), "fallback_uri");
        assert_eq!(relax("default-filters"), "default_filters");
        assert_eq!(relax("lowerCaseServiceId"), "lower_case_service_id");
        assert_eq!(relax("[/**]"), "/**");
        assert_eq!(relax("_genkey_0"), "_genkey_0");
        assert_eq!(relax("on-profile"), "on_profile");
        assert_eq!(relax("XForwardedRemoteAddr"), "x_forwarded_remote_addr");
        assert_eq!(
            relax("useInsecureTrustManager"),
            "use_insecure_trust_manager"
        );
        assert_eq!(
            relax("trustedX509Certificates"),
            "trusted_x509_certificates"
        );
    }

    #[test]
    fn documents_merge_by_profile() {
        let text = r#"
server:
  port: 8080
spring.cloud.gateway.routes:
  - id: a
    uri: http://a
---
spring:
  config:
    activate:
      on-profile: dev
server:
  port: 9090
---
spring:
  profiles: prod
server:
  port: 7070
"#;
        let v = parse_documents(text, &[]).unwrap();
        assert_eq!(lookup(&v, "server.port"), Some(&Value::from(8080)));
        let v = parse_documents(text, &["dev".to_owned()]).unwrap();
        assert_eq!(lookup(&v, "server.port"), Some(&Value::from(9090)));
        assert_eq!(
            lookup(&v, "spring.cloud.gateway.routes").unwrap()[0]["id"],
            "a"
        );
        let v = parse_documents(text, &["prod".to_owned()]).unwrap();
        assert_eq!(lookup(&v, "server.port"), Some(&Value::from(7070)));
    }

    #[test]
    fn active_profiles_from_the_file() {
        let text = "spring:\n  profiles:\n    active: dev\n---\nspring.config.activate.on-profile: dev\nx: 1\n";
        let v = parse_documents(text, &[]).unwrap();
        assert_eq!(lookup(&v, "x"), Some(&Value::from(1)));
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let e = parse_documents("a: [1, 2\nb: c", &[]).unwrap_err();
        assert!(e.contains("line"), "{e}");
    }
}
