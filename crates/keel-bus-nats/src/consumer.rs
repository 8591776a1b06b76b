//! Consumer groups on JetStream. A subscription is a member of its group (`group.rs`): it runs
//! a worker for each partition whose lease it holds. The worker pulls from the group's durable
//! consumer on the partition's stream — a no-wait fetch of up to `pull_batch` while messages
//! keep coming, a long poll for as many (open on the server up to 5 s) when the partition is
//! quiet — and handles the messages one at a time in stream order, buffering those that
//! arrive meanwhile.
//!
//! **Order rule.** The worker handles the message with stream sequence `s` only when `s` is
//! the next one: everything before it is acknowledged (the consumer's ack floor) or gone from
//! the stream. A message that arrives early waits in the buffer; while one waits, the worker
//! re-reads the ack floor (with backoff) and skips sequences the stream no longer has. So if a
//! message went to another member — one presumed dead that was not, or a pull request a
//! released member abandoned (nats-server 2.9 still delivers to it) — the partition waits for
//! that message to be acknowledged or to come back after `ack_wait`, and per-key order holds.
//!
//! A message in hand is handled, and on failure retried after the subscription's backoff,
//! without letting go of it: "in progress" acknowledgements keep the server from giving it to
//! anyone else (every `ack_wait / 3`), for it and for the messages buffered behind it, and the
//! partition waits behind it. The attempt number is the server's delivery count (which grows
//! when a member died holding the message) plus the local retries. After the last attempt, or
//! at once for `Reject` and for a body that is not an envelope, the dead-letter copy is
//! published (its acknowledgement awaited) and only then is the original terminated, so a
//! crash in between re-delivers rather than loses it.
//!
//! Stopping (the subscription's, or the partition moving to another member) lets the message
//! in hand finish and be acknowledged; a message waiting for its next attempt is handed back
//! with the remaining delay, and everything buffered is handed back at once, in order. A broken
//! connection or a vanished stream or consumer makes the worker start over (recreating what
//! is missing) with backoff.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::Poll,
    time::Duration,
};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    stream::LastRawMessageErrorKind,
};
use futures::StreamExt;
use keel_messaging::{
    AfterFailure, BusError, Consumer, Delivery, Handler, HandlerError, Message, Subscription,
    handle_catching_panics, headers,
};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::{
    NatsBus,
    group::{Member, Spawn},
};

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
        bus: bus.clone(),
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
    let spawn: Spawn = {
        let group = group.clone();
        Arc::new(move |p, stop| tokio::spawn(group.clone().partition(p, stop)))
    };
    let member = Member::join(bus, &group.sub.destination, &group.sub.group, spawn).await?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(member.run(stop.clone()));
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
    /// Handled; the acknowledgement is the caller's to send.
    Handled,
    /// Terminated (dead-lettered) or otherwise settled with the server.
    Done,
    /// Handed back to the server because the worker is stopping.
    Released,
}

/// A pull request in progress.
struct Fetch {
    batch: pull::Batch,
    /// A long poll (the server keeps it open until `LONG_POLL` passes) rather than a no-wait
    /// fetch (answered at once with what there is).
    waiting: bool,
    got: usize,
    /// A request whose end has not come when this fires was lost (a server restart, say).
    /// One timer for the request's life: a worker waits for every message of a live
    /// partition, and a timer made per wait costs a registration and a removal each time.
    expiry: Pin<Box<Sleep>>,
}

/// How long a long poll stays open on the server.
const LONG_POLL: Duration = Duration::from_secs(5);

/// A partition's messages delivered to this worker and not yet handled, in stream-sequence
/// order. They nearly always arrive in order, so a sorted queue does with one move in and one
/// out per message what a map of these large values would do with shifts inside its nodes.
struct Buffer<M = jetstream::Message> {
    queue: VecDeque<(u64, M)>,
}

impl<M> Default for Buffer<M> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
        }
    }
}

