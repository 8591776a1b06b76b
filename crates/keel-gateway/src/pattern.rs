//! Spring `PathPattern` syntax, precompiled: `/orders/{id}`, `/static/*.css`, `/api/**`,
//! `/files/{*path}`, `/items/{id:\d+}`, `/t?st`.
//!
//! A pattern is split into segments on its separator (`/` for paths, `.` for host names).
//! Matching walks the request's segments against the pattern's with the classic
//! two-pointer wildcard algorithm, where `**` is the wildcard: linear in the common case and
//! never worse than segments × pattern segments, with no recursion — any input is safe.
//!
//! | Element | Matches |
//! |---|---|
//! | `literal` | exactly that segment |
//! | `?` | one character within a segment |
//! | `*` | zero or more characters within a segment (a whole-segment `*` needs at least one) |
//! | `**` | zero or more whole segments |
//! | `{name}` | one non-empty segment, captured as `name` |
//! | `{name:regex}` | one segment matching `regex`, captured |
//! | `{*name}` | the rest of the path, zero or more segments, captured with its leading `/` (last element only) |
//!
//! Matching is done on the path as received (percent-encoded); `%2F` is not a separator.

use std::fmt;

use regex::{Regex, RegexBuilder};

/// Largest compiled regex of one segment, in bytes (bounds memory for hostile patterns).
const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// Longest pattern accepted.
const MAX_PATTERN_LEN: usize = 4096;

/// A pattern that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

#[derive(Clone)]
enum Seg {
    /// Exactly this text.
    Literal(Box<str>),
    /// A whole-segment `{name}`: any non-empty segment.
    Var(usize),
    /// A whole-segment `*`: any non-empty segment.
    Star,
    /// `**`: zero or more segments.
    Many,
    /// `{*name}`: the rest, captured (always last).
    Rest(usize),
    /// Anything else within one segment, as an anchored regex; groups `v0`, `v1`… map to
    /// variable indices.
    Glob(Regex, Vec<usize>),
}

impl fmt::Debug for Seg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seg::Literal(s) => write!(f, "Literal({s:?})"),
            Seg::Var(i) => write!(f, "Var({i})"),
            Seg::Star => f.write_str("Star"),
            Seg::Many => f.write_str("Many"),
            Seg::Rest(i) => write!(f, "Rest({i})"),
            Seg::Glob(r, v) => write!(f, "Glob({:?}, {v:?})", r.as_str()),
        }
    }
}

/// A compiled pattern.
#[derive(Clone)]
pub struct Pattern {
    source: Box<str>,
    sep: u8,
    segs: Vec<Seg>,
    names: Vec<Box<str>>,
    match_trailing_sep: bool,
    /// The leading literal segments joined by the separator: every match starts with it, so
    /// most non-matching inputs are turned away by one comparison.
    prefix: Box<str>,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pattern")
            .field("source", &self.source)
            .field("segs", &self.segs)
            .finish()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Variables captured by a match, in the order they appear in the pattern.
pub type Captures = Vec<(Box<str>, String)>;

impl Pattern {
    /// A path pattern (`/`-separated). A missing leading `/` is added, as Spring does.
    /// `match_trailing_slash`: `/a` also matches `/a/` (Spring's default, true).
    pub fn path(pattern: &str, match_trailing_slash: bool) -> Result<Self, PatternError> {
        let body = pattern.strip_prefix('/').unwrap_or(pattern);
        Self::parse(pattern, body, b'/', match_trailing_slash)
    }

