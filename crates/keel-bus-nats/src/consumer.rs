//! Consumer groups on JetStream. A subscription runs one task per partition; each pulls from
//! the group's durable consumer on the partition's stream. That consumer has
//! `max_ack_pending = 1`, so the server gives the partition's next message to a member of the
//! group only once the previous one is acknowledged — members compete for partitions message by
//! message, and per-key order holds however many there are.
//!
//! A message in hand is handled, and on failure retried after the subscription's backoff,
//! without letting go of it: "in progress" acknowledgements keep the server from giving it to
//! anyone else (every `ack_wait / 3`), and the partition waits behind it. The attempt number is
//! the server's delivery count (which grows when a member died holding the message) plus the
//! local retries. After the last attempt, or at once for `Reject` and for a body that is not an
//! envelope, the dead-letter copy is published (its acknowledgement awaited) and only then is
//! the original terminated, so a crash in between re-delivers rather than loses it.
//!
//! Stopping lets the message in hand finish and be acknowledged; a message waiting for its
//! next attempt is handed back with the remaining delay, and anything already delivered but not
//! started is handed back at once. A broken connection or a vanished stream or consumer makes
//! the partition task start over (recreating what is missing) with backoff.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
};
use futures::{FutureExt, StreamExt};
use keel_messaging::{
    AfterFailure, BusError, Consumer, Delivery, Handler, HandlerError, Message, Subscription,
    handle_catching_panics, headers,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::NatsBus;

pub(crate) async fn start(
    bus: NatsBus,
    sub: Subscription,
    handler: Arc<dyn Handler>,
) -> Result<Consumer, BusError> {
    let partitions = bus.settings().partitions;
    let labels = vec![
        metrics::Label::new("destination", sub.destination.clone()),
        metrics::Label::new("group", sub.group.clone()),
    ];
    let group = Arc::new(Group {
        lag: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
        metrics: Metrics {
            delivered: metrics::counter!("keel_messaging_delivered_total", labels.clone()),
            redelivered: metrics::counter!("keel_messaging_redelivered_total", labels.clone()),
            dead_lettered: metrics::counter!("keel_messaging_dead_lettered_total", labels.clone()),
            lag: metrics::gauge!("keel_messaging_consumer_lag", labels),
        },
        bus,
        sub,
        handler,
    });
    // Create the stream and every consumer now, so mistakes and an unreachable server are
    // reported to the caller rather than retried in the background.
    futures::future::try_join_all((0..partitions).map(|p| {
        let group = group.clone();
        async move {
            let stream = group.bus.ensure_stream(&group.sub.destination, p).await?;
            group.consumer(&stream, p).await
        }
    }))
    .await?;
    let stop = CancellationToken::new();
    let tasks: Vec<_> = (0..partitions)
        .map(|p| tokio::spawn(group.clone().partition(p, stop.clone())))
        .collect();
    let task = tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
    });
    Ok(Consumer::new(stop, task))
}

struct Group {
    bus: NatsBus,
    sub: Subscription,
    handler: Arc<dyn Handler>,
    /// Messages waiting per partition, as last reported by the server.
    lag: Vec<AtomicU64>,
    metrics: Metrics,
}

/// The subscription's metric handles (registered once, not per message).
struct Metrics {
    delivered: metrics::Counter,
    redelivered: metrics::Counter,
    dead_lettered: metrics::Counter,
    lag: metrics::Gauge,
}

/// How a message in hand ended.
enum Outcome {
    Done,
    /// Handed back to the server because the subscription is stopping.
    Released,
}

