//! Saga participants: handle a command idempotently (through the inbox) and reply with
//! success or a typed failure (through the outbox) — all in the participant's own
//! transaction, so the effect, the "handled" record, the stored reply and the reply itself
//! commit together. A command delivered again (the orchestrator's resend after a timeout,
//! a redelivery after a crash) is not applied again: it is answered again with the stored
//! reply, so a reply that never arrived is not waited for forever.

use std::sync::Arc;

use futures::future::BoxFuture;
use keel_messaging::{
    Delivery, Handler, HandlerError, Inbox, Message, Outbox, Processed, headers, reply,
};
use keel_store::{Store, StoreError, Tx, now_ms};
use serde_json::Value;

use crate::{orchestrator::REPLY_OUTCOME, schema};

/// What a command handler can answer besides success.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    /// A business failure the saga must know about (e.g. `OrderLimitExceeded`): replied as
    /// a FAILURE with this type and payload. Whatever the handler wrote is rolled back (it
    /// runs inside a savepoint); the inbox record and the reply commit.
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
///
/// `inbox` and `outbox` must use the same store. The first delivery creates the helper's
/// table (`keel_saga_replies`, the reply of every handled command) if needed.
pub fn command_handler(
    inbox: Inbox,
    outbox: Outbox,
    f: impl for<'a> Fn(&'a mut Tx, &'a Message) -> BoxFuture<'a, Result<Value, CommandError>>
    + Send
    + Sync
    + 'static,
) -> Arc<dyn Handler> {
    Arc::new(CommandHandler {
        inbox,
        outbox,
        f: Arc::new(f),
        migrated: tokio::sync::OnceCell::new(),
    })
}

/// Forgets stored replies older than `age_ms` (prune the inbox with the same age: a
/// command whose inbox record is gone is applied again anyway).
pub async fn prune_replies(store: &Store, age_ms: i64) -> Result<u64, StoreError> {
    Ok(store
        .write(
            sqlx::query("DELETE FROM keel_saga_replies WHERE created_at < $1")
                .bind(now_ms() - age_ms),
        )
        .await?
        .rows_affected())
}

struct CommandHandler {
    inbox: Inbox,
    outbox: Outbox,
    f: CommandFn,
    migrated: tokio::sync::OnceCell<()>,
}

const SAVEPOINT: &str = "SAVEPOINT keel_saga_command";

impl CommandHandler {
    /// Applies a command seen for the first time (inside the inbox transaction).
    async fn apply(&self, mut tx: Tx, command: &Message) -> Result<Tx, HandlerError> {
        sqlx::query(SAVEPOINT)
            .execute(tx.conn())
            .await
            .map_err(HandlerError::retry)?;
        let (outcome, reply_type, payload) = match (self.f)(&mut tx, command).await {
            Ok(v) => ("SUCCESS", None, v),
            Err(CommandError::Failure {
                reply_type,
                payload,
            }) => {
                // A refused command leaves nothing behind but its inbox record and reply.
                sqlx::query("ROLLBACK TO SAVEPOINT keel_saga_command")
                    .execute(tx.conn())
                    .await
                    .map_err(HandlerError::retry)?;
                ("FAILURE", Some(reply_type), payload)
            }
            // The whole transaction (inbox record included) is dropped: redelivered later.
            Err(CommandError::Retry(e)) => return Err(HandlerError::Retry(e)),
        };
        sqlx::query("RELEASE SAVEPOINT keel_saga_command")
            .execute(tx.conn())
            .await
            .map_err(HandlerError::retry)?;
        if let Some(mut r) = reply(command, reply_type.as_deref(), payload) {
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
            let stored = serde_json::to_string(&r).map_err(HandlerError::retry)?;
            sqlx::query(
                "INSERT INTO keel_saga_replies (destination, command_id, reply, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (destination, command_id) DO NOTHING",
            )
            .bind(&command.destination)
            .bind(&command.id)
            .bind(stored)
            .bind(now_ms())
            .execute(tx.conn())
            .await
            .map_err(HandlerError::retry)?;
            self.outbox
                .send(&mut tx, &r)
                .await
                .map_err(HandlerError::retry)?;
        }
        Ok(tx)
    }

    /// Answers a command handled before with the reply it got then (same message id: the
    /// orchestrator's inbox drops it if the first one arrived).
    async fn answer_again(&self, command: &Message) -> Result<(), HandlerError> {
        let mut tx = self
            .outbox
            .store()
            .begin()
            .await
            .map_err(HandlerError::retry)?;
        let stored: Option<(String,)> = sqlx::query_as(
            "SELECT reply FROM keel_saga_replies WHERE destination = $1 AND command_id = $2",
        )
        .bind(&command.destination)
        .bind(&command.id)
        .fetch_optional(tx.conn())
        .await
        .map_err(HandlerError::retry)?;
        let Some((stored,)) = stored else {
            // Handled without a reply (no reply-to), or the reply was pruned.
            let _ = tx.rollback().await;
            return Ok(());
        };
        let r: Message = serde_json::from_str(&stored).map_err(HandlerError::reject)?;
        self.outbox
            .send(&mut tx, &r)
            .await
            .map_err(HandlerError::retry)?;
        tx.commit().await.map_err(HandlerError::retry)?;
        tracing::debug!(command_id = %command.id, reply_id = %r.id, "duplicate command answered again");
        Ok(())
    }
}

impl Handler for CommandHandler {
    fn handle(&self, delivery: Delivery) -> BoxFuture<'_, Result<(), HandlerError>> {
        Box::pin(async move {
            self.migrated
                .get_or_try_init(|| {
                    self.outbox
                        .store()
                        .migrate("keel_saga_participant", schema::PARTICIPANT_MIGRATIONS)
                })
                .await
                .map_err(HandlerError::retry)?;
            let command = delivery.message;
            let processed = self
                .inbox
                .process(&command.id, |tx| self.apply(tx, &command))
                .await?;
            if processed == Processed::Duplicate {
                self.answer_again(&command).await?;
            }
            Ok(())
        })
    }
}
