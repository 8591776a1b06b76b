//! URI template variables in filter arguments: `SetPath=/{segment}`,
//! `AddRequestHeader=X-Id, {id}` — filled from what `Path` and `Host` captured.
//! A variable that was not captured stays as written.

use crate::pattern::Captures;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(Box<str>),
    Var(Box<str>),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part>,
    source: Box<str>,
}

impl Template {
    pub(crate) fn parse(s: &str) -> Self {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            let name = &rest[open + 1..open + close];
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                parts.push(Part::Text(rest[..open + 1].into()));
                rest = &rest[open + 1..];
                continue;
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].into()));
            }
            parts.push(Part::Var(name.into()));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.into()));
        }
        Self {
            parts,
            source: s.into(),
        }
    }

    /// Whether the template has variables.
    pub(crate) fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    pub(crate) fn expand(&self, vars: &Captures) -> String {
        if self.is_static() {
            return self.source.to_string();
        }
        let mut out = String::with_capacity(self.source.len() + 16);
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Var(name) => match vars.iter().find(|(k, _)| **k == **name) {
                    Some((_, v)) => out.push_str(v),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                },
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands() {
        let vars: Captures = vec![("segment".into(), "abc".into())];
        assert_eq!(Template::parse("/{segment}").expand(&vars), "/abc");
        assert_eq!(Template::parse("/x/{segment}/y").expand(&vars), "/x/abc/y");
        assert_eq!(Template::parse("/{other}").expand(&vars), "/{other}");
        assert_eq!(
            Template::parse("{ not a var }").expand(&vars),
            "{ not a var }"
        );
        assert_eq!(Template::parse("a{").expand(&vars), "a{");
        assert!(Template::parse("plain").is_static());
    }
}