impl Group {
    async fn consumer(
        &self,
        stream: &jetstream::stream::Stream,
        partition: u32,
    ) -> Result<PullConsumer, BusError> {
        let name = self.bus.consumer_name(&self.sub.group);
        let config = pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!(
                "keel group {} on {} partition {partition}",
                self.sub.group, self.sub.destination
            )),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.bus.settings().ack_wait,
            max_ack_pending: 1,
            ..Default::default()
        };
        let consumer: PullConsumer = stream
            .get_or_create_consumer(&name, config)
            .await
            .map_err(|e| self.bus.unavailable(format!("consumer {name}: {e}")))?;
        // An existing consumer keeps its configuration; one changed by hand to allow several
        // unacknowledged messages would let competing members break per-key order.
        let max_ack_pending = consumer.cached_info().config.max_ack_pending;
        if max_ack_pending != 1 {
            tracing::warn!(consumer = %name, stream = %consumer.cached_info().stream_name, max_ack_pending, "consumer allows more than one unacknowledged message: per-key order is not guaranteed across members");
        }
        Ok(consumer)
    }

    /// Consumes one partition until `stop`.
    async fn partition(self: Arc<Self>, partition: u32, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let settings = self.bus.settings().clone();
        // Heartbeats from the server reveal a dead connection or a lost pull request.
        let heartbeat = Duration::from_secs(2);
        // A pull request outlives a stopped member on the server (NATS 2.9 still delivers to
        // it; the message then waits out `ack_wait`), so requests are kept short-lived.
        let expires = Duration::from_secs(5);
        loop {
            if stop.is_cancelled() {
                return;
            }
            let messages = async {
                let stream = self
                    .bus
                    .ensure_stream(&self.sub.destination, partition)
                    .await?;
                let consumer = self.consumer(&stream, partition).await?;
                consumer
                    .stream()
                    .max_messages_per_batch(settings.pull_batch.max(1))
                    .expires(expires)
                    .heartbeat(heartbeat)
                    .messages()
                    .await
                    .map_err(|e| self.bus.unavailable(e))
            }
            .await;
            match messages {
                Ok(mut messages) => loop {
                    if stop.is_cancelled() {
                        release_buffered(&mut messages).await;
                        return;
                    }
                    // A message already buffered is taken without waiting on anything else.
                    let next = match messages.next().now_or_never() {
                        Some(next) => next,
                        None => tokio::select! {
                            biased;
                            _ = stop.cancelled() => {
                                release_buffered(&mut messages).await;
                                return;
                            }
                            next = messages.next() => next,
                        },
                    };
                    match next {
                        Some(Ok(m)) => {
                            backoff = Duration::from_millis(100);
                            if let Outcome::Released = self.process(partition, m, &stop).await {
                                release_buffered(&mut messages).await;
                                return;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(destination = %self.sub.destination, group = %self.sub.group, partition, error = %e, "pulling messages failed; starting over");
                            break;
                        }
                        None => break,
                    }
                },
                Err(e) => {
                    tracing::warn!(destination = %self.sub.destination, group = %self.sub.group, partition, error = %e, retry_in = ?backoff, "cannot consume; will retry");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn process(
        &self,
        partition: u32,
        m: jetstream::Message,
        stop: &CancellationToken,
    ) -> Outcome {
        let (delivered, pending) = match m.info() {
            Ok(i) => (i.delivered, i.pending),
            Err(e) => {
                tracing::warn!(error = %e, "a message without JetStream metadata; ignored");
                return Outcome::Done;
            }
        };
        self.report_lag(partition, pending);
        let message = match decode(&self.sub.destination, &m.payload) {
            Ok(message) => message,
            Err(e) => {
                // Not an envelope: nothing a handler could do with it; never block behind it.
                let raw = raw_message(&self.sub.destination, &m);
                let error = HandlerError::reject(format!("unreadable message: {e}"));
                return self
                    .dead_letter(&m, &raw, delivered.max(1) as u32, &error, stop)
                    .await;
            }
        };
        let mut attempt = delivered.max(1) as u32;
        loop {
            let delivery = Delivery {
                message: message.clone(),
                attempt,
                partition,
            };
            match self.handle(&m, delivery).await {
                Ok(()) => {
                    if let Err(e) = m.ack().await {
                        // The server will offer it again after ack_wait: at least once.
                        tracing::warn!(message_id = %message.id, error = %e, "acknowledgement not sent");
                    }
                    self.metrics.delivered.increment(1);
                    return Outcome::Done;
                }
                Err(e) => match self.sub.after_failure(attempt, &e) {
                    AfterFailure::RetryAfter(delay) => {
                        self.metrics.redelivered.increment(1);
                        tracing::debug!(message_id = %message.id, attempt, error = %e, retry_in = ?delay, "handler failed; will redeliver");
                        if !self.hold(&m, delay, stop).await {
                            return Outcome::Released;
                        }
                        attempt += 1;
                    }
                    AfterFailure::DeadLetter => {
                        return self.dead_letter(&m, &message, attempt, &e, stop).await;
                    }
                },
            }
        }
    }

    /// Runs the handler, telling the server the message is in progress while it works. A
    /// panic is a failed attempt like any other error ([`handle_catching_panics`]).
    async fn handle(&self, m: &jetstream::Message, delivery: Delivery) -> Result<(), HandlerError> {
        let work = handle_catching_panics(self.handler.as_ref(), delivery);
        tokio::pin!(work);
        let every = self.progress_interval();
        loop {
            // The handler is polled first: a quick one never touches the timer.
            match tokio::time::timeout(every, &mut work).await {
                Ok(outcome) => return outcome,
                Err(_) => in_progress(m).await,
            }
        }
    }

    /// Keeps `m` for `delay` (extending its ack deadline). False when the subscription stopped
    /// meanwhile: then the message is handed back to the server with the delay that remains.
    async fn hold(
        &self,
        m: &jetstream::Message,
        delay: Duration,
        stop: &CancellationToken,
    ) -> bool {
        let until = Instant::now() + delay;
        let every = self.progress_interval();
        loop {
            let now = Instant::now();
            if now >= until {
                return true;
            }
            let step = (until - now).min(every);
            tokio::select! {
                _ = stop.cancelled() => {
                    let left = until.saturating_duration_since(Instant::now());
                    let _ = m.ack_with(AckKind::Nak(Some(left))).await;
                    return false;
                }
                _ = tokio::time::sleep(step) => {}
            }
            if Instant::now() < until {
                in_progress(m).await;
            }
        }
    }

    /// Publishes the dead-letter copy (retrying while holding the message), then terminates
    /// the original.
    async fn dead_letter(
        &self,
        m: &jetstream::Message,
        message: &Message,
        attempts: u32,
        error: &HandlerError,
        stop: &CancellationToken,
    ) -> Outcome {
        let copy = self.sub.dead_letter_message(message, attempts, error);
        // One copy per group: another group dead-lettering the same message is not a duplicate.
        let dedup = format!("{}:{}", message.id, self.sub.group);
        let mut backoff = Duration::from_millis(100);
        loop {
            match self
                .bus
                .send(std::slice::from_ref(&copy), Some(&dedup))
                .await
            {
                (_, None) => break,
                (_, Some(e)) => {
                    tracing::warn!(message_id = %message.id, dead_letter = %copy.destination, error = %e, retry_in = ?backoff, "cannot publish the dead-letter copy; holding the message");
                    if !self.hold(m, backoff, stop).await {
                        return Outcome::Released;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if let Err(e) = m.ack_with(AckKind::Term).await {
            tracing::warn!(message_id = %message.id, error = %e, "termination not sent; the message may come again");
        }
        self.metrics.dead_lettered.increment(1);
        tracing::warn!(destination = %self.sub.destination, group = %self.sub.group, message_id = %message.id, attempts, error = %error, "message dead-lettered");
        Outcome::Done
    }

    fn progress_interval(&self) -> Duration {
        (self.bus.settings().ack_wait / 3).max(Duration::from_millis(100))
    }

    fn report_lag(&self, partition: u32, pending: u64) {
        if let Some(l) = self.lag.get(partition as usize) {
            l.store(pending, Ordering::Relaxed);
        }
        let total: u64 = self.lag.iter().map(|l| l.load(Ordering::Relaxed)).sum();
        self.metrics.lag.set(total as f64);
    }
}

async fn in_progress(m: &jetstream::Message) {
    if let Err(e) = m.ack_with(AckKind::Progress).await {
        tracing::debug!(error = %e, "in-progress acknowledgement not sent");
    }
}

/// Hands back, for immediate redelivery, whatever the server already delivered to this
/// member but it will not handle (the subscription is stopping).
async fn release_buffered(messages: &mut pull::Stream) {
    while let Some(Some(Ok(m))) = messages.next().now_or_never() {
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
}

/// The envelope in a message body.
fn decode(destination: &str, body: &[u8]) -> Result<Message, String> {
    let mut message: Message = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if message.id.is_empty() {
        return Err("the envelope has an empty id".into());
    }
    // The subject decides where a message belongs, whatever its body claims.
    message.destination = destination.to_owned();
    Ok(message)
}

/// A body that is not an envelope, wrapped in one for the dead letters: the body as the
/// payload when it is JSON, else as text (lossy UTF-8) marked by `keel-raw-payload: true`;
/// the id from `Nats-Msg-Id` when there is one; the NATS headers as headers.
fn raw_message(destination: &str, m: &jetstream::Message) -> Message {
    let mut message = Message::new(destination, serde_json::Value::Null);
    match serde_json::from_slice(&m.payload) {
        Ok(json) => message.payload = json,
        Err(_) => {
            message.payload =
                serde_json::Value::String(String::from_utf8_lossy(&m.payload).into_owned());
            message
                .headers
                .insert(headers::RAW_PAYLOAD.to_owned(), "true".to_owned());
        }
    }
    if let Some(h) = &m.headers {
        for (name, values) in h.iter() {
            if let Some(v) = values.first() {
                message
                    .headers
                    .insert(name.to_string(), v.as_str().to_owned());
            }
        }
        if let Some(id) = h.get(async_nats::header::NATS_MESSAGE_ID) {
            message.id = id.as_str().to_owned();
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_decode_and_take_the_subject_destination() {
        let m = Message::new("elsewhere", serde_json::json!({"n": 1})).with_key("k");
        let body = serde_json::to_vec(&m).unwrap();
        let d = decode("orders", &body).unwrap();
        assert_eq!(d.destination, "orders");
        assert_eq!((d.id, d.key, d.payload), (m.id, m.key, m.payload));
        assert!(decode("orders", b"not json").is_err());
        assert!(decode("orders", br#"{"n": 1}"#).is_err());
        assert!(decode("orders", br#"{"id":"","destination":"x","payload":1}"#).is_err());
    }
}
