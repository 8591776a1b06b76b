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

use keel_resilience::Deadline;
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
        /// The budget: the `timeout` asked for, or less when the task's deadline was nearer.
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

    /// Publishes `command` and waits for its reply until its deadline: the nearer of now +
    /// `timeout` and the deadline of the call this task is running
    /// ([`Deadline::current`], set by keel-resilience's `DeadlineLayer` or `Deadline::scope`).
    /// The deadline travels in `keel-deadline-ms` (time left) and `keel-deadline-unix-ms`
    /// (absolute), written by [`Deadline::to_message_headers`], so the handler can read it with
    /// `Deadline::from_message_headers` and give up early. When no time is left the command is
    /// not published.
    pub async fn request(
        &self,
        command: Message,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        let now = tokio::time::Instant::now();
        let own = now
            .checked_add(timeout)
            .map_or_else(|| Deadline::after(timeout), Deadline::at);
        let deadline = Deadline::current().map_or(own, |current| current.min(own));
        let budget = deadline.remaining_at(now);
        let timed_out = |command: &Message| RequestError::Timeout {
            command_type: command.message_type().unwrap_or("command").to_owned(),
            timeout: budget,
        };
        let mut command = self.prepare(command);
        if budget.is_zero() {
            return Err(timed_out(&command));
        }
        deadline.to_message_headers(&mut command.headers);
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
        match tokio::time::timeout_at(deadline.instant(), rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                Err(timed_out(&command))
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

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;
    use keel_resilience::deadline::DEADLINE_UNIX_MS_HEADER;
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::bus::Handler;

    /// Keeps what is published and the reply handler, so a test can answer by hand.
    #[derive(Default)]
    struct Loopback {
        sent: Mutex<Vec<Message>>,
        handler: Mutex<Option<Arc<dyn Handler>>>,
    }

    impl std::fmt::Debug for Loopback {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Loopback").finish_non_exhaustive()
        }
    }

    impl Loopback {
        fn sent(&self) -> Vec<Message> {
            self.sent.lock().unwrap().clone()
        }
    }

    impl Bus for Loopback {
        fn publish<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), BusError>> {
            self.sent.lock().unwrap().push(message.clone());
            Box::pin(async { Ok(()) })
        }

        fn subscribe(
            &self,
            _subscription: Subscription,
            handler: Arc<dyn Handler>,
        ) -> BoxFuture<'_, Result<Consumer, BusError>> {
            *self.handler.lock().unwrap() = Some(handler);
            Box::pin(async {
                Ok(Consumer::new(
                    CancellationToken::new(),
                    tokio::spawn(async {}),
                ))
            })
        }

        fn backend(&self) -> &'static str {
            "loopback"
        }
    }

    fn command() -> Message {
        Message::new("kitchen.commands", serde_json::json!({}))
            .with_header(headers::TYPE, "CreateTicket")
    }

    fn budget_of(result: Result<Message, RequestError>) -> Duration {
        match result {
            Err(RequestError::Timeout { timeout, .. }) => timeout,
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn request_uses_the_nearer_of_its_timeout_and_the_task_deadline() {
        let bus = Arc::new(Loopback::default());
        let replies = Replies::start(bus.clone(), "orders").await.unwrap();

        // The task's deadline (300 ms) is nearer than the timeout (5 s): it bounds the wait
        // and is what the command carries, in keel-resilience's message codec.
        let started = Instant::now();
        let result = Deadline::after(Duration::from_millis(300))
            .scope(replies.request(command(), Duration::from_secs(5)))
            .await;
        assert_eq!(budget_of(result), Duration::from_millis(300));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        let sent = bus.sent().pop().unwrap();
        assert_eq!(sent.header(headers::DEADLINE_MS), Some("300"));
        assert!(sent.header(DEADLINE_UNIX_MS_HEADER).is_some());
        let now = Instant::now();
        let left = Deadline::from_message_headers(&sent.headers, now)
            .unwrap()
            .remaining_at(now);
        assert!(
            left <= Duration::from_millis(300) && left >= Duration::from_millis(290),
            "{left:?}"
        );

        // Without a task deadline, the timeout is the budget.
        let result = replies.request(command(), Duration::from_millis(50)).await;
        assert_eq!(budget_of(result), Duration::from_millis(50));
        assert_eq!(
            bus.sent().pop().unwrap().header(headers::DEADLINE_MS),
            Some("50")
        );

        // A nearer timeout wins over the task's deadline.
        let result = Deadline::after(Duration::from_secs(10))
            .scope(replies.request(command(), Duration::from_millis(20)))
            .await;
        assert_eq!(budget_of(result), Duration::from_millis(20));
        assert_eq!(
            bus.sent().pop().unwrap().header(headers::DEADLINE_MS),
            Some("20")
        );

        // No time left: the command is not published at all.
        let published = bus.sent().len();
        let expired = Deadline::after(Duration::from_millis(10));
        tokio::time::advance(Duration::from_millis(20)).await;
        let result = expired
            .scope(replies.request(command(), Duration::from_secs(5)))
            .await;
        assert_eq!(budget_of(result), Duration::ZERO);
        assert_eq!(bus.sent().len(), published);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_within_the_deadline_is_returned() {
        let bus = Arc::new(Loopback::default());
        let replies = Replies::start(bus.clone(), "orders").await.unwrap();
        let pending = tokio::spawn({
            let replies = replies.clone();
            Deadline::after(Duration::from_secs(1))
                .scope(async move { replies.request(command(), Duration::from_secs(5)).await })
        });
        while bus.sent().is_empty() {
            tokio::task::yield_now().await;
        }
        let answer = reply(&bus.sent()[0], None, serde_json::json!({"ok": true})).unwrap();
        let handler = bus.handler.lock().unwrap().clone().unwrap();
        handler
            .handle(Delivery {
                message: answer,
                attempt: 1,
                partition: 0,
            })
            .await
            .unwrap();
        let got = pending.await.unwrap().unwrap();
        assert_eq!(got.message_type(), Some("CreateTicketReply"));
    }
}
