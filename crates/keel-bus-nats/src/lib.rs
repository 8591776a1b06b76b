//! The NATS JetStream message bus: Keel's backend for more than one machine, behind the same
//! [`Bus`] trait and delivery contract as the embedded bus.
//!
//! Layout on the server (all names derive from [`Settings::prefix`], `keel` by default):
//!
//! - a message goes to the subject `<prefix>.<destination>.<partition>`, where the partition
//!   is [`Message::partition`] (FNV-1a of the key, 4 partitions by default — see
//!   [`Settings::partitions`]). The body is the whole envelope as JSON (id, key, headers,
//!   payload), and the `Nats-Msg-Id` header carries the message id, so the server drops a
//!   re-publish of the same id within the duplicate window (2 minutes by default) — a relay
//!   that crashed between publishing and deleting its rows does not duplicate anything;
//! - **one stream per partition of a destination**, created on demand (on first publish to it,
//!   or on subscribe), named `<prefix>_<destination with '.' as '_'>_<8 hex digits of its
//!   hash>_<partition>` and holding exactly that partition's subject;
//! - **one durable pull consumer per group on each partition's stream**, named after the
//!   group, allowing up to twice [`Settings::pull_batch`] unacknowledged messages;
//! - **one key-value bucket, `<prefix>_groups`**, where the members of each group heartbeat
//!   and hold a lease on each partition they consume. The live members split the partitions
//!   (the embedded bus's rule), so exactly one member pulls a partition at a time and can keep
//!   many of its messages in flight. Order does not rest on the leases alone: a member handles
//!   a partition's message only once every earlier one is acknowledged (or gone from the
//!   stream), so an overlap — a member wrongly presumed dead, a message delivered to a pull
//!   request its member abandoned — delays messages and never reorders them (`group.rs`,
//!   `consumer.rs`).
//!
//! Why a stream per partition rather than one stream with a filtered consumer per partition:
//! on nats-server 2.9 (the version Keel targets), filtered consumers that are created before
//! their messages arrive drain at a tenth of the speed or less (the server burns CPU locating
//! each partition's next message among the others); unfiltered consumers on small streams do
//! not. The price is more, smaller streams.
//!
//! A failing message is retried while it is held (the consumer sends "in progress" to the
//! server so the message stays assigned), which holds back its partition as the contract
//! requires; after `max_attempts` — or at once for [`keel_messaging::HandlerError::Reject`]
//! and for a body that is not an envelope — its dead-letter copy is published and the
//! original terminated. See `consumer.rs` for the details.

mod consumer;
mod group;

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::{
    connection::State,
    jetstream::{
        self,
        context::{PublishAckFuture, PublishErrorKind},
        kv,
        message::PublishMessage,
        stream,
    },
};
use futures::future::BoxFuture;
use keel_messaging::{
    Bus, BusError, Consumer, Handler, Message, Subscription, headers, validate_name,
};

/// Tunables of the NATS bus.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Prefix of every subject and stream name (default `keel`): 1–32 characters of
    /// `[A-Za-z0-9_-]`. Deployments (or tests) with different prefixes never meet.
    pub prefix: String,
    /// Partitions per destination (per-key order holds within one; each is a stream).
    /// Default 4: at most four members of a group share a destination's work. Each partition
    /// is a stream the broker feeds and a consumer it serves, and on a small machine 16 of
    /// them cost about a quarter of the throughput of 4 (`docs/messaging.md`); a deployment
    /// that needs more competing members sets `?partitions=N`. Every process using a
    /// destination must use the same value; a stream records the count it was created with,
    /// and a process with another count is refused.
    pub partitions: u32,
    /// How long the server waits for an acknowledgement before giving a message to another
    /// member (default 10 s). A live member extends it while it works on a message, so this is
    /// only the take-over time after a member died.
    pub ack_wait: Duration,
    /// Messages older than this are deleted (default 7 days).
    pub max_age: Duration,
    /// At most this many messages are kept per destination (default 1,000,000), spread
    /// evenly over its partitions' streams.
    pub max_messages: i64,
    /// Publishes of an id already seen within this window are dropped (default 2 min).
    pub duplicate_window: Duration,
    /// Stream replicas in a cluster (default 1).
    pub replicas: usize,
    /// Timeout of a publish acknowledgement or a JetStream API request (default 5 s).
    pub request_timeout: Duration,
    /// Messages fetched at once from a partition (default 256); the group's consumer on each
    /// partition allows twice as many unacknowledged. More means fewer round trips and more
    /// messages handed back when a partition moves to another member.
    pub pull_batch: usize,
    /// A member whose last heartbeat is older than this is dead, and its partitions go to the
    /// others (default 5 s). Members heartbeat five times per timeout.
    pub member_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            prefix: "keel".into(),
            partitions: 4,
            ack_wait: Duration::from_secs(10),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_messages: 1_000_000,
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            request_timeout: Duration::from_secs(5),
            pull_batch: 256,
            member_timeout: Duration::from_secs(5),
        }
    }
}