    /// A host pattern (`.`-separated), e.g. `**.example.org`, `{sub}.example.org`.
    pub fn host(pattern: &str) -> Result<Self, PatternError> {
        Self::parse(pattern, pattern, b'.', false)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The names of the variables the pattern captures.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// The literal prefix of the pattern (the segments before the first non-literal one),
    /// e.g. `/api/orders` for `/api/orders/{id}/**`. Used to index routes.
    pub fn literal_prefix(&self) -> String {
        let mut out = String::new();
        for seg in &self.segs {
            match seg {
                Seg::Literal(s) => {
                    out.push(self.sep as char);
                    out.push_str(s);
                }
                _ => break,
            }
        }
        out
    }

    /// The first segment when it is literal (`api` for `/api/**`): every input the pattern
    /// matches has it as its first segment.
    pub fn first_literal(&self) -> Option<&str> {
        match self.segs.first() {
            Some(Seg::Literal(l)) => Some(l),
            _ => None,
        }
    }

    fn parse(source: &str, body: &str, sep: u8, trailing: bool) -> Result<Self, PatternError> {
        let err = |reason: &str| PatternError {
            pattern: source.to_owned(),
            reason: reason.to_owned(),
        };
        if source.len() > MAX_PATTERN_LEN {
            return Err(err("is too long"));
        }
        if source.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("contains whitespace or control characters"));
        }
        let mut names: Vec<Box<str>> = Vec::new();
        let mut segs = Vec::new();
        let raw = split_outside_braces(body, sep).map_err(|r| err(&r))?;
        let count = raw.len();
        for (n, text) in raw.into_iter().enumerate() {
            let seg = parse_segment(text, sep, &mut names).map_err(|r| err(&r))?;
            if matches!(seg, Seg::Rest(_)) && n + 1 != count {
                return Err(err("`{*name}` must be the last element"));
            }
            segs.push(seg);
        }
        let mut prefix = String::new();
        for (n, seg) in segs.iter().enumerate() {
            let Seg::Literal(l) = seg else { break };
            if n > 0 {
                prefix.push(sep as char);
            }
            prefix.push_str(l);
        }
        Ok(Self {
            source: source.into(),
            sep,
            segs,
            names,
            match_trailing_sep: trailing,
            prefix: prefix.into(),
        })
    }

    /// Whether `input` matches.
    pub fn is_match(&self, input: &str) -> bool {
        self.run(input, false).is_some()
    }

    /// Matches `input`, returning the captured variables.
    pub fn captures(&self, input: &str) -> Option<Captures> {
        self.run(input, true)
    }

    fn run(&self, input: &str, capture: bool) -> Option<Captures> {
        let body = if self.sep == b'/' {
            input.strip_prefix('/')?
        } else {
            input
        };
        if let Some(c) = self.run_body(body, capture) {
            return Some(c);
        }
        if self.match_trailing_sep
            && !body.is_empty()
            && let Some(trimmed) = body.strip_suffix(self.sep as char)
        {
            return self.run_body(trimmed, capture);
        }
        None
    }

    fn run_body(&self, body: &str, capture: bool) -> Option<Captures> {
        if !body.starts_with(&*self.prefix) {
            return None;
        }
        // Segment boundaries in `body` (start, end), inline for short inputs.
        let mut bounds = smallvec::SmallVec::new();
        let mut start = 0;
        for (i, b) in body.bytes().enumerate() {
            if b == self.sep {
                bounds.push((start, i));
                start = i + 1;
            }
        }
        bounds.push((start, body.len()));
        let text = |j: usize| {
            let (a, b) = bounds.get(j);
            &body[a..b]
        };
        let n = bounds.len();
        let m = self.segs.len();

        // For captures: the text segment each pattern segment matched, and where each `**`
        // began. In the two-pointer algorithm, backtracking to a `**` only revisits pattern
        // segments after it, so the last assignment of every segment is the final alignment.
        let mut assign: Vec<usize> = if capture { vec![0; m] } else { Vec::new() };
        let (mut i, mut j) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None; // (pattern index of `**`, last absorbed text index)
        while j < n {
            if i < m && matches!(self.segs[i], Seg::Many | Seg::Rest(_)) {
                if capture {
                    assign[i] = j;
                }
                star = Some((i, j));
                i += 1;
                continue;
            }
            if i < m && seg_matches(&self.segs[i], text(j)) {
                if capture {
                    assign[i] = j;
                }
                i += 1;
                j += 1;
                continue;
            }
            let (s, mark) = star?;
            i = s + 1;
            star = Some((s, mark + 1));
            j = mark + 1;
        }
        while i < m && matches!(self.segs[i], Seg::Many | Seg::Rest(_)) {
            if capture {
                assign[i] = n;
            }
            i += 1;
        }
        if i != m {
            return None;
        }
        if !capture || self.names.is_empty() {
            return Some(Vec::new());
        }
        let mut values: Vec<String> = vec![String::new(); self.names.len()];
        for (pi, seg) in self.segs.iter().enumerate() {
            match seg {
                Seg::Var(v) => values[*v] = text(assign[pi]).to_owned(),
                Seg::Glob(re, vars) if !vars.is_empty() => {
                    let caps = re.captures(text(assign[pi]))?;
                    for (k, v) in vars.iter().enumerate() {
                        if let Some(found) = caps.name(&format!("v{k}")) {
                            values[*v] = found.as_str().to_owned();
                        }
                    }
                }
                Seg::Rest(v) if assign[pi] < n => {
                    let begin = bounds.get(assign[pi]).0;
                    values[*v] = format!("{}{}", self.sep as char, &body[begin..]);
                }
                _ => {}
            }
        }
        Some(self.names.iter().cloned().zip(values).collect())
    }
}

