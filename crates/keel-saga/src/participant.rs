//! Saga participants: handle a command idempotently (through the inbox) and reply with
//! success or a typed failure (through the outbox) — all in the participant's own
//! transaction, so the effect, the "handled" record and the reply commit together.

use std::sync::Arc;

use futures::future::BoxFuture;
use keel_messaging::{Delivery, Handler, HandlerError, Inbox, Message, Outbox, headers, reply};
use keel_store::Tx;
use serde_json::Value;

use crate::orchestrator::REPLY_OUTCOME;

/// What a command handler can answer besides success.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    /// A business failure the saga must know about (e.g. `OrderLimitExceeded`): replied as
    /// a FAILURE with this type and payload. The handler must not have written anything.
    #[error("{reply_type}")]
    Failure {
        /// The failure's reply type.
        reply_type: String,
        /// Details.
        payload: Value,
    },
    /// A transient problem (database down): no reply; the command is redelivered.
    #[error("{0}")]
    Retry(String),
}

impl CommandError {
    /// A typed business failure.
    pub fn failure(reply_type: &str, payload: Value) -> Self {
        CommandError::Failure {
            reply_type: reply_type.to_owned(),
            payload,
        }
    }
}

type CommandFn = Arc<
    dyn for<'a> Fn(&'a mut Tx, &'a Message) -> BoxFuture<'a, Result<Value, CommandError>>
        + Send
        + Sync,
>;

/// Turns a command handler into a bus handler with inbox deduplication and an outbox reply.
pub fn command_handler(
    inbox: Inbox,
    outbox: Outbox,
    f: impl for<'a> Fn(&'a mut Tx, &'a Message) -> BoxFuture<'a, Result<Value, CommandError>>
    + Send
    + Sync
    + 'static,
) -> Arc<dyn Handler> {
    let f: CommandFn = Arc::new(f);
    inbox.handler(move |mut tx, d: Delivery| {
        let (f, outbox) = (f.clone(), outbox.clone());
        async move {
            let command = d.message;
            let (outcome, reply_type, payload) = match f(&mut tx, &command).await {
                Ok(v) => ("SUCCESS", None, v),
                Err(CommandError::Failure {
                    reply_type,
                    payload,
                }) => ("FAILURE", Some(reply_type), payload),
                Err(CommandError::Retry(e)) => return Err(HandlerError::Retry(e)),
            };
            if let Some(mut r) = reply(&command, reply_type.as_deref(), payload) {
                r = r.with_header(REPLY_OUTCOME, outcome);
                if let Some(k) = &command.key {
                    r = r.with_key(k.clone());
                }
                if let Some(s) = command.header(crate::orchestrator::SAGA_ID) {
                    r = r.with_header(crate::orchestrator::SAGA_ID, s);
                }
                if let Some(t) = command.header(headers::TRACEPARENT) {
                    r = r.with_header(headers::TRACEPARENT, t);
                }
                outbox
                    .send(&mut tx, &r)
                    .await
                    .map_err(HandlerError::retry)?;
            }
            Ok(tx)
        }
    })
}