/// The settings a bus URL's query can carry, by name.
pub const URL_SETTINGS: &[&str] = &[
    "prefix",
    "partitions",
    "replicas",
    "ack_wait",
    "max_age",
    "max_messages",
    "duplicate_window",
    "request_timeout",
    "pull_batch",
    "member_timeout",
];

impl Settings {
    /// Splits a bus URL into the server list and these settings with the URL's query applied:
    /// `nats://host:4222?partitions=4&replicas=3&ack_wait=30s` (several servers
    /// comma-separated before the `?`). Durations take `250ms`, `30s`, `7d` or milliseconds.
    /// An unknown name, a repeated one or a bad value is an error naming it; the result is
    /// checked as [`NatsBus::connect_with`] does.
    pub fn from_url(url: &str, defaults: Settings) -> Result<(String, Settings), BusError> {
        let (servers, query) = url.split_once('?').unwrap_or((url, ""));
        let mut s = defaults;
        let mut seen: Vec<&str> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |why: String| {
                BusError::Invalid(format!(
                    "bus URL {}: setting `{name}`: {why}",
                    redact(servers)
                ))
            };
            if !URL_SETTINGS.contains(&name) {
                return Err(bad(format!(
                    "unknown; the settings are {}",
                    URL_SETTINGS.join(", ")
                )));
            }
            if seen.contains(&name) {
                return Err(bad("given more than once".into()));
            }
            seen.push(name);
            if value.is_empty() {
                return Err(bad("has no value".into()));
            }
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| bad(format!("{value:?} is not a whole number")))
            };
            let duration = || keel_duration::parse(value).map_err(bad);
            match name {
                "prefix" => s.prefix = value.to_owned(),
                "partitions" => {
                    s.partitions = u32::try_from(number()?).unwrap_or(u32::MAX);
                }
                "replicas" => s.replicas = usize::try_from(number()?).unwrap_or(usize::MAX),
                "ack_wait" => s.ack_wait = duration()?,
                "max_age" => s.max_age = duration()?,
                "max_messages" => s.max_messages = i64::try_from(number()?).unwrap_or(i64::MAX),
                "duplicate_window" => s.duplicate_window = duration()?,
                "request_timeout" => s.request_timeout = duration()?,
                "pull_batch" => s.pull_batch = usize::try_from(number()?).unwrap_or(usize::MAX),
                _ => s.member_timeout = duration()?,
            }
        }
        s.check().map_err(|e| match e {
            BusError::Invalid(why) => {
                BusError::Invalid(format!("bus URL {}: {why}", redact(servers)))
            }
            other => other,
        })?;
        Ok((servers.to_owned(), s))
    }

    /// Unacknowledged messages a group's consumer allows per partition: a buffer of fetched
    /// messages waiting behind the one in hand, plus a fetch's worth (twice the pull batch).
    pub fn max_ack_pending(&self) -> i64 {
        i64::try_from(2 * self.pull_batch.max(1)).unwrap_or(i64::MAX)
    }

    fn check(&self) -> Result<(), BusError> {
        let p = &self.prefix;
        if p.is_empty()
            || p.len() > 32
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(BusError::Invalid(format!(
                "prefix {p:?} must be 1 to 32 characters of letters, digits, '_' and '-'"
            )));
        }
        if self.partitions == 0 || self.partitions > 1024 {
            return Err(BusError::Invalid(
                "partitions must be between 1 and 1024".into(),
            ));
        }
        if self.ack_wait < Duration::from_millis(300) {
            return Err(BusError::Invalid("ack_wait must be at least 300 ms".into()));
        }
        if self.member_timeout < Duration::from_millis(500) {
            return Err(BusError::Invalid(
                "member_timeout must be at least 500 ms".into(),
            ));
        }
        if self.pull_batch == 0 || self.pull_batch > 10_000 {
            return Err(BusError::Invalid(
                "pull_batch must be between 1 and 10,000".into(),
            ));
        }
        if self.replicas == 0 || self.replicas > 5 {
            return Err(BusError::Invalid(
                "replicas must be between 1 and 5 (JetStream's limit)".into(),
            ));
        }
        if self.max_messages < 1 {
            return Err(BusError::Invalid("max_messages must be at least 1".into()));
        }
        if self.max_age.is_zero() {
            return Err(BusError::Invalid("max_age must be more than zero".into()));
        }
        if self.request_timeout < Duration::from_millis(100) {
            return Err(BusError::Invalid(
                "request_timeout must be at least 100 ms".into(),
            ));
        }
        Ok(())
    }
}

