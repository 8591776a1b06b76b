//! Predicate and filter definitions in both of Spring's forms, normalized to a name and
//! arguments:
//!
//! ```yaml
//! - Path=/orders/**,/o/**          # shortcut: name=comma-separated arguments
//! - name: Path                     # expanded: name and args
//!   args:
//!     patterns: [/orders/**, /o/**]
//! - name: Path                     # Spring's generated keys are positional arguments
//!   args: { _genkey_0: /orders/** }
//! ```

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Map, Value};

use super::tree::{lookup, relax, scalar_string, string_list};

/// One predicate or filter as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Its name, as written (`Path`, `StripPrefix`).
    pub name: String,
    /// Its arguments.
    pub args: Args,
    /// The definition as written (for the actuator).
    pub source: Value,
}

/// Positional (shortcut form, `_genkey_N`) and named (expanded form) arguments.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Args {
    positional: Vec<Value>,
    named: Value,
}

impl Spec {
    /// Parses either form.
    pub(crate) fn parse(v: &Value) -> Result<Self, String> {
        match v {
            Value::String(s) => Self::shortcut(s),
            Value::Object(m) => Self::expanded(m, v),
            other => Err(format!(
                "expected `Name=args` or a map with `name` and `args`, got {other}"
            )),
        }
    }

    fn shortcut(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (name, rest) = match s.split_once('=') {
            Some((n, r)) => (n.trim(), Some(r)),
            None => (s, None),
        };
        check_name(name)?;
        let positional = rest
            .map(|r| {
                r.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| Value::String(t.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            name: name.to_owned(),
            args: Args {
                positional,
                named: Value::Object(Map::new()),
            },
            source: Value::String(s.to_owned()),
        })
    }

    fn expanded(m: &Map<String, Value>, source: &Value) -> Result<Self, String> {
        let mut name = None;
        let mut args = Value::Null;
        for (k, v) in m {
            match relax(k).as_str() {
                "name" => name = scalar_string(v),
                "args" => args = v.clone(),
                other => {
                    return Err(format!(
                        "unknown key `{other}` (a definition has `name` and `args`)"
                    ));
                }
            }
        }
        let name = name.ok_or("missing `name`")?;
        check_name(&name)?;
        let mut positional: Vec<(usize, Value)> = Vec::new();
        let mut named = Map::new();
        match args {
            Value::Null => {}
            Value::Object(map) => {
                for (k, v) in map {
                    if let Some(n) = k.strip_prefix("_genkey_").and_then(|n| n.parse().ok()) {
                        positional.push((n, v));
                    } else {
                        named.insert(k, v);
                    }
                }
            }
            Value::Array(items) => positional.extend(items.into_iter().enumerate()),
            scalar => positional.push((0, scalar)),
        }
        positional.sort_by_key(|(n, _)| *n);
        Ok(Self {
            name,
            args: Args {
                positional: positional.into_iter().map(|(_, v)| v).collect(),
                named: Value::Object(named),
            },
            source: source.clone(),
        })
    }

    /// The name in relaxed form (`strip_prefix`), for matching.
    pub(crate) fn key(&self) -> String {
        relax(&self.name)
    }

    /// The definition in shortcut form, for display.
    pub fn display(&self) -> String {
        match &self.source {
            Value::String(s) => s.clone(),
            other => format!(
                "{}={}",
                self.name,
                other.get("args").unwrap_or(&Value::Null)
            ),
        }
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!("{name:?} is not a valid name"));
    }
    Ok(())
}

impl Args {
    /// The argument called `name` (relaxed; dotted paths reach into maps), else the
    /// positional argument `idx`.
    pub(crate) fn get(&self, idx: usize, name: &str) -> Option<&Value> {
        lookup(&self.named, name)
            .filter(|v| !v.is_null())
            .or_else(|| self.positional.get(idx))
    }

    /// Like [`Args::get`], as a string.
    pub(crate) fn string(&self, idx: usize, name: &str) -> Result<Option<String>, String> {
        match self.get(idx, name) {
            None => Ok(None),
            Some(v) => scalar_string(v)
                .map(Some)
                .ok_or_else(|| format!("`{name}` must be a single value, got {v}")),
        }
    }

