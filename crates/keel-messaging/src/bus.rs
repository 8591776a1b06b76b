//! Publish/subscribe as a backend-free trait. Backends (`keel-bus-sqlite`,
//! `keel-bus-nats`) implement [`Bus`]; services hold an `Arc<dyn Bus>` chosen by URL.
//!
//! Delivery contract, the same on every backend:
//! - **at least once**: a message is delivered until its handler returns `Ok`, or until it
//!   is dead-lettered;
//! - **consumer groups**: every group gets every message; within a group, instances compete
//!   (each message goes to one of them);
//! - **per-key order**: messages with the same partition key are handled one at a time, in
//!   publish order, even across redeliveries and rebalancing — a failing message holds back
//!   the later messages of its partition until it succeeds or is dead-lettered;
//! - **redelivery with backoff**, then the **dead-letter destination** after
//!   `max_attempts`, with the error attached; [`HandlerError::Reject`] dead-letters at once
//!   (a payload that does not deserialize never blocks its partition);
//! - a handler that **panics** has failed that attempt, like a [`HandlerError::Retry`]
//!   ([`handle_catching_panics`]); the consumer keeps running.
//!
//! [`Bus::subscribe`] is the raw at-least-once API; services consume through
//! [`Inbox::subscribe`](crate::Inbox::subscribe), which drops duplicates.

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::message::{Message, headers};

/// Bus failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The broker or bus storage cannot be reached; retry later.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (bad destination name, bad URL, …).
    #[error("invalid: {0}")]
    Invalid(String),
}

/// What a handler can say about a message it could not process.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    /// Try again later (with backoff), up to the subscription's `max_attempts`.
    #[error("{0}")]
    Retry(String),
    /// This message can never succeed (e.g. its payload does not deserialize): dead-letter it now.
    #[error("rejected: {0}")]
    Reject(String),
}

impl HandlerError {
    /// A retryable error from anything displayable.
    pub fn retry(e: impl std::fmt::Display) -> Self {
        HandlerError::Retry(e.to_string())
    }
    /// A permanent error from anything displayable.
    pub fn reject(e: impl std::fmt::Display) -> Self {
        HandlerError::Reject(e.to_string())
    }
    /// The failed attempt a handler's panic stands for: retryable (a panic may come from a
    /// transient state), so it follows the redelivery and dead-letter rules like any error.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string value".to_owned());
        HandlerError::Retry(format!("handler panicked: {what}"))
    }
}

/// One delivery of a message to a handler.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// 1 for the first delivery, 2 for the first redelivery, …
    pub attempt: u32,
    /// The partition it came from.
    pub partition: u32,
}

/// Processes deliveries.
pub trait Handler: Send + Sync + 'static {
    /// Handles one delivery; `Ok` acknowledges it.
    fn handle(&self, delivery: Delivery) -> BoxFuture<'_, Result<(), HandlerError>>;
}

/// Runs `handler` on `delivery`, turning a panic (while building or polling its future)
/// into a failed attempt ([`HandlerError::from_panic`]). Backends call handlers through this,
/// so a handler bug never kills the task that owns a partition.
pub async fn handle_catching_panics(
    handler: &dyn Handler,
    delivery: Delivery,
) -> Result<(), HandlerError> {
    use futures::FutureExt;
    // Built inside, so a panic while building the handler's future is caught as well; run in
    // the trace the message carries (see `trace::set_scope`).
    let carried = crate::trace::extract(&delivery.message.headers);
    let fut = std::panic::AssertUnwindSafe(async move {
        crate::trace::in_scope(carried, handler.handle(delivery)).await
    });
    match fut.catch_unwind().await {
        Ok(outcome) => outcome,
        Err(panic) => Err(HandlerError::from_panic(panic.as_ref())),
    }
}

struct FnHandler<F>(F);

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn handle(&self, delivery: Delivery) -> BoxFuture<'_, Result<(), HandlerError>> {
        Box::pin((self.0)(delivery))
    }
}

/// A handler from an async closure.
pub fn handler_fn<F, Fut>(f: F) -> Arc<dyn Handler>
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    Arc::new(FnHandler(f))
}

/// What to consume and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// The destination.
    pub destination: String,
    /// The consumer group (usually the service name).
    pub group: String,
    /// Deliveries before dead-lettering (default 5).
    pub max_attempts: u32,
    /// First redelivery delay (default 100 ms), doubling up to `max_backoff`.
    pub initial_backoff: Duration,
    /// Longest redelivery delay (default 10 s).
    pub max_backoff: Duration,
    /// Where failed messages go (default `<destination>.dlq`).
    pub dead_letter: String,
}