/// The NATS JetStream bus. Cheap to clone; clones share one connection.
#[derive(Debug, Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    url: String,
    client: async_nats::Client,
    js: jetstream::Context,
    settings: Settings,
    /// Partition streams known to exist (publish skips the check for them).
    streams: Mutex<HashSet<(String, u32)>>,
    /// The groups bucket, once opened.
    groups: tokio::sync::Mutex<Option<kv::Store>>,
}

impl NatsBus {
    /// Connects to the server at `url` (`nats://host:4222`; several servers comma-separated),
    /// with the default settings and those in the URL's query (see [`Settings::from_url`]).
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        Self::connect_with(url, Settings::default()).await
    }

    /// Connects with explicit settings; those in the URL's query replace them.
    pub async fn connect_with(url: &str, settings: Settings) -> Result<Self, BusError> {
        let (url, settings) = Settings::from_url(url, settings)?;
        let url = url.as_str();
        let shown = redact(url);
        let client = async_nats::ConnectOptions::new()
            .name("keel-bus")
            .connection_timeout(settings.request_timeout)
            .request_timeout(Some(settings.request_timeout))
            .connect(url)
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot connect to {shown}: {e}")))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(settings.request_timeout)
            .build(client.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                url: shown,
                client,
                js,
                settings,
                streams: Mutex::default(),
                groups: tokio::sync::Mutex::default(),
            }),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The JetStream context (for inspection, tests and operations tools).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// The stream holding `partition` of `destination`.
    pub fn stream_name(&self, destination: &str, partition: u32) -> String {
        format!(
            "{}_{}_{partition}",
            self.inner.settings.prefix,
            token(destination)
        )
    }

    /// The subject of `partition` of `destination`.
    pub fn subject(&self, destination: &str, partition: u32) -> String {
        format!("{}.{destination}.{partition}", self.inner.settings.prefix)
    }

    /// The durable consumer of `group` (on each partition's stream).
    pub fn consumer_name(&self, group: &str) -> String {
        token(group)
    }

    /// The key-value bucket where groups keep their members and partition leases.
    pub fn groups_bucket(&self) -> String {
        format!("{}_groups", self.inner.settings.prefix)
    }

    /// The prefix of `group`'s keys on `destination` in the groups bucket: members heartbeat
    /// at `<prefix>m.<member id>`, leases are `<prefix>p.<partition>` holding the owner's id
    /// (empty when given back). For inspection and operations tools.
    pub fn group_keys(&self, destination: &str, group: &str) -> String {
        format!("{}.{}.", token(destination), token(group))
    }

    /// Opens (creating if needed) the groups bucket.
    pub(crate) async fn groups(&self) -> Result<kv::Store, BusError> {
        let mut slot = self.inner.groups.lock().await;
        if let Some(store) = slot.as_ref() {
            return Ok(store.clone());
        }
        let bucket = self.groups_bucket();
        let js = &self.inner.js;
        let store = match js.get_key_value(&bucket).await {
            Ok(store) => store,
            Err(_) => {
                // The bucket's stream as async-nats would lay it out; made by hand because its
                // `create_key_value` cannot read nats-server 2.9's account information.
                let config = stream::Config {
                    name: format!("KV_{bucket}"),
                    description: Some("keel bus: group members and partition leases".into()),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: 1,
                    // Keys of members that died linger until then; live ones are rewritten.
                    max_age: Duration::from_secs(24 * 3600),
                    storage: stream::StorageType::File,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: stream::DiscardPolicy::New,
                    num_replicas: self.inner.settings.replicas,
                    ..Default::default()
                };
                if let Err(create) = js.create_stream(config).await {
                    // Another process may have created it a moment ago.
                    if js.get_stream(format!("KV_{bucket}")).await.is_err() {
                        return Err(
                            self.unavailable(format!("cannot create bucket {bucket}: {create}"))
                        );
                    }
                }
                js.get_key_value(&bucket)
                    .await
                    .map_err(|e| self.unavailable(format!("bucket {bucket}: {e}")))?
            }
        };
        *slot = Some(store.clone());
        Ok(store)
    }

    /// Deletes every stream under this bus's prefix (all destinations, messages, consumer
    /// positions and the groups bucket) and returns how many. For tests and benchmarks; never
    /// called by Keel itself.
    pub async fn delete_all_streams(&self) -> Result<usize, BusError> {
        use futures::TryStreamExt;
        let mine = format!("{}_", self.inner.settings.prefix);
        let bucket = format!("KV_{}", self.groups_bucket());
        let names: Vec<String> = self
            .inner
            .js
            .stream_names()
            .try_collect()
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut n = 0;
        for name in names
            .iter()
            .filter(|s| s.starts_with(&mine) || **s == bucket)
        {
            self.inner
                .js
                .delete_stream(name)
                .await
                .map_err(|e| self.unavailable(e))?;
            n += 1;
        }
        self.inner
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        *self.inner.groups.lock().await = None;
        Ok(n)
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> BusError {
        BusError::Unavailable(format!("{}: {e}", self.inner.url))
    }

    fn stream_config(&self, destination: &str, partition: u32) -> stream::Config {
        let s = &self.inner.settings;
        let per_partition =
            (s.max_messages + i64::from(s.partitions) - 1) / i64::from(s.partitions);
        stream::Config {
            name: self.stream_name(destination, partition),
            description: Some(description(destination, partition, s.partitions)),
            subjects: vec![self.subject(destination, partition)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::Old,
            max_age: s.max_age,
            max_messages: per_partition.max(1),
            duplicate_window: s.duplicate_window,
            num_replicas: s.replicas,
            ..Default::default()
        }
    }

    /// Makes sure the stream of `partition` of `destination` exists (creating it if needed)
    /// and was made with this process's partition count; returns a handle to it.
    pub(crate) async fn ensure_stream(
        &self,
        destination: &str,
        partition: u32,
    ) -> Result<jetstream::stream::Stream, BusError> {
        let name = self.stream_name(destination, partition);
        let js = &self.inner.js;
        let stream = match js.get_stream(&name).await {
            Ok(s) => s,
            Err(e) if is_not_found(&e) => {
                match js
                    .create_stream(self.stream_config(destination, partition))
                    .await
                {
                    Ok(s) => s,
                    // Another process may have created it a moment ago.
                    Err(create) => js.get_stream(&name).await.map_err(|_| {
                        self.unavailable(format!("cannot create stream {name}: {create}"))
                    })?,
                }
            }
            Err(e) => return Err(self.unavailable(format!("stream {name}: {e}"))),
        };
        let want = self.inner.settings.partitions;
        if let Some(have) = stream
            .cached_info()
            .config
            .description
            .as_deref()
            .and_then(partitions_in)
            && have != want
        {
            return Err(BusError::Invalid(format!(
                "destination {destination} was created with {have} partitions; this process \
                 uses {want} (every process must use the same count)"
            )));
        }
        self.inner
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((destination.to_owned(), partition));
        Ok(stream)
    }

    async fn ensure_known(&self, destination: &str, partition: u32) -> Result<(), BusError> {
        let known = self
            .inner
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(destination.to_owned(), partition));
        if !known {
            self.ensure_stream(destination, partition).await?;
        }
        Ok(())
    }

    fn forget(&self, destination: &str, partition: u32) {
        self.inner
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(destination.to_owned(), partition));
    }

    /// Publishes `messages` in order, pipelined, and waits for the server's acknowledgements.
    /// Returns how many were stored before the first failure. `dedup` overrides the
    /// `Nats-Msg-Id` of every message (dead-letter copies: one per group).
    pub(crate) async fn send(
        &self,
        messages: &[Message],
        dedup: Option<&str>,
    ) -> (usize, Option<BusError>) {
        let mut done = 0;
        let mut error = None;
        // One retry when a stream vanished under us (deleted, or a server that lost its state).
        for round in 0..2 {
            let (n, err) = self.send_once(&messages[done..], dedup).await;
            done += n;
            match err {
                None => break,
                Some(Failure::StreamMissing(d, p)) if round == 0 => self.forget(&d, p),
                Some(f) => {
                    error = Some(f.into_error(self));
                    break;
                }
            }
        }
        let published = &messages[..done];
        let mut per_dest: Vec<&str> = published.iter().map(|m| m.destination.as_str()).collect();
        per_dest.sort_unstable();
        per_dest.dedup();
        for d in per_dest {
            metrics::counter!("keel_messaging_published_total", "destination" => d.to_owned(), "backend" => "nats")
                .increment(published.iter().filter(|m| m.destination == d).count() as u64);
        }
        (done, error)
    }

    async fn send_once(
        &self,
        messages: &[Message],
        dedup: Option<&str>,
    ) -> (usize, Option<Failure>) {
        if self.inner.client.connection_state() != State::Connected {
            return (
                0,
                Some(Failure::Other(BusError::Unavailable(format!(
                    "{}: not connected",
                    self.inner.url
                )))),
            );
        }
        // Everything before the first invalid message is published, as the contract says.
        if let Some((i, e)) = messages
            .iter()
            .enumerate()
            .find_map(|(i, m)| validate_name(&m.destination).err().map(|e| (i, e)))
        {
            return match Box::pin(self.send_once(&messages[..i], dedup)).await {
                (n, Some(f)) => (n, Some(f)),
                (n, None) => (n, Some(Failure::Other(BusError::Invalid(e)))),
            };
        }
        let parts = self.inner.settings.partitions;
        let mut targets: Vec<(&str, u32)> = messages
            .iter()
            .map(|m| (m.destination.as_str(), m.partition(parts)))
            .collect();
        targets.sort_unstable();
        targets.dedup();
        for (d, p) in targets {
            if let Err(e) = self.ensure_known(d, p).await {
                return (0, Some(Failure::Other(e)));
            }
        }
        // Pipelined: send everything, then collect the acknowledgements in order. Bounded,
        // because the client allows only so many unacknowledged publishes at once.
        let mut acks: VecDeque<(PublishAckFuture, &Message)> =
            VecDeque::with_capacity(messages.len().min(MAX_IN_FLIGHT));
        let mut stored = 0;
        let mut failure = None;
        for m in messages {
            // A message published from a traced task joins its trace (unless it has one).
            let mut traced = None;
            if !m.headers.contains_key(headers::TRACEPARENT)
                && keel_messaging::trace::current().is_some()
            {
                let mut copy = m.clone();
                keel_messaging::trace::inject(&mut copy.headers);
                traced = Some(copy);
            }
            let body = match serde_json::to_vec(traced.as_ref().unwrap_or(m)) {
                Ok(b) => b,
                Err(e) => {
                    failure = Some(Failure::Other(BusError::Invalid(format!(
                        "message {}: {e}",
                        m.id
                    ))));
                    break;
                }
            };
            let publish = PublishMessage::build()
                .payload(body.into())
                .message_id(dedup.unwrap_or(&m.id));
            let partition = m.partition(parts);
            match self
                .inner
                .js
                .send_publish(self.subject(&m.destination, partition), publish)
                .await
            {
                Ok(ack) => acks.push_back((ack, m)),
                Err(e) => {
                    failure = Some(Failure::from_publish(m, parts, &e, self));
                    break;
                }
            }
            if acks.len() >= MAX_IN_FLIGHT
                && let Some((ack, m)) = acks.pop_front()
            {
                if let Err(e) = ack.await {
                    return (stored, Some(Failure::from_publish(m, parts, &e, self)));
                }
                stored += 1;
            }
        }
        while let Some((ack, m)) = acks.pop_front() {
            // A duplicate (`ack.duplicate`) was stored before: that counts as stored.
            if let Err(e) = ack.await {
                return (stored, Some(Failure::from_publish(m, parts, &e, self)));
            }
            stored += 1;
        }
        (stored, failure)
    }
}

