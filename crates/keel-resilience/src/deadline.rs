//! One time budget per call, carried with the request to every hop.
//!
//! A [`Deadline`] is an absolute instant. Inside a process it travels in the request's
//! extensions ([`DeadlineCarrier`]) and in a task-local ([`Deadline::current`]) while a call
//! runs, so a handler's outgoing calls inherit it. Between processes it travels as the header
//! `keel-deadline-ms`: the time left, in whole milliseconds (rounded down), *relative* to the
//! moment the request is sent. A relative value needs no synchronised clocks; the receiver adds
//! it to its own clock on arrival. The time spent on the wire is not subtracted, so a deadline
//! is slightly generous downstream, by one network latency per hop. gRPC's `grpc-timeout`
//! header is read too.
//!
//! Messages on the bus also carry `keel-deadline-unix-ms`, the absolute deadline in
//! milliseconds since the Unix epoch, because a message can wait in a queue for longer than it
//! travels; the consumer takes the nearer of the two readings (trusting clocks to be in sync
//! within the budget's precision).
//!
//! [`DeadlineLayer`] enforces the nearest of its own budget, the request's deadline and the
//! task's deadline, fails with [`DeadlineExceeded`] when it passes, fails at once without
//! calling the service when no time is left, and writes the deadline into the request for the
//! next hop.

mod error;
mod future;
mod layer;
mod service;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::BuildHasher;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use tokio::time::Instant;

pub use error::DeadlineExceeded;
pub use future::ResponseFuture;
pub use layer::DeadlineLayer;
pub use service::DeadlineService;

tokio::task_local! {
    static CURRENT: Deadline;
}

/// The instant by which a call must be finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(Instant);

/// Header carrying the time left, in milliseconds, relative to when the request was sent.
pub const DEADLINE_HEADER: &str = "keel-deadline-ms";
/// gRPC's timeout header (read, not written).
pub const GRPC_TIMEOUT_HEADER: &str = "grpc-timeout";
/// Message header carrying the absolute deadline in milliseconds since the Unix epoch.
pub const DEADLINE_UNIX_MS_HEADER: &str = "keel-deadline-unix-ms";

// The same names as `HeaderName`s: a map lookup with a `&str` validates and lower-cases the
// name first, on every request.
const DEADLINE_NAME: HeaderName = HeaderName::from_static(DEADLINE_HEADER);
const GRPC_TIMEOUT_NAME: HeaderName = HeaderName::from_static(GRPC_TIMEOUT_HEADER);

/// Longest budget read from the wire (a year); longer values are treated as absent.
const MAX_WIRE_BUDGET: Duration = Duration::from_secs(365 * 24 * 3600);

impl Deadline {
    /// The deadline at `instant`.
    pub fn at(instant: Instant) -> Self {
        Deadline(instant)
    }

    /// The deadline `budget` from now.
    pub fn after(budget: Duration) -> Self {
        Self::after_at(budget, Instant::now())
    }

    fn after_at(budget: Duration, now: Instant) -> Self {
        Deadline(
            now.checked_add(budget)
                .unwrap_or_else(crate::clock::far_future),
        )
    }

    /// The instant itself.
    pub fn instant(self) -> Instant {
        self.0
    }

    /// Time left (zero once passed).
    pub fn remaining(self) -> Duration {
        self.remaining_at(Instant::now())
    }

    /// Time left as of `now`.
    pub fn remaining_at(self, now: Instant) -> Duration {
        self.0.saturating_duration_since(now)
    }

    /// Whether the deadline has passed.
    pub fn is_expired(self) -> bool {
        self.0 <= Instant::now()
    }

    /// The nearer of two optional deadlines.
    pub fn nearest(a: Option<Deadline>, b: Option<Deadline>) -> Option<Deadline> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The deadline of the call this task is running, set by [`DeadlineLayer`] or
    /// [`Deadline::scope`].
    pub fn current() -> Option<Deadline> {
        CURRENT.try_with(|d| *d).ok()
    }