impl Subscription {
    /// A subscription with the defaults.
    pub fn new(destination: impl Into<String>, group: impl Into<String>) -> Self {
        let destination = destination.into();
        Self {
            dead_letter: format!("{destination}.dlq"),
            destination,
            group: group.into(),
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }

    /// Sets `max_attempts`.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Sets the backoff range.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Checks names; the error says which field is wrong.
    pub fn validate(&self) -> Result<(), BusError> {
        for (field, v) in [
            ("destination", &self.destination),
            ("group", &self.group),
            ("dead_letter", &self.dead_letter),
        ] {
            validate_name(v).map_err(|e| BusError::Invalid(format!("{field}: {e}")))?;
        }
        Ok(())
    }

    /// What to do after attempt number `attempt` failed with `error`.
    pub fn after_failure(&self, attempt: u32, error: &HandlerError) -> AfterFailure {
        match error {
            HandlerError::Reject(_) => AfterFailure::DeadLetter,
            HandlerError::Retry(_) if attempt >= self.max_attempts => AfterFailure::DeadLetter,
            HandlerError::Retry(_) => {
                let shift = attempt.saturating_sub(1).min(20);
                let d = self.initial_backoff.saturating_mul(1 << shift);
                AfterFailure::RetryAfter(d.min(self.max_backoff))
            }
        }
    }

    /// The dead-letter copy of `message` after `attempts` deliveries failed with `error`.
    pub fn dead_letter_message(
        &self,
        message: &Message,
        attempts: u32,
        error: &HandlerError,
    ) -> Message {
        let mut m = message.clone();
        m.destination = self.dead_letter.clone();
        m.headers
            .insert(headers::ERROR.to_owned(), error.to_string());
        m.headers.insert(
            headers::ORIGINAL_DESTINATION.to_owned(),
            message.destination.clone(),
        );
        m.headers
            .insert(headers::ATTEMPTS.to_owned(), attempts.to_string());
        m
    }
}

/// The decision after a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Redeliver after this delay.
    RetryAfter(Duration),
    /// Move to the dead-letter destination.
    DeadLetter,
}

/// Destination and group names: 1–200 characters of `[A-Za-z0-9._-]`, not starting with a dot.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err(format!("{name:?} must be 1 to 200 characters"));
    }
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return Err(format!("{name:?} has an empty segment"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{name:?} contains {c:?}; use letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// A running subscription. Dropping it stops consumption without waiting; [`Consumer::stop`]
/// lets the message in hand finish first.
#[derive(Debug)]
pub struct Consumer {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Consumer {
    /// Wraps a backend's consuming task; it must end soon after `stop` is cancelled.
    pub fn new(stop: CancellationToken, task: JoinHandle<()>) -> Self {
        Self {
            stop,
            task: Some(task),
        }
    }

    /// Stops consuming: in-flight handlers finish and are acknowledged; nothing new starts.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A message bus.
pub trait Bus: Send + Sync + std::fmt::Debug + 'static {
    /// Publishes one message durably: when this returns `Ok`, the message will be delivered.
    fn publish<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BusError>>;

    /// Publishes several messages in order. Returns how many were published before the
    /// first failure (all of them on success). Backends may do this in one round trip.
    fn publish_all<'a>(
        &'a self,
        messages: &'a [Message],
    ) -> BoxFuture<'a, (usize, Option<BusError>)> {
        Box::pin(async move {
            for (n, m) in messages.iter().enumerate() {
                if let Err(e) = self.publish(m).await {
                    return (n, Some(e));
                }
            }
            (messages.len(), None)
        })
    }

    /// Starts consuming `subscription` with `handler`.
    fn subscribe(
        &self,
        subscription: Subscription,
        handler: Arc<dyn Handler>,
    ) -> BoxFuture<'_, Result<Consumer, BusError>>;

    /// The backend's name, for metrics and logs (`sqlite`, `nats`).
    fn backend(&self) -> &'static str;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_then_dead_letters() {
        let s = Subscription::new("d", "g")
            .max_attempts(5)
            .backoff(Duration::from_millis(100), Duration::from_millis(500));
        let e = HandlerError::retry("boom");
        let delays: Vec<AfterFailure> = (1..=5).map(|a| s.after_failure(a, &e)).collect();
        assert_eq!(
            delays,
            vec![
                AfterFailure::RetryAfter(Duration::from_millis(100)),
                AfterFailure::RetryAfter(Duration::from_millis(200)),
                AfterFailure::RetryAfter(Duration::from_millis(400)),
                AfterFailure::RetryAfter(Duration::from_millis(500)),
                AfterFailure::DeadLetter,
            ]
        );
        assert_eq!(
            s.after_failure(1, &HandlerError::reject("bad payload")),
            AfterFailure::DeadLetter
        );
    }

    #[test]
    fn dead_letters_carry_the_cause() {
        let s = Subscription::new("orders", "kitchen");
        let m = Message::new("orders", serde_json::json!({}));
        let d = s.dead_letter_message(&m, 3, &HandlerError::retry("db down"));
        assert_eq!(d.destination, "orders.dlq");
        assert_eq!(d.id, m.id);
        assert_eq!(d.header(headers::ERROR), Some("db down"));
        assert_eq!(d.header(headers::ORIGINAL_DESTINATION), Some("orders"));
        assert_eq!(d.header(headers::ATTEMPTS), Some("3"));
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("order.events").is_ok());
        assert!(validate_name("a_b-c.1").is_ok());
        for bad in ["", ".x", "x.", "a..b", "a b", "a*", "a>b"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        let s = Subscription::new("ok", "bad group");
        assert!(s.validate().unwrap_err().to_string().contains("group"));
    }
}