/// Publishes sent but not yet acknowledged, at most.
const MAX_IN_FLIGHT: usize = 1_000;

enum Failure {
    StreamMissing(String, u32),
    Other(BusError),
}

impl Failure {
    fn from_publish(
        m: &Message,
        partitions: u32,
        e: &async_nats::jetstream::context::PublishError,
        bus: &NatsBus,
    ) -> Self {
        let destination = &m.destination;
        let partition = m.partition(partitions);
        match e.kind() {
            PublishErrorKind::StreamNotFound => {
                Failure::StreamMissing(destination.to_owned(), partition)
            }
            PublishErrorKind::MaxPayloadExceeded => Failure::Other(BusError::Invalid(format!(
                "message to {destination} is too large: {e}"
            ))),
            _ => Failure::Other(bus.unavailable(format!("publish to {destination}: {e}"))),
        }
    }

    fn into_error(self, bus: &NatsBus) -> BusError {
        match self {
            Failure::StreamMissing(d, p) => {
                bus.unavailable(format!("no stream for partition {p} of {d}"))
            }
            Failure::Other(e) => e,
        }
    }
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    match e.kind() {
        jetstream::context::GetStreamErrorKind::JetStream(j) => j.code() == 404,
        _ => false,
    }
}

/// A destination or group name as a stream, consumer or key name token: '.' is not allowed there,
/// so it becomes '_', and a hash of the original keeps `a.b` and `a_b` apart.
pub(crate) fn token(name: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{}_{h:08x}", name.replace('.', "_"))
}

