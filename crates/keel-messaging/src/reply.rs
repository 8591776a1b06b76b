//! Commands with replies over the bus: a command carries `reply-to` (this instance's reply
//! destination) and a `correlation-id`; the handler answers with [`reply`]; the requester's
//! [`Replies`] matches the answer to the waiting call. For commands that must survive a
//! crash (saga steps), send them through the outbox with [`Replies::prepare`] and handle the
//! replies as ordinary messages instead of awaiting them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::oneshot;

use crate::{
    bus::{Bus, BusError, Consumer, Delivery, Subscription, handler_fn},
    message::{Message, headers, new_id},
};

/// A request that got no reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The command could not be published.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// No reply within the time budget.
    #[error("no reply to {command_type} within {timeout:?}")]
    Timeout {
        /// The command's type header.
        command_type: String,
        /// The budget.
        timeout: Duration,
    },
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Message>>>>;

/// This instance's reply channel. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Replies {
    bus: Arc<dyn Bus>,
    reply_to: String,
    pending: Pending,
    _consumer: Arc<Consumer>,
}

impl Replies {
    /// Subscribes to a reply destination unique to this instance of `service`.
    pub async fn start(bus: Arc<dyn Bus>, service: &str) -> Result<Self, BusError> {
        let instance = new_id();
        let reply_to = format!("{service}.replies.{}", &instance[..16]);
        let pending: Pending = Arc::default();
        let p = pending.clone();
        let consumer = bus
            .subscribe(
                Subscription::new(reply_to.clone(), instance),
                handler_fn(move |d: Delivery| {
                    let p = p.clone();
                    async move {
                        if let Some(id) = d.message.correlation_id() {
                            let waiter = p.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
                            if let Some(tx) = waiter {
                                let _ = tx.send(d.message);
                            }
                        }
                        Ok(()) // a late or unknown reply is dropped, not retried
                    }
                }),
            )
            .await?;
        Ok(Self {
            bus,
            reply_to,
            pending,
            _consumer: Arc::new(consumer),
        })
    }

    /// The reply destination.
    pub fn reply_to(&self) -> &str {
        &self.reply_to
    }

    /// Sets `reply-to` and a `correlation-id` (a new one unless the command has one).
    pub fn prepare(&self, mut command: Message) -> Message {
        command
            .headers
            .insert(headers::REPLY_TO.to_owned(), self.reply_to.clone());
        command
            .headers
            .entry(headers::CORRELATION_ID.to_owned())
            .or_insert_with(new_id);
        command
    }

    /// Publishes `command` and waits up to `timeout` for its reply. The remaining budget
    /// travels in the `keel-deadline-ms` header so the handler can give up early.
    pub async fn request(
        &self,
        command: Message,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        let command = self
            .prepare(command)
            .with_header(headers::DEADLINE_MS, timeout.as_millis().to_string());
        let id = command.correlation_id().unwrap_or_default().to_owned();
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), tx);
        if let Err(e) = self.bus.publish(&command).await {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            return Err(e.into());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                Err(RequestError::Timeout {
                    command_type: command.message_type().unwrap_or("command").to_owned(),
                    timeout,
                })
            }
        }
    }
}

/// The reply to `command`: addressed to its `reply-to`, with its `correlation-id`, typed
/// `<CommandType>Reply` unless `type_name` says otherwise. `None` when the command asked for
/// no reply.
pub fn reply(
    command: &Message,
    type_name: Option<&str>,
    payload: serde_json::Value,
) -> Option<Message> {
    let to = command.header(headers::REPLY_TO)?;
    let mut m = Message::new(to, payload);
    if let Some(c) = command.correlation_id() {
        m = m.with_header(headers::CORRELATION_ID, c);
    }
    let t = match type_name {
        Some(t) => t.to_owned(),
        None => format!("{}Reply", command.message_type().unwrap_or("Command")),
    };
    Some(m.with_header(headers::TYPE, t))
}
