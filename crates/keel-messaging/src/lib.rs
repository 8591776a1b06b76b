//! Keel messaging without backend dependencies: the message envelope, the [`Bus`] trait
//! with its delivery contract (consumer groups, per-key order, redelivery with backoff,
//! dead letters), the transactional [`Outbox`] and the idempotent [`Inbox`] — the default
//! way to consume is [`Inbox::subscribe`]; plain [`Bus::subscribe`] is the raw at-least-once
//! API. [`trace`] carries the W3C trace context on messages.
//!
//! Backends live in their own crates (`keel-bus-sqlite`, `keel-bus-nats`); see
//! `docs/messaging.md`.

pub mod bus;
pub mod inbox;
pub mod message;
pub mod outbox;
pub mod reply;
pub mod trace;

pub use bus::{
    AfterFailure, Bus, BusError, Consumer, Delivery, Handler, HandlerError, Subscription,
    handle_catching_panics, handler_fn, validate_name,
};
pub use inbox::{Inbox, Processed};
pub use message::{Message, headers, new_id};
pub use outbox::{Outbox, RelayError};
pub use reply::{Replies, RequestError, reply};