fn description(destination: &str, partition: u32, partitions: u32) -> String {
    format!("keel bus destination {destination}, partition {partition} of {partitions}")
}

/// The partition count recorded in a stream description written by [`description`].
fn partitions_in(description: &str) -> Option<u32> {
    let inner = description.strip_prefix("keel bus destination ")?;
    let (_, count) = inner.rsplit_once(" of ")?;
    count.parse().ok()
}

/// `url` (one server or several, comma-separated) without a password or token, for logs and
/// reports: `nats://u:secret@h:4222` → `nats://***@h:4222`.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}://***@{}", &u[..s], &u[at + 1..]),
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Bus for NatsBus {
    fn publish<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            match self.send(std::slice::from_ref(message), None).await {
                (_, Some(e)) => Err(e),
                (_, None) => Ok(()),
            }
        })
    }

    fn publish_all<'a>(
        &'a self,
        messages: &'a [Message],
    ) -> BoxFuture<'a, (usize, Option<BusError>)> {
        Box::pin(self.send(messages, None))
    }

    fn subscribe(
        &self,
        subscription: Subscription,
        handler: Arc<dyn Handler>,
    ) -> BoxFuture<'_, Result<Consumer, BusError>> {
        Box::pin(async move {
            subscription.validate()?;
            consumer::start(self.clone(), subscription, handler).await
        })
    }

    fn backend(&self) -> &'static str {
        "nats"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_valid_names_and_keep_similar_names_apart() {
        let a = token("order.events");
        assert!(a.starts_with("order_events_"), "{a}");
        assert!(!a.contains('.'));
        assert_ne!(token("a.b"), token("a_b"));
        assert_eq!(token("a.b"), token("a.b"));
    }

    #[test]
    fn the_partition_count_round_trips_through_the_description() {
        assert_eq!(partitions_in(&description("order.events", 3, 16)), Some(16));
        assert_eq!(partitions_in(&description("x of 3", 0, 4)), Some(4));
        assert_eq!(partitions_in("made by hand"), None);
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redact("nats://u:secret@h:4222"), "nats://***@h:4222");
        assert_eq!(
            redact("nats://h:4222,nats://t@g:1"),
            "nats://h:4222,nats://***@g:1"
        );
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
    }

    #[test]
    fn settings_come_from_the_url_query() {
        let d = Settings::default();
        let (servers, s) = Settings::from_url("nats://h:4222", d.clone()).unwrap();
        assert_eq!((servers.as_str(), &s), ("nats://h:4222", &d));
        let (servers, s) = Settings::from_url(
            "nats://u:pw@a:4222,nats://b:4222?partitions=4&replicas=3&ack_wait=30s&max_age=2d\
             &max_messages=5000&duplicate_window=5m&request_timeout=2500&pull_batch=64\
             &member_timeout=1.5s&prefix=shop",
            d.clone(),
        )
        .unwrap();
        assert_eq!(servers, "nats://u:pw@a:4222,nats://b:4222");
        let want = Settings {
            prefix: "shop".into(),
            partitions: 4,
            ack_wait: Duration::from_secs(30),
            max_age: Duration::from_secs(2 * 86_400),
            max_messages: 5000,
            duplicate_window: Duration::from_secs(300),
            replicas: 3,
            request_timeout: Duration::from_millis(2500),
            pull_batch: 64,
            member_timeout: Duration::from_millis(1500),
        };
        assert_eq!(s, want);
        // An empty query, or a trailing '&', changes nothing.
        assert_eq!(Settings::from_url("nats://h?", d.clone()).unwrap().1, d);
        assert_eq!(
            Settings::from_url("nats://h?partitions=2&", d.clone())
                .unwrap()
                .1
                .partitions,
            2
        );
    }

    #[test]
    fn a_bad_url_setting_is_named_and_the_password_is_not_shown() {
        let d = Settings::default();
        let err = |url: &str| match Settings::from_url(url, d.clone()) {
            Err(BusError::Invalid(m)) => m,
            other => panic!("{url}: {other:?}"),
        };
        let e = err("nats://u:secret@h:4222?partitons=4");
        assert!(e.contains("`partitons`") && e.contains("unknown"), "{e}");
        assert!(e.contains("partitions, replicas"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        assert!(err("nats://h?partitions=four").contains("\"four\" is not a whole number"));
        assert!(err("nats://h?partitions=0").contains("partitions must be between 1 and 1024"));
        assert!(err("nats://h?partitions=99999999999").contains("partitions must be"));
        assert!(err("nats://h?ack_wait=soon").contains("`ack_wait`"));
        assert!(err("nats://h?ack_wait=10ms").contains("ack_wait must be at least 300 ms"));
        assert!(err("nats://h?replicas=7").contains("replicas must be between 1 and 5"));
        assert!(err("nats://h?replicas=1&replicas=3").contains("more than once"));
        assert!(err("nats://h?prefix=").contains("has no value"));
        assert!(err("nats://h?prefix=a.b").contains("prefix \"a.b\""));
        assert!(err("nats://h?max_messages=0").contains("max_messages must be"));
        assert!(err("nats://h?pull_batch=-1").contains("`pull_batch`"));
    }

    #[test]
    fn settings_are_checked() {
        assert!(Settings::default().check().is_ok());
        for bad in ["", "a.b", "a b", &"x".repeat(33)] {
            let s = Settings {
                prefix: bad.to_owned(),
                ..Settings::default()
            };
            assert!(s.check().is_err(), "{bad:?}");
        }
        let s = Settings {
            partitions: 0,
            ..Settings::default()
        };
        assert!(s.check().is_err());
    }
}