impl<M> Buffer<M> {
    /// Files `m` under stream sequence `seq`; a newer delivery of a sequence replaces the older.
    fn insert(&mut self, seq: u64, m: M) {
        match self.queue.back() {
            Some((last, _)) if *last >= seq => {
                match self.queue.binary_search_by_key(&seq, |(s, _)| *s) {
                    Ok(i) => self.queue[i].1 = m,
                    Err(i) => self.queue.insert(i, (seq, m)),
                }
            }
            _ => self.queue.push_back((seq, m)),
        }
    }

    /// The lowest sequence held.
    fn first(&self) -> Option<u64> {
        self.queue.front().map(|(s, _)| *s)
    }

    /// Takes the message with the lowest sequence.
    fn pop_first(&mut self) -> Option<M> {
        self.queue.pop_front().map(|(_, m)| m)
    }

    fn len(&self) -> usize {
        self.queue.len()
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The messages in sequence order.
    fn values(&self) -> impl Iterator<Item = &M> {
        self.queue.iter().map(|(_, m)| m)
    }
}

impl Group {
    async fn consumer(
        &self,
        stream: &jetstream::stream::Stream,
        partition: u32,
    ) -> Result<PullConsumer, BusError> {
        let name = self.bus.consumer_name(&self.sub.group);
        let settings = self.bus.settings();
        let config = pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!(
                "keel group {} on {} partition {partition}",
                self.sub.group, self.sub.destination
            )),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::All,
            ack_wait: settings.ack_wait,
            max_ack_pending: settings.max_ack_pending(),
            ..Default::default()
        };
        let consumer: PullConsumer = stream
            .get_or_create_consumer(&name, config.clone())
            .await
            .map_err(|e| self.bus.unavailable(format!("consumer {name}: {e}")))?;
        let have = consumer.cached_info().config.max_ack_pending;
        if have != config.max_ack_pending
            || consumer.cached_info().config.ack_wait != config.ack_wait
        {
            // Made by an older Keel (one unacknowledged message) or with other settings. The
            // server cannot change an acknowledgement policy: an older consumer keeps explicit
            // acknowledgement (and gets one per message, see `Acks`).
            let config = pull::Config {
                ack_policy: consumer.cached_info().config.ack_policy,
                ..config
            };
            match stream.create_consumer(config).await {
                Ok(updated) => return Ok(updated),
                Err(e) => {
                    tracing::warn!(consumer = %name, stream = %consumer.cached_info().stream_name, error = %e, "cannot update the consumer's settings; using it as it is");
                }
            }
        }
        Ok(consumer)
    }

    /// Consumes one partition until `stop`.
    async fn partition(self: Arc<Self>, partition: u32, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if stop.is_cancelled() {
                return;
            }
            let started = Instant::now();
            match self.consume(partition, &stop).await {
                Ok(()) => return,
                Err(e) => {
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = Duration::from_millis(100);
                    }
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

    /// Consumes one partition: `Ok` when stopped, `Err` to start over.
    async fn consume(&self, partition: u32, stop: &CancellationToken) -> Result<(), BusError> {
        let stream = self
            .bus
            .ensure_stream(&self.sub.destination, partition)
            .await?;
        let consumer = self.consumer(&stream, partition).await?;
        let batch = self.bus.settings().pull_batch.max(1);
        let mut buffer = Buffer::default();
        let mut fetch: Option<Fetch> = None;
        let mut busy = true;
        let mut next = self.floor(&consumer, &stream, 0).await?;
        let mut acks = Acks::new(consumer.cached_info().config.ack_policy == AckPolicy::All);
        // While the next message is missing: when to look at the ack floor again.
        let mut gap_check = Duration::from_millis(20);
        let mut gap_at: Option<Instant> = None;
        let acks_ref = &mut acks;
        let result: Result<(), BusError> = async {
            let acks = acks_ref;
            // Made once: a fresh one per wait would join and leave the token's waiters each time.
            let cancelled = stop.cancelled();
            tokio::pin!(cancelled);
            loop {
                if stop.is_cancelled() {
                    acks.flush().await;
                    release(buffer, fetch).await;
                    return Ok(());
                }
                // Redeliveries of what was handled already (an acknowledgement that got lost).
                while let Some(seq) = buffer.first()
                    && seq < next
                    && let Some(m) = buffer.pop_first()
                {
                    let _ = m.ack().await;
                }
                if buffer.first() == Some(next)
                    && let Some(m) = buffer.pop_first()
                {
                    gap_at = None;
                    gap_check = Duration::from_millis(20);
                    let outcome = 'outcome: {
                        let work = self.process(partition, &m, stop);
                        tokio::pin!(work);
                        // Most messages are handled at the first poll: no timer, no select.
                        if let Poll::Ready(outcome) = futures::poll!(&mut work) {
                            break 'outcome outcome;
                        }
                        let every = self.progress_interval();
                        let mut keep = tokio::time::interval_at(Instant::now() + every, every);
                        loop {
                            tokio::select! {
                                biased;
                                outcome = &mut work => break outcome,
                                item = pull(&mut fetch) => take(item, &mut fetch, &mut buffer, &mut busy)?,
                                _ = acks.due() => acks.flush().await,
                                _ = keep.tick() => {
                                    // A slow message: settle what is handled, keep the rest.
                                    acks.flush().await;
                                    for m in buffer.values() {
                                        in_progress(m).await;
                                    }
                                }
                            }
                        }
                    };
                    match outcome {
                        Outcome::Handled => {
                            acks.handled(m).await;
                            self.metrics.delivered.increment(1);
                            next += 1;
                        }
                        Outcome::Done => next += 1,
                        Outcome::Released => {
                            acks.flush().await;
                            release(buffer, fetch).await;
                            return Ok(());
                        }
                    }
                    continue;
                }
                // Nothing to handle now: the buffer is empty, or waits for an earlier message.
                acks.idle();
                let gapped = !buffer.is_empty();
                if fetch.is_none() {
                    let room = (2 * batch).saturating_sub(buffer.len()).max(1);
                    let timeout = self.bus.settings().request_timeout;
                    let waiting = !busy || gapped;
                    // Sending a pull request can hang on a connection being re-established:
                    // bounded, and given up when stopping.
                    let open = async {
                        if waiting {
                            // No idle heartbeats: async-nats 0.51's batch stream swallows one
                            // without asking to be woken again, and would sit on the messages after
                            // it. A lost request is noticed by its deadline instead.
                            consumer
                                .batch()
                                .max_messages(room.min(batch))
                                .expires(LONG_POLL)
                                .messages()
                                .await
                        } else {
                            consumer
                                .fetch()
                                .max_messages(room.min(batch))
                                .messages()
                                .await
                        }
                    };
                    let batch = tokio::select! {
                        () = &mut cancelled => continue,
                        opened = tokio::time::timeout(timeout, open) => match opened {
                            Ok(Ok(batch)) => batch,
                            Ok(Err(e)) => return Err(self.bus.unavailable(format!("pull: {e}"))),
                            Err(_) => return Err(self.bus.unavailable("pull request not sent in time")),
                        },
                    };
                    let open_for = if waiting {
                        LONG_POLL + timeout
                    } else {
                        timeout
                    };
                    fetch = Some(Fetch {
                        batch,
                        waiting,
                        got: 0,
                        expiry: Box::pin(tokio::time::sleep(open_for)),
                    });
                }
                if gapped && gap_at.is_none() {
                    gap_at = Some(Instant::now() + gap_check);
                }
                let check = async {
                    match gap_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    () = &mut cancelled => {}
                    item = pull(&mut fetch) => take(item, &mut fetch, &mut buffer, &mut busy)?,
                    _ = acks.due() => acks.flush().await,
                    _ = check => {
                        let first = buffer.first().unwrap_or(next);
                        next = self.floor(&consumer, &stream, next).await?;
                        next = self.skip_deleted(&stream, next, first).await?;
                        gap_at = None;
                        gap_check = (gap_check * 2).min(Duration::from_secs(1));
                    }
                }
            }
        }
        .await;
        if result.is_err() {
            // Starting over: settle what was handled, so that it is not handled again.
            acks.flush().await;
        }
        result
    }

    /// The partition's next sequence to handle, at least `at_least`: after the consumer's ack
    /// floor, and not before the stream's first message.
    async fn floor(
        &self,
        consumer: &PullConsumer,
        stream: &jetstream::stream::Stream,
        at_least: u64,
    ) -> Result<u64, BusError> {
        let info = consumer
            .get_info()
            .await
            .map_err(|e| self.bus.unavailable(format!("consumer info: {e}")))?;
        let first = stream
            .get_info()
            .await
            .map_err(|e| self.bus.unavailable(format!("stream info: {e}")))?
            .state
            .first_sequence;
        Ok(at_least.max(info.ack_floor.stream_sequence + 1).max(first))
    }

    /// Moves `next` past sequences below `until` that the stream no longer holds (deleted by
    /// hand): nobody will ever acknowledge them.
    async fn skip_deleted(
        &self,
        stream: &jetstream::stream::Stream,
        mut next: u64,
        until: u64,
    ) -> Result<u64, BusError> {
        while next < until {
            match stream.get_raw_message(next).await {
                Ok(_) => break,
                Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => {
                    next += 1;
                }
                Err(e) => return Err(self.bus.unavailable(format!("message {next}: {e}"))),
            }
        }
        Ok(next)
    }

    async fn process(
        &self,
        partition: u32,
        m: &jetstream::Message,
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
                let raw = raw_message(&self.sub.destination, m);
                let error = HandlerError::reject(format!("unreadable message: {e}"));
                return self
                    .dead_letter(m, &raw, delivered.max(1) as u32, &error, stop)
                    .await;
            }
        };
        let mut attempt = delivered.max(1) as u32;
        // The handler takes the message; a later attempt or the dead letter decodes it again.
        let mut decoded = Some(message);
        loop {
            let message = match decoded.take() {
                Some(message) => message,
                None => decode(&self.sub.destination, &m.payload)
                    .unwrap_or_else(|_| raw_message(&self.sub.destination, m)),
            };
            let id = message.id.clone();
            let delivery = Delivery {
                message,
                attempt,
                partition,
            };
            match self.handle(m, delivery).await {
                Ok(()) => return Outcome::Handled,
                Err(e) => match self.sub.after_failure(attempt, &e) {
                    AfterFailure::RetryAfter(delay) => {
                        self.metrics.redelivered.increment(1);
                        tracing::debug!(message_id = %id, attempt, error = %e, retry_in = ?delay, "handler failed; will redeliver");
                        if !self.hold(m, delay, stop).await {
                            return Outcome::Released;
                        }
                        attempt += 1;
                    }
                    AfterFailure::DeadLetter => {
                        let message = decode(&self.sub.destination, &m.payload)
                            .unwrap_or_else(|_| raw_message(&self.sub.destination, m));
                        return self.dead_letter(m, &message, attempt, &e, stop).await;
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
        // A quick handler is done at the first poll, before any timer is made.
        if let Poll::Ready(outcome) = futures::poll!(&mut work) {
            return outcome;
        }
        let every = self.progress_interval();
        loop {
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

/// Acknowledgements of handled messages. With `AckPolicy::All` (consumers made by this
/// version) one acknowledgement settles every earlier message, so the last handled one is
/// acknowledged only every `ACK_EVERY` messages, `ACK_DELAY` after the worker ran out of
/// messages, and when it stops or works long on one message; consumers made with explicit
/// acknowledgement get one each.
struct Acks {
    all: bool,
    last: Option<jetstream::Message>,
    count: usize,
    /// When the last handled message is acknowledged if nothing else comes first.
    due: Option<Instant>,
    /// Fires at `due` (reset only when `due` is set, not for every wait).
    timer: Pin<Box<Sleep>>,
}

/// How long a handled message waits for its acknowledgement once its partition is quiet: a
/// live partition's next messages usually come first, and one acknowledgement covers them
/// all.
const ACK_DELAY: Duration = Duration::from_millis(20);

/// Handled messages settled by one acknowledgement, at most.
const ACK_EVERY: usize = 64;

impl Acks {
    fn new(all: bool) -> Self {
        Self {
            all,
            last: None,
            count: 0,
            due: None,
            timer: Box::pin(tokio::time::sleep(ACK_DELAY)),
        }
    }

    /// The worker has nothing to handle: acknowledge soon.
    fn idle(&mut self) {
        if self.last.is_some() && self.due.is_none() {
            let at = Instant::now() + ACK_DELAY;
            self.due = Some(at);
            self.timer.as_mut().reset(at);
        }
    }

    /// Ready when an acknowledgement is due (never while none is).
    async fn due(&mut self) {
        match self.due {
            Some(_) => self.timer.as_mut().await,
            None => std::future::pending().await,
        }
    }

    async fn handled(&mut self, m: jetstream::Message) {
        if !self.all {
            return ack(&m).await;
        }
        self.last = Some(m);
        self.count += 1;
        if self.count >= ACK_EVERY {
            self.flush().await;
        }
    }

    async fn flush(&mut self) {
        if let Some(m) = self.last.take() {
            ack(&m).await;
        }
        self.count = 0;
        self.due = None;
    }
}

async fn ack(m: &jetstream::Message) {
    if let Err(e) = m.ack().await {
        // The server will offer it again after ack_wait: at least once.
        tracing::warn!(error = %e, "acknowledgement not sent");
    }
}

/// The next message of the pull request in progress (never ready when there is none).
async fn pull(fetch: &mut Option<Fetch>) -> Option<Result<jetstream::Message, async_nats::Error>> {
    match fetch {
        Some(f) => tokio::select! {
            biased;
            next = f.batch.next() => next,
            () = f.expiry.as_mut() => Some(Err("the pull request's end never came".into())),
        },
        None => std::future::pending().await,
    }
}

/// Files what a pull request brought: a message into the buffer (a newer delivery of the same
/// sequence replaces the older), the end of the request by closing it.
fn take(
    item: Option<Result<jetstream::Message, async_nats::Error>>,
    fetch: &mut Option<Fetch>,
    buffer: &mut Buffer,
    busy: &mut bool,
) -> Result<(), BusError> {
    match item {
        Some(Ok(m)) => {
            if let Some(f) = fetch.as_mut() {
                f.got += 1;
            }
            match m.info().map(|i| i.stream_sequence) {
                Ok(seq) => {
                    buffer.insert(seq, m);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a message without JetStream metadata; ignored")
                }
            }
            Ok(())
        }
        Some(Err(e)) => {
            *fetch = None;
            Err(BusError::Unavailable(format!(
                "pulling messages failed: {e}"
            )))
        }
        None => {
            if let Some(f) = fetch.take() {
                *busy = f.got > 0;
            }
            Ok(())
        }
    }
}

/// Hands back, in order and for immediate redelivery, everything delivered to this worker
/// that it will not handle. A no-wait fetch is read to its end (it ends at once); a long poll
/// is left to a task of its own to drain until it expires, so that a message the server still
/// puts into it comes back at once rather than after `ack_wait`.
async fn release(buffer: Buffer, fetch: Option<Fetch>) {
    for m in buffer.values() {
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
    let Some(mut f) = fetch else {
        return;
    };
    let waiting = f.waiting;
    let drain = async move {
        // Bounded: a request lost with the connection never ends by itself.
        let deadline = f.expiry.deadline();
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, f.batch.next()).await {
            let _ = m.ack_with(AckKind::Nak(None)).await;
        }
    };
    if waiting {
        tokio::spawn(drain);
    } else {
        drain.await;
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

    #[test]
    fn the_buffer_keeps_stream_order_and_the_newest_delivery() {
        let mut b = Buffer::default();
        for (seq, m) in [(5, "a"), (7, "b"), (6, "c"), (3, "d"), (7, "e"), (9, "f")] {
            b.insert(seq, m);
        }
        assert_eq!(b.len(), 5);
        assert_eq!(b.first(), Some(3));
        assert_eq!(
            b.values().copied().collect::<Vec<_>>(),
            ["d", "a", "c", "e", "f"]
        );
        assert_eq!(b.pop_first(), Some("d"));
        assert_eq!(b.first(), Some(5));
        while b.pop_first().is_some() {}
        assert!(b.is_empty());
        assert_eq!(b.first(), None);
    }
}
