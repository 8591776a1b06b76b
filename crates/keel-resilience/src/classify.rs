//! Deciding what a call's result means: success, failure, or neither.
//!
//! The circuit breaker counts [`Outcome::Failure`] against the endpoint, and retry repeats calls
//! classified as [`Outcome::Failure`]. [`Outcome::Ignored`] results are neither counted by the
//! breaker nor retried (Resilience4j's `ignoreExceptions`).
//!
//! A classifier is anything implementing [`Classify`], including a closure
//! `Fn(&Result<T, E>) -> Outcome`:
//!
//! ```
//! use keel_resilience::{Classify, Outcome};
//!
//! #[derive(Debug)]
//! enum DbError { NotFound, Unavailable }
//!
//! let classifier = |result: &Result<u32, DbError>| match result {
//!     Ok(_) => Outcome::Success,
//!     Err(DbError::NotFound) => Outcome::Ignored, // the caller's problem, not the database's
//!     Err(DbError::Unavailable) => Outcome::Failure,
//! };
//! assert_eq!(classifier.classify(&Err(DbError::NotFound)), Outcome::Ignored);
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a call's result means to a resilience policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The call worked.
    Success,
    /// The call failed in a way that says something about the callee: counts towards opening a
    /// breaker, and may be retried.
    Failure,
    /// Neither: not recorded by the breaker, not retried (e.g. a 404, a validation error).
    Ignored,
}

/// Classifies a call's result.
pub trait Classify<T, E> {
    /// The outcome of one call.
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// `Ok` is a success, every `Err` is a failure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultClassifier;

impl<T, E> Classify<T, E> for DefaultClassifier {
    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// Classifies `http::Response`s by status; every `Err` (connection refused, timeout, …) is a
/// failure.
///
/// [`HttpClassifier::default`] treats 5xx as failures, which suits a circuit breaker;
/// [`HttpClassifier::retryable`] treats only 502, 503 and 504 as failures, which suits retry
/// (a 500 usually fails again). Statuses can also be ignored (neither success nor failure).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HttpClassifier {
    failure: StatusSet,
    ignored: StatusSet,
}

impl Default for HttpClassifier {
    fn default() -> Self {
        Self {
            failure: StatusSet::range(500, 599),
            ignored: StatusSet::EMPTY,
        }
    }
}

impl HttpClassifier {
    /// 5xx are failures.
    pub fn server_errors() -> Self {
        Self::default()
    }

    /// 502, 503 and 504 are failures (what is worth retrying).
    pub fn retryable() -> Self {
        Self::with_failures(StatusSet::from_codes([502, 503, 504]))
    }

    /// Exactly the given statuses are failures.
    pub fn with_failures(failure: StatusSet) -> Self {
        Self {
            failure,
            ignored: StatusSet::EMPTY,
        }
    }

    /// Also ignore these statuses (a status in both sets is ignored).
    #[must_use]
    pub fn ignoring(mut self, ignored: StatusSet) -> Self {
        self.ignored = ignored;
        self
    }

    /// The outcome for one status.
    pub fn classify_status(&self, status: http::StatusCode) -> Outcome {
        let code = status.as_u16();
        if self.ignored.contains(code) {
            Outcome::Ignored
        } else if self.failure.contains(code) {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

impl fmt::Debug for HttpClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClassifier")
            .field("failure", &self.failure)
            .field("ignored", &self.ignored)
            .finish()
    }
}

impl<B, E> Classify<http::Response<B>, E> for HttpClassifier {
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        match result {
            Ok(response) => self.classify_status(response.status()),
            Err(_) => Outcome::Failure,
        }
    }
}

/// A set of HTTP status codes (100–999), cheap to copy and test.
///
/// In configuration it is a list of codes, ranges and classes:
/// `["5xx"]`, `["500-504", 429]`, `[502, 503, 504]`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusSet([u64; 16]);

impl StatusSet {
    /// No status.
    pub const EMPTY: StatusSet = StatusSet([0; 16]);

    /// Every code in `from..=to`.
    pub fn range(from: u16, to: u16) -> Self {
        let mut set = Self::EMPTY;
        for code in from..=to.min(1023) {
            set.insert(code);
        }
        set
    }

    /// Exactly these codes.
    pub fn from_codes(codes: impl IntoIterator<Item = u16>) -> Self {
        let mut set = Self::EMPTY;
        for code in codes {
            set.insert(code);
        }
        set
    }