/// A tiny inline vector of segment bounds (most paths have fewer than 16 segments).
mod smallvec {
    #[derive(Debug)]
    pub(super) struct SmallVec {
        inline: [(usize, usize); 16],
        len: usize,
        spill: Vec<(usize, usize)>,
    }

    impl SmallVec {
        pub(super) fn new() -> Self {
            Self {
                inline: [(0, 0); 16],
                len: 0,
                spill: Vec::new(),
            }
        }

        pub(super) fn push(&mut self, v: (usize, usize)) {
            if self.len < 16 {
                self.inline[self.len] = v;
            } else {
                self.spill.push(v);
            }
            self.len += 1;
        }

        pub(super) fn len(&self) -> usize {
            self.len
        }

        pub(super) fn get(&self, i: usize) -> (usize, usize) {
            if i < 16 {
                self.inline[i]
            } else {
                self.spill[i - 16]
            }
        }
    }
}

fn seg_matches(seg: &Seg, text: &str) -> bool {
    match seg {
        Seg::Literal(l) => **l == *text,
        Seg::Var(_) | Seg::Star => !text.is_empty(),
        Seg::Glob(re, _) => re.is_match(text),
        Seg::Many | Seg::Rest(_) => true,
    }
}

/// Splits on `sep`, except inside `{…}` (a regex may contain the separator).
fn split_outside_braces(body: &str, sep: u8) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if depth > 0 => i += 1, // an escaped character inside a regex
            b'{' => depth += 1,
            b'}' => {
                if depth == 0 {
                    return Err("has a `}` without a matching `{`".to_owned());
                }
                depth -= 1;
            }
            b if b == sep && depth == 0 => {
                out.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 {
        return Err("has an unclosed `{`".to_owned());
    }
    out.push(&body[start..]);
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn add_name(names: &mut Vec<Box<str>>, name: &str) -> Result<usize, String> {
    if !valid_name(name) {
        return Err(format!("`{{{name}}}` is not a valid variable name"));
    }
    if names.iter().any(|n| &**n == name) {
        return Err(format!("variable `{name}` appears twice"));
    }
    names.push(name.into());
    Ok(names.len() - 1)
}

fn parse_segment(text: &str, sep: u8, names: &mut Vec<Box<str>>) -> Result<Seg, String> {
    if text == "**" {
        return Ok(Seg::Many);
    }
    if text == "*" {
        return Ok(Seg::Star);
    }
    if let Some(inner) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}'))
        && !inner.contains('{')
        && !inner.contains('}')
    {
        if let Some(name) = inner.strip_prefix('*') {
            return Ok(Seg::Rest(add_name(names, name)?));
        }
        if !inner.contains(':') {
            return Ok(Seg::Var(add_name(names, inner)?));
        }
    }
    if !text.contains(['{', '*', '?']) {
        return Ok(Seg::Literal(text.into()));
    }
    // A mixed segment: build an anchored regex.
    let mut re = String::from("^");
    let mut vars = Vec::new();
    let mut chars = text.char_indices().peekable();
    let not_sep = if sep == b'/' { "[^/]" } else { "[^.]" };
    while let Some((i, c)) = chars.next() {
        match c {
            '*' => {
                while chars.peek().is_some_and(|(_, c)| *c == '*') {
                    chars.next();
                }
                re.push_str(not_sep);
                re.push('*');
            }
            '?' => re.push_str(not_sep),
            '{' => {
                let close = find_close(&text[i..]).ok_or("has an unclosed `{`")?;
                let inner = &text[i + 1..i + close];
                // Skip past the closing brace.
                while chars.peek().is_some_and(|(k, _)| *k <= i + close) {
                    chars.next();
                }
                let (name, regex) = match inner.split_once(':') {
                    Some((n, r)) => (n, Some(r)),
                    None => (inner, None),
                };
                if name.starts_with('*') {
                    return Err("`{*name}` must be a whole segment".to_owned());
                }
                let v = add_name(names, name)?;
                re.push_str(&format!("(?<v{}>", vars.len()));
                match regex {
                    Some("") => {
                        return Err(format!("`{{{inner}}}` has an empty regex"));
                    }
                    Some(r) => {
                        // Validate the user's regex on its own first, for a clear message.
                        Regex::new(r).map_err(|e| {
                            format!(
                                "`{{{inner}}}`: invalid regex: {}",
                                first_line(&e.to_string())
                            )
                        })?;
                        re.push_str(&format!("(?:{r})"));
                    }
                    None => {
                        re.push_str(not_sep);
                        re.push('+');
                    }
                }
                re.push(')');
                vars.push(v);
            }
            c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    re.push('$');
    let regex = RegexBuilder::new(&re)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            format!(
                "cannot compile segment {text:?}: {}",
                first_line(&e.to_string())
            )
        })?;
    Ok(Seg::Glob(regex, vars))
}