    /// Run `future` with `self` as [`Deadline::current`] (nearer of it and any enclosing one).
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        let deadline = Deadline::nearest(Some(self), Deadline::current()).unwrap_or(self);
        CURRENT.scope(deadline, future).await
    }

    pub(crate) fn scoped<F: Future>(
        self,
        future: F,
    ) -> tokio::task::futures::TaskLocalFuture<Deadline, F> {
        CURRENT.scope(self, future)
    }

    pub(crate) fn sync_scoped<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }

    // ---- HTTP -------------------------------------------------------------------------------

    /// Read the deadline from `keel-deadline-ms` and `grpc-timeout` (the nearer if both), taking
    /// them as relative to `now` (the arrival time). Malformed values are ignored.
    pub fn from_headers(headers: &HeaderMap, now: Instant) -> Option<Deadline> {
        let keel = headers
            .get(&DEADLINE_NAME)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_millis);
        let grpc = headers
            .get(&GRPC_TIMEOUT_NAME)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let budget = match (keel, grpc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(Deadline::after_at(budget, now))
    }

    /// Write `keel-deadline-ms` with the time left now.
    pub fn to_headers(self, headers: &mut HeaderMap) {
        self.to_headers_at(headers, Instant::now());
    }

    /// Write `keel-deadline-ms` with the time left as of `now`.
    pub fn to_headers_at(self, headers: &mut HeaderMap, now: Instant) {
        let (name, value) = self.header_at(now);
        headers.insert(name, value);
    }

    /// The `keel-deadline-ms` header with the time left as of `now` (what
    /// [`to_headers_at`](Self::to_headers_at) inserts).
    pub fn header_at(self, now: Instant) -> (HeaderName, HeaderValue) {
        let millis = self.remaining_at(now).as_millis();
        (
            DEADLINE_NAME,
            HeaderValue::from(millis.min(u128::from(u64::MAX)) as u64),
        )
    }

    // ---- messages ---------------------------------------------------------------------------

    /// Read the deadline from a message's headers: the nearer of `keel-deadline-ms` (relative
    /// to `now`, the time of receipt) and `keel-deadline-unix-ms` (absolute, wall clock).
    pub fn from_message_headers<H: MessageHeaders + ?Sized>(
        headers: &H,
        now: Instant,
    ) -> Option<Deadline> {
        let relative = headers
            .header(DEADLINE_HEADER)
            .and_then(parse_millis)
            .map(|budget| Deadline::after_at(budget, now));
        let absolute = headers
            .header(DEADLINE_UNIX_MS_HEADER)
            .and_then(|v| parse_digits(v, 16))
            .map(|at_ms| {
                let wall_now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                let left = u128::from(at_ms).saturating_sub(wall_now);
                Deadline::after_at(
                    Duration::from_millis(left.min(u128::from(u64::MAX)) as u64),
                    now,
                )
            });
        Deadline::nearest(relative, absolute)
    }

    /// Write `keel-deadline-ms` and `keel-deadline-unix-ms` into a message's headers.
    pub fn to_message_headers<H: MessageHeaders + ?Sized>(self, headers: &mut H) {
        let left = self.remaining();
        headers.set_header(DEADLINE_HEADER, left.as_millis().to_string());
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(left);
        headers.set_header(DEADLINE_UNIX_MS_HEADER, at.as_millis().to_string());
    }
}

fn parse_digits(text: &str, max_len: usize) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || text.len() > max_len || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `keel-deadline-ms`: 1 to 12 ASCII digits, at most a year.
fn parse_millis(text: &str) -> Option<Duration> {
    let budget = Duration::from_millis(parse_digits(text, 12)?);
    (budget <= MAX_WIRE_BUDGET).then_some(budget)
}

/// `grpc-timeout`: 1 to 8 ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let value = parse_digits(&text[..text.len() - unit.len_utf8()], 8)?;
    let budget = match unit {
        'H' => Duration::from_secs(value * 3600),
        'M' => Duration::from_secs(value * 60),
        'S' => Duration::from_secs(value),
        'm' => Duration::from_millis(value),
        'u' => Duration::from_micros(value),
        'n' => Duration::from_nanos(value),
        _ => return None,
    };
    (budget <= MAX_WIRE_BUDGET).then_some(budget)
}

/// Carries a [`Deadline`] with a request. Implemented for `http::Request<B>` (extensions, and
/// the `keel-deadline-ms` header); implement it for your own request types to use
/// [`DeadlineLayer`], retry and the [`stack`](crate::stack).
pub trait DeadlineCarrier {
    /// The request's deadline, if any.
    fn deadline(&self) -> Option<Deadline>;
    /// Attach a deadline (replacing any).
    fn set_deadline(&mut self, deadline: Deadline);
}

impl<B> DeadlineCarrier for http::Request<B> {
    /// The deadline in the extensions, or else the one in the headers (relative to now).
    fn deadline(&self) -> Option<Deadline> {
        self.extensions()
            .get::<Deadline>()
            .copied()
            .or_else(|| Deadline::from_headers(self.headers(), Instant::now()))
    }

    /// Store in the extensions and write `keel-deadline-ms` for the next hop.
    fn set_deadline(&mut self, deadline: Deadline) {
        self.extensions_mut().insert(deadline);
        deadline.to_headers(self.headers_mut());
    }
}

/// Header maps of messages on the bus (no bus crate needed): implemented for
/// `BTreeMap<String, String>` and `HashMap<String, String>`.
pub trait MessageHeaders {
    /// One header's value.
    fn header(&self, name: &str) -> Option<&str>;
    /// Set one header.
    fn set_header(&mut self, name: &str, value: String);
}

impl MessageHeaders for BTreeMap<String, String> {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }

    fn set_header(&mut self, name: &str, value: String) {
        self.insert(name.to_owned(), value);
    }
}

impl<S: BuildHasher> MessageHeaders for HashMap<String, String, S> {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }

    fn set_header(&mut self, name: &str, value: String) {
        self.insert(name.to_owned(), value);
    }
}

#[cfg(test)]
mod tests;