    /// Add one code (codes above 1023 are ignored).
    pub fn insert(&mut self, code: u16) {
        if code < 1024 {
            self.0[usize::from(code / 64)] |= 1 << (code % 64);
        }
    }

    /// Whether `code` is in the set.
    #[inline]
    pub fn contains(&self, code: u16) -> bool {
        code < 1024 && self.0[usize::from(code / 64)] & (1 << (code % 64)) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    fn codes(&self) -> impl Iterator<Item = u16> + '_ {
        (0..1024).filter(|c| self.contains(*c))
    }

    /// Parse one pattern: `"503"`, `"5xx"`, `"500-504"`.
    pub fn parse_pattern(pattern: &str) -> Result<Self, String> {
        let pattern = pattern.trim();
        let code = |s: &str| -> Result<u16, String> {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=999).contains(c))
                .ok_or_else(|| format!("{s:?} is not an HTTP status code (100-999)"))
        };
        if let Some(class) = pattern
            .strip_suffix("xx")
            .or_else(|| pattern.strip_suffix("XX"))
        {
            let class = code(&format!("{class}00"))?;
            return Ok(Self::range(class, class + 99));
        }
        if let Some((from, to)) = pattern.split_once('-') {
            let (from, to) = (code(from)?, code(to)?);
            if from > to {
                return Err(format!("empty range {pattern:?}"));
            }
            return Ok(Self::range(from, to));
        }
        Ok(Self::from_codes([code(pattern)?]))
    }

    fn union(mut self, other: Self) -> Self {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
        self
    }
}

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.codes()).finish()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StatusPattern {
    Code(u16),
    Text(String),
}

impl<'de> Deserialize<'de> for StatusSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let patterns = Vec::<StatusPattern>::deserialize(deserializer)?;
        let mut set = StatusSet::EMPTY;
        for pattern in patterns {
            let one = match pattern {
                StatusPattern::Code(code) => StatusSet::parse_pattern(&code.to_string()),
                StatusPattern::Text(text) => StatusSet::parse_pattern(&text),
            }
            .map_err(serde::de::Error::custom)?;
            set = set.union(one);
        }
        Ok(set)
    }
}

impl Serialize for StatusSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.codes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16) -> Result<http::Response<()>, ()> {
        let response = http::Response::builder().status(status).body(());
        response.map_err(|_| ())
    }

    #[test]
    fn default_http_classifier_fails_5xx() {
        let c = HttpClassifier::default();
        assert_eq!(c.classify(&response(200)), Outcome::Success);
        assert_eq!(c.classify(&response(404)), Outcome::Success);
        assert_eq!(c.classify(&response(500)), Outcome::Failure);
        assert_eq!(c.classify(&response(599)), Outcome::Failure);
        assert_eq!(
            c.classify(&Err::<http::Response<()>, ()>(())),
            Outcome::Failure
        );
    }

    #[test]
    fn retryable_and_ignored_statuses() {
        let c = HttpClassifier::retryable().ignoring(StatusSet::from_codes([503]));
        assert_eq!(c.classify(&response(500)), Outcome::Success);
        assert_eq!(c.classify(&response(502)), Outcome::Failure);
        assert_eq!(c.classify(&response(503)), Outcome::Ignored);
    }

    #[test]
    fn status_patterns() {
        assert_eq!(
            StatusSet::parse_pattern("5xx"),
            Ok(StatusSet::range(500, 599))
        );
        assert_eq!(
            StatusSet::parse_pattern("502-504"),
            Ok(StatusSet::from_codes([502, 503, 504]))
        );
        assert_eq!(
            StatusSet::parse_pattern("429"),
            Ok(StatusSet::from_codes([429]))
        );
        assert!(StatusSet::parse_pattern("42").is_err());
        assert!(StatusSet::parse_pattern("504-502").is_err());
        assert!(StatusSet::parse_pattern("xx").is_err());
    }

    #[test]
    fn closures_classify() {
        let c = |r: &Result<u8, &str>| match r {
            Err(e) if e.contains("bad request") => Outcome::Ignored,
            Err(_) => Outcome::Failure,
            Ok(_) => Outcome::Success,
        };
        assert_eq!(c.classify(&Err("bad request: x")), Outcome::Ignored);
        assert_eq!(c.classify(&Err("down")), Outcome::Failure);
        assert_eq!(
            DefaultClassifier.classify(&Ok::<_, ()>(1)),
            Outcome::Success
        );
    }
}