    /// A required string argument.
    pub(crate) fn required(&self, idx: usize, name: &str) -> Result<String, String> {
        self.string(idx, name)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("missing argument `{name}`"))
    }

    /// A list argument: the named value (a list or comma-separated string), else every
    /// positional argument from `from` on.
    pub(crate) fn list(&self, from: usize, name: &str) -> Vec<String> {
        match lookup(&self.named, name) {
            Some(v) if !v.is_null() => string_list(v),
            _ => self
                .positional
                .iter()
                .skip(from)
                .filter_map(scalar_string)
                .collect(),
        }
    }
}

/// A duration: a number (milliseconds), `250ms`, `5s`, `1m30s`, `2h`, `1d`, or ISO-8601
/// (`PT5S`, `PT0.5S`).
pub(crate) fn duration(v: &Value) -> Result<Duration, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .map(Duration::from_millis)
            .ok_or_else(|| format!("{n} is not a whole number of milliseconds")),
        Value::String(s) => parse_duration(s),
        other => Err(format!("{other} is not a duration")),
    }
}

/// Parses a duration from text (see [`duration`]): Keel's one parser,
/// [`keel_chassis::duration::parse`].
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    keel_chassis::duration::parse(s)
}

/// A size in bytes: a number, or Spring's `DataSize` (`512B`, `8KB`, `5MB`, `1GB`).
pub(crate) fn size(v: &Value) -> Result<u64, String> {
    let text = match v {
        Value::Number(n) => return n.as_u64().ok_or_else(|| format!("{n} is not a size")),
        Value::String(s) => s.trim(),
        other => return Err(format!("{other} is not a size")),
    };
    let upper = text.to_ascii_uppercase();
    let (digits, mult) = [
        ("TB", 1u64 << 40),
        ("GB", 1 << 30),
        ("MB", 1 << 20),
        ("KB", 1 << 10),
        ("B", 1),
    ]
    .iter()
    .find_map(|(suffix, mult)| upper.strip_suffix(suffix).map(|d| (d.trim(), *mult)))
    .unwrap_or((upper.as_str(), 1));
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{text:?} is not a size (use e.g. 5000000, 512KB, 5MB)"))
}

/// A boolean (`true`/`false`, also as strings).
pub(crate) fn boolean(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(format!("{other} is not true or false")),
    }
}

/// A non-negative integer (also as a string).
pub(crate) fn integer(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{n} is not a whole number")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a whole number")),
        other => Err(format!("{other} is not a whole number")),
    }
}

/// A status code: `404`, or Spring's `HttpStatus` name (`NOT_FOUND`, `BAD_GATEWAY`).
pub(crate) fn status(s: &str) -> Result<StatusCode, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u16>() {
        return StatusCode::from_u16(n)
            .ok()
            .filter(|c| (100..=599).contains(&c.as_u16()))
            .ok_or_else(|| format!("{n} is not an HTTP status code"));
    }
    let want = s.to_ascii_uppercase();
    let alias = match want.as_str() {
        "I_AM_A_TEAPOT" => Some(418),
        "CONTENT_TOO_LARGE" | "REQUEST_ENTITY_TOO_LARGE" => Some(413),
        "REQUEST_URI_TOO_LONG" => Some(414),
        "UNPROCESSABLE_CONTENT" => Some(422),
        "MOVED_TEMPORARILY" => Some(302),
        _ => None,
    };
    if let Some(code) = alias {
        return StatusCode::from_u16(code).map_err(|e| e.to_string());
    }
    (100u16..=599)
        .filter_map(|c| StatusCode::from_u16(c).ok())
        .find(|c| {
            c.canonical_reason().is_some_and(|r| {
                r.to_ascii_uppercase()
                    .replace([' ', '-'], "_")
                    .replace('\'', "")
                    == want
            })
        })
        .ok_or_else(|| format!("{s:?} is not an HTTP status code or name"))
}