/// Index of the `}` closing the `{` at the start of `s`, counting nesting and escapes.
fn find_close(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The literal-prefix shortcut never changes an answer.
        #[test]
        fn the_prefix_shortcut_changes_no_answer(
            pattern in "(/(api|v1|a|\\{id\\}|\\*|\\*\\*|[a-b]{1,2})){0,4}/?",
            input in "(/(api|v1|a|b|ab|x)){0,5}/?",
        ) {
            if let Ok(p) = Pattern::path(&pattern, true) {
                let mut full = p.clone();
                full.prefix = "".into();
                proptest::prop_assert_eq!(p.captures(&input), full.captures(&input));
            }
        }
    }

    #[test]
    fn the_prefix_is_the_leading_literal_segments() {
        assert_eq!(
            &*Pattern::path("/api/v1/{id}/**", true).unwrap().prefix,
            "api/v1"
        );
        assert_eq!(&*Pattern::path("/**", true).unwrap().prefix, "");
        assert_eq!(&*Pattern::host("{sub}.example.org").unwrap().prefix, "");
        assert_eq!(
            &*Pattern::host("www.example.org").unwrap().prefix,
            "www.example.org"
        );
    }

    fn m(p: &str, path: &str) -> bool {
        Pattern::path(p, true).unwrap().is_match(path)
    }

    fn caps(p: &str, path: &str) -> Vec<(String, String)> {
        Pattern::path(p, true)
            .unwrap()
            .captures(path)
            .unwrap_or_else(|| panic!("{p} should match {path}"))
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    #[test]
    fn literals_and_trailing_slash() {
        assert!(m("/orders", "/orders"));
        assert!(m("/orders", "/orders/"));
        assert!(
            !Pattern::path("/orders", false)
                .unwrap()
                .is_match("/orders/")
        );
        assert!(!m("/orders", "/orders/1"));
        assert!(!m("/orders", "/order"));
        assert!(m("/", "/"));
        assert!(!m("/", "/a"));
        assert!(m("orders", "/orders"), "a leading slash is added");
    }

    #[test]
    fn double_star_matches_zero_or_more_segments() {
        for p in ["/orders", "/orders/", "/orders/1", "/orders/1/items/2"] {
            assert!(m("/orders/**", p), "{p}");
        }
        assert!(!m("/orders/**", "/ordersx"));
        assert!(!m("/orders/**", "/other/orders"));
        assert!(m("/**", "/"));
        assert!(m("/**", "/anything/at/all"));
        assert!(m("/a/**/z", "/a/z"));
        assert!(m("/a/**/z", "/a/b/c/z"));
        assert!(!m("/a/**/z", "/a/b/c/y"));
        assert!(m("/a/**/b/**/c", "/a/x/b/y/z/c"));
        assert!(m("/**/*.css", "/static/x/site.css"));
    }

    #[test]
    fn single_star_and_question_mark() {
        assert!(m("/a/*", "/a/b"));
        assert!(!m("/a/*", "/a/b/c"));
        assert!(!m("/a/*/c", "/a//c"), "a whole-segment * needs a character");
        assert!(m("/static/*.css", "/static/site.css"));
        assert!(!m("/static/*.css", "/static/site.js"));
        assert!(m("/t?st", "/test"));
        assert!(!m("/t?st", "/tst"));
    }

    #[test]
    fn variables_are_captured() {
        assert_eq!(
            caps("/orders/{id}/items/{item}", "/orders/42/items/7"),
            vec![("id".into(), "42".into()), ("item".into(), "7".into())]
        );
        assert!(!m("/orders/{id}", "/orders/"));
        assert_eq!(
            caps("/items/{id:\\d+}", "/items/123"),
            vec![("id".into(), "123".into())]
        );
        assert!(!m("/items/{id:\\d+}", "/items/abc"));
        assert_eq!(
            caps("/files/{name}.{ext}", "/files/report.pdf"),
            vec![
                ("name".into(), "report".into()),
                ("ext".into(), "pdf".into())
            ]
        );
    }

    #[test]
    fn capture_the_rest() {
        assert_eq!(
            caps("/files/{*path}", "/files/a/b/c"),
            vec![("path".into(), "/a/b/c".into())]
        );
        assert_eq!(
            caps("/files/{*path}", "/files"),
            vec![("path".into(), "".into())]
        );
        assert!(Pattern::path("/{*rest}/x", true).is_err());
    }

    #[test]
    fn variables_after_double_star() {
        assert_eq!(
            caps("/**/{last}", "/a/b/c"),
            vec![("last".into(), "c".into())]
        );
        assert_eq!(
            caps("/{first}/**/{name}.json", "/x/y/z/doc.json"),
            vec![("first".into(), "x".into()), ("name".into(), "doc".into())]
        );
    }

    #[test]
    fn regex_with_slash_or_braces_stays_in_one_element() {
        let p = Pattern::path("/v/{id:[a-z]{2}}", true).unwrap();
        assert!(p.is_match("/v/ab"));
        assert!(!p.is_match("/v/abc"));
    }

    #[test]
    fn bad_patterns_are_reported() {
        for bad in [
            "/a/{",
            "/a/}",
            "/a/{id}/{id}",
            "/a/{1x}",
            "/a/{id:(}",
            "/a/{id:}",
            "/a b",
            "/x{*r}",
        ] {
            let e = Pattern::path(bad, true).unwrap_err();
            assert_eq!(e.pattern, bad);
        }
    }

    #[test]
    fn host_patterns() {
        let p = Pattern::host("**.example.org").unwrap();
        assert!(p.is_match("api.example.org"));
        assert!(p.is_match("a.b.example.org"));
        assert!(p.is_match("example.org"));
        assert!(!p.is_match("example.com"));
        let p = Pattern::host("{sub}.example.org").unwrap();
        assert_eq!(
            p.captures("api.example.org").unwrap()[0].1,
            "api".to_owned()
        );
        assert!(!p.is_match("a.b.example.org"));
    }

    #[test]
    fn literal_prefix() {
        assert_eq!(
            Pattern::path("/api/orders/{id}/**", true)
                .unwrap()
                .literal_prefix(),
            "/api/orders"
        );
        assert_eq!(Pattern::path("/**", true).unwrap().literal_prefix(), "");
    }

    #[test]
    fn many_segments_spill() {
        let path: String = (0..40).map(|i| format!("/s{i}")).collect();
        assert!(m("/s0/**/s39", &path));
        assert_eq!(caps("/**/{last}", &path)[0].1, "s39");
    }
}
