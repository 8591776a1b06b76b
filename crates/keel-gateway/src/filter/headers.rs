//! Header filters that need more than a line: SecureHeaders and DedupeResponseHeader.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Args;

/// Spring's SecureHeaders defaults, added to responses that lack them.
const SECURE_DEFAULTS: &[(&str, &str)] = &[
    ("x-xss-protection", "1 ; mode=block"),
    ("strict-transport-security", "max-age=631138519"),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'self' https:; font-src 'self' https: data:; img-src 'self' https: data:; object-src 'none'; script-src https:; style-src 'self' https: 'unsafe-inline'",
    ),
    ("x-download-options", "noopen"),
    ("x-permitted-cross-domain-policies", "none"),
];

/// The headers SecureHeaders adds: the defaults, minus `disable`d ones, with values
/// overridden by arguments named after the header (`x-frame-options: SAMEORIGIN`).
pub(crate) fn secure_headers(args: &Args) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let disabled: Vec<String> = args
        .list(usize::MAX, "disable")
        .into_iter()
        .map(|d| d.to_ascii_lowercase().replace('_', "-"))
        .collect();
    let mut out = Vec::new();
    for (name, default) in SECURE_DEFAULTS {
        if disabled.iter().any(|d| d == name) {
            continue;
        }
        let relaxed = name.replace('-', "_");
        let value = args
            .string(usize::MAX, &relaxed)?
            .unwrap_or_else(|| (*default).to_owned());
        let value = HeaderValue::from_str(&value)
            .map_err(|_| format!("invalid value for {name}: {value:?}"))?;
        out.push((HeaderName::from_static(name), value));
    }
    for d in &disabled {
        if !SECURE_DEFAULTS.iter().any(|(n, _)| n == d) {
            return Err(format!("`disable`: {d:?} is not one of the secure headers"));
        }
    }
    Ok(out)
}

/// How DedupeResponseHeader keeps values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dedupe {
    First,
    Last,
    Unique,
}

impl Dedupe {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "RETAIN_FIRST" => Ok(Dedupe::First),
            "RETAIN_LAST" => Ok(Dedupe::Last),
            "RETAIN_UNIQUE" => Ok(Dedupe::Unique),
            other => Err(format!(
                "strategy {other:?} is not RETAIN_FIRST, RETAIN_LAST or RETAIN_UNIQUE"
            )),
        }
    }

    pub(crate) fn apply(self, headers: &mut HeaderMap, name: &HeaderName) {
        let values: Vec<HeaderValue> = headers.get_all(name).iter().cloned().collect();
        if values.len() < 2 {
            return;
        }
        headers.remove(name);
        let keep: Vec<HeaderValue> = match self {
            Dedupe::First => values.into_iter().take(1).collect(),
            Dedupe::Last => values.into_iter().last().into_iter().collect(),
            Dedupe::Unique => {
                let mut seen: Vec<HeaderValue> = Vec::new();
                for v in values {
                    if !seen.contains(&v) {
                        seen.push(v);
                    }
                }
                seen
            }
        };
        for v in keep {
            headers.append(name.clone(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_strategies() {
        let name = HeaderName::from_static("access-control-allow-origin");
        let make = || {
            let mut h = HeaderMap::new();
            for v in ["a", "b", "a"] {
                h.append(name.clone(), HeaderValue::from_static(v));
            }
            h
        };
        let all = |h: &HeaderMap| -> Vec<String> {
            h.get_all(&name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        };
        let mut h = make();
        Dedupe::First.apply(&mut h, &name);
        assert_eq!(all(&h), ["a"]);
        let mut h = make();
        Dedupe::Last.apply(&mut h, &name);
        assert_eq!(all(&h), ["a"]);
        let mut h = make();
        Dedupe::Unique.apply(&mut h, &name);
        assert_eq!(all(&h), ["a", "b"]);
    }
}