/// Status patterns: codes, names, Spring series names (`SERVER_ERROR`) or `5xx`.
pub(crate) fn status_set(items: &[String]) -> Result<keel_resilience::classify::StatusSet, String> {
    use keel_resilience::classify::StatusSet;
    let mut set = StatusSet::EMPTY;
    for item in items {
        let series = match item.trim().to_ascii_uppercase().as_str() {
            "INFORMATIONAL" => Some(100),
            "SUCCESSFUL" => Some(200),
            "REDIRECTION" => Some(300),
            "CLIENT_ERROR" => Some(400),
            "SERVER_ERROR" => Some(500),
            _ => None,
        };
        let add = if let Some(base) = series {
            StatusSet::range(base, base + 99)
        } else if let Ok(code) = status(item) {
            StatusSet::from_codes([code.as_u16()])
        } else {
            StatusSet::parse_pattern(item)?
        };
        for code in 100..=999u16 {
            if add.contains(code) {
                set.insert(code);
            }
        }
    }
    Ok(set)
}

/// An HTTP method.
pub(crate) fn method(s: &str) -> Result<Method, String> {
    Method::from_bytes(s.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{s:?} is not an HTTP method"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shortcut_form() {
        let s = Spec::parse(&json!("Path=/a/**, /b/{id} ,")).unwrap();
        assert_eq!(s.name, "Path");
        assert_eq!(s.args.list(0, "patterns"), vec!["/a/**", "/b/{id}"]);
        let s = Spec::parse(&json!("PreserveHostHeader")).unwrap();
        assert!(s.args.get(0, "x").is_none());
    }

    #[test]
    fn expanded_form() {
        let s = Spec::parse(&json!({"name": "Cookie", "args": {"name": "c", "regexp": "v.*"}}))
            .unwrap();
        assert_eq!(s.args.required(0, "name").unwrap(), "c");
        assert_eq!(s.args.required(1, "regexp").unwrap(), "v.*");
        let s =
            Spec::parse(&json!({"name": "Path", "args": {"_genkey_1": "/b", "_genkey_0": "/a"}}))
                .unwrap();
        assert_eq!(s.args.list(0, "patterns"), vec!["/a", "/b"]);
        let s =
            Spec::parse(&json!({"name": "Retry", "args": {"backoff": {"firstBackoff": "10ms"}}}))
                .unwrap();
        assert_eq!(s.args.required(3, "backoff.first_backoff").unwrap(), "10ms");
        let s = Spec::parse(
            &json!({"name": "RequestRateLimiter", "args": {"redis-rate-limiter.replenishRate": 5}}),
        )
        .unwrap();
        assert_eq!(
            s.args.get(9, "redis_rate_limiter.replenish_rate"),
            Some(&json!(5))
        );
        assert!(Spec::parse(&json!({"name": "X", "argz": {}})).is_err());
        assert!(Spec::parse(&json!({"args": {}})).is_err());
        assert!(Spec::parse(&json!(3)).is_err());
        assert!(Spec::parse(&json!("Bad Name=1")).is_err());
    }

    #[test]
    fn units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1000").unwrap(), Duration::from_secs(1));
        assert_eq!(
            parse_duration("PT1.5S").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("soon").is_err());
        assert_eq!(size(&json!("5MB")).unwrap(), 5 * 1024 * 1024);
        assert_eq!(size(&json!("1000B")).unwrap(), 1000);
        assert_eq!(size(&json!(42)).unwrap(), 42);
        assert!(size(&json!("lots")).is_err());
        assert_eq!(status("BAD_GATEWAY").unwrap(), 502);
        assert_eq!(status("INTERNAL_SERVER_ERROR").unwrap(), 500);
        assert_eq!(status("401").unwrap(), 401);
        assert!(status("NOPE").is_err());
        let set = status_set(&["SERVER_ERROR".into(), "NOT_FOUND".into()]).unwrap();
        assert!(set.contains(503) && set.contains(404) && !set.contains(400));
    }
}
