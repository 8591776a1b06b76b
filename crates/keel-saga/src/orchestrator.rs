//! The orchestrator: persists saga instances, sends commands through the outbox, consumes
//! replies through the inbox, and moves each saga forward — or backward, compensating —
//! one transaction per event. Nothing lives only in memory: a restart resumes every saga
//! from its row (replies wait in the bus, commands in the outbox, timeouts in `deadline`).

use std::{sync::Arc, time::Duration};

use keel_messaging::{
    Bus, Consumer, Delivery, HandlerError, Inbox, Message, Outbox, Subscription, headers,
};
use keel_store::{Backend, Store, Tx, now_ms};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::{
    definition::{Action, Reply, SagaData, SagaDefinition, StepKind},
    schema,
};

/// Header carrying the saga id on commands and replies.
pub const SAGA_ID: &str = "keel-saga-id";
/// Header carrying the saga type on commands.
pub const SAGA_TYPE: &str = "keel-saga-type";
/// Header saying whether a reply reports success (`SUCCESS`) or failure (`FAILURE`).
pub const REPLY_OUTCOME: &str = "keel-reply-outcome";

/// Compensations are retried this many times before the saga is marked FAILED.
const MAX_COMPENSATION_ATTEMPTS: u32 = 20;

/// Saga errors.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// The definition breaks the rules.
    #[error(transparent)]
    Definition(#[from] crate::definition::DefinitionError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] keel_store::StoreError),
    /// The bus failed.
    #[error(transparent)]
    Bus(#[from] keel_messaging::BusError),
    /// Another saga holds the resource.
    #[error("resource {resource} is locked by saga {holder}")]
    Locked {
        /// The resource.
        resource: String,
        /// The saga holding it.
        holder: String,
    },
    /// The saga data could not be (de)serialized.
    #[error("saga data: {0}")]
    Data(String),
}

impl From<sqlx::Error> for SagaError {
    fn from(e: sqlx::Error) -> Self {
        SagaError::Store(e.into())
    }
}

/// The lifecycle state of a saga instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaState {
    /// Moving forward.
    Running,
    /// Undoing completed steps in reverse.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// A step failed and every completed compensatable step was compensated.
    Compensated,
    /// A compensation kept failing: needs an operator.
    Failed,
}

impl SagaState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Running => "RUNNING",
            SagaState::Compensating => "COMPENSATING",
            SagaState::Completed => "COMPLETED",
            SagaState::Compensated => "COMPENSATED",
            SagaState::Failed => "FAILED",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RUNNING" => SagaState::Running,
            "COMPENSATING" => SagaState::Compensating,
            "COMPLETED" => SagaState::Completed,
            "COMPENSATED" => SagaState::Compensated,
            "FAILED" => SagaState::Failed,
            _ => return None,
        })
    }

    /// Whether the saga has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SagaState::Completed | SagaState::Compensated | SagaState::Failed
        )
    }
}

struct Instance<D> {
    id: String,
    state: SagaState,
    step: usize,
    attempt: u32,
    /// The current step's send round (see [`command_id`]).
    round: u32,
    completed: Vec<usize>,
    data: D,
    awaiting: Option<String>,
    deadline: Option<i64>,
    error: Option<String>,
    created_at: i64,
}

/// Runs one saga definition. Cheap to clone.
pub struct Orchestrator<D> {
    inner: Arc<Inner<D>>,
}

impl<D> Clone for Orchestrator<D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<D> std::fmt::Debug for Orchestrator<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("saga", &self.inner.def.name)
            .field("reply_to", &self.inner.reply_to)
            .finish()
    }
}

struct Inner<D> {
    def: SagaDefinition<D>,
    store: Store,
    outbox: Outbox,
    reply_to: String,
    consumer_name: String,
    group: String,
    ended: tokio::sync::broadcast::Sender<(String, SagaState)>,
}

fn backoff(attempt: u32) -> i64 {
    (200_i64 << attempt.min(6)).min(10_000)
}

/// The message id of the command a saga sends for `step` in direction `dir` (`f`orward or
/// `c`ompensation) in send round `round`. Deterministic: a resend after a timeout carries
/// the same id as the first send, so the participant's inbox recognises a command it has
/// already applied (and the participant helper answers it again with the stored reply)
/// instead of applying it twice. The round changes only when the step is retried after a
/// failure — that is a new command.
pub fn command_id(saga_id: &str, step: usize, dir: char, round: u32) -> String {
    format!("{saga_id}-{step}-{dir}-{round}")
}

const SAVEPOINT: &str = "SAVEPOINT keel_saga_local";
const ROLLBACK_TO_SAVEPOINT: &str = "ROLLBACK TO SAVEPOINT keel_saga_local";
const RELEASE_SAVEPOINT: &str = "RELEASE SAVEPOINT keel_saga_local";

/// Runs a local step or compensation inside a savepoint of `tx`: when it returns `Err`,
/// its writes are rolled back (the rest of the transaction — the saga's own bookkeeping —
/// goes on) and the data is restored to what it was before. On PostgreSQL this also
/// clears the "transaction aborted" state a failed statement leaves behind.
async fn run_local<D: SagaData>(
    tx: &mut Tx,
    f: &crate::definition::LocalFn<D>,
    data: &mut D,
) -> Result<Result<(), String>, SagaError> {
    sqlx::query(SAVEPOINT).execute(tx.conn()).await?;
    let before = data.clone();
    match f(tx, data).await {
        Ok(()) => {
            sqlx::query(RELEASE_SAVEPOINT).execute(tx.conn()).await?;
            Ok(Ok(()))
        }
        Err(e) => {
            sqlx::query(ROLLBACK_TO_SAVEPOINT)
                .execute(tx.conn())
                .await?;
            sqlx::query(RELEASE_SAVEPOINT).execute(tx.conn()).await?;
            *data = before;
            Ok(Err(e))
        }
    }
}

impl<D: SagaData> Orchestrator<D> {
    /// An orchestrator for `def` in `service`, storing sagas in `store` and sending commands
    /// through `outbox` (which must use the same store). Creates its tables.
    pub async fn new(
        def: SagaDefinition<D>,
        store: Store,
        outbox: Outbox,
        service: &str,
    ) -> Result<Self, SagaError> {
        def.validate()?;
        store.migrate("keel_saga", schema::MIGRATIONS).await?;
        let reply_to = format!("{service}.saga.{}.replies", def.name);
        keel_messaging::validate_name(&reply_to)
            .map_err(|e| SagaError::Data(format!("service name: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                consumer_name: format!("{service}.saga.{}", def.name),
                group: service.to_owned(),
                def,
                store,
                outbox,
                reply_to,
                ended: tokio::sync::broadcast::channel(1024).0,
            }),
        })
    }

    /// Where participants send their replies.
    pub fn reply_destination(&self) -> &str {
        &self.inner.reply_to
    }

    /// The saga's name.
    pub fn saga_type(&self) -> &str {
        &self.inner.def.name
    }

    /// In-process notifications `(saga id, final state)`, sent when the transaction that
    /// ended a saga has committed in this process (a saga ended by another instance of the
    /// service is not seen here). A receiver more than 1024 notifications behind gets
    /// `RecvError::Lagged`. For waiting without polling the store (tests, benchmarks).
    pub fn ended(&self) -> tokio::sync::broadcast::Receiver<(String, SagaState)> {
        self.inner.ended.subscribe()
    }

    /// Creates a saga inside the caller's transaction `tx`: the instance row, its first
    /// local steps and its first command (through the outbox) commit with the caller's own
    /// change, or not at all. Returns the saga id.
    pub async fn start(&self, tx: &mut Tx, data: D) -> Result<String, SagaError> {
        self.start_inner(tx, data, None).await
    }

    /// Like [`start`](Self::start), but first takes a lock on `resource` (e.g. an order id)
    /// held until the saga ends; fails with [`SagaError::Locked`] while another saga holds it.
    pub async fn start_locked(
        &self,
        tx: &mut Tx,
        data: D,
        resource: &str,
    ) -> Result<String, SagaError> {
        self.start_inner(tx, data, Some(resource)).await
    }

    async fn start_inner(
        &self,
        tx: &mut Tx,
        data: D,
        resource: Option<&str>,
    ) -> Result<String, SagaError> {
        let id = keel_messaging::new_id();
        let now = now_ms();
        if let Some(r) = resource {
            // ON CONFLICT rather than check-then-insert: on PostgreSQL a concurrent start on
            // the same resource waits here for the other transaction, then finds its row
            // (never a unique violation); on SQLite writers are serialized anyway.
            let taken = sqlx::query(
                "INSERT INTO keel_saga_locks (resource, saga_id, acquired_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (resource) DO NOTHING",
            )
            .bind(r)
            .bind(&id)
            .bind(now)
            .execute(tx.conn())
            .await?
            .rows_affected();
            if taken == 0 {
                let holder: Option<(String,)> =
                    sqlx::query_as("SELECT saga_id FROM keel_saga_locks WHERE resource = $1")
                        .bind(r)
                        .fetch_optional(tx.conn())
                        .await?;
                return Err(SagaError::Locked {
                    resource: r.to_owned(),
                    holder: holder.map(|h| h.0).unwrap_or_default(),
                });
            }
        }
        let data_json = serde_json::to_string(&data).map_err(|e| SagaError::Data(e.to_string()))?;
        sqlx::query(
            "INSERT INTO keel_sagas (id, saga_type, state, step, attempt, completed, data, awaiting, deadline, lock_resource, error, created_at, updated_at) \
             VALUES ($1, $2, $3, 0, 0, '[]', $4, NULL, NULL, $5, NULL, $6, $7)",
        )
        .bind(&id)
        .bind(&self.inner.def.name)
        .bind(SagaState::Running.as_str())
        .bind(data_json)
        .bind(resource.map(str::to_owned))
        .bind(now)
        .bind(now)
        .execute(tx.conn())
        .await?;
        let mut inst = Instance {
            id: id.clone(),
            state: SagaState::Running,
            step: 0,
            attempt: 0,
            round: 0,
            completed: Vec::new(),
            data,
            awaiting: None,
            deadline: None,
            error: None,
            created_at: now,
        };
        self.event(tx, &id, "STARTED", None, None).await?;
        metrics::counter!("keel_saga_started_total", "saga" => self.inner.def.name.clone())
            .increment(1);
        self.advance(tx, &mut inst).await?;
        self.save(tx, &inst).await?;
        Ok(id)
    }

    async fn event(
        &self,
        tx: &mut Tx,
        id: &str,
        kind: &str,
        step: Option<usize>,
        detail: Option<String>,
    ) -> Result<(), SagaError> {
        let step_name = step
            .and_then(|s| self.inner.def.steps.get(s))
            .map(|s| s.name.clone());
        sqlx::query(
            "INSERT INTO keel_saga_events (saga_id, at, kind, step, step_name, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(now_ms())
        .bind(kind)
        .bind(step.map(|s| s as i64))
        .bind(step_name)
        .bind(detail)
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    async fn load(&self, tx: &mut Tx, id: &str) -> Result<Option<Instance<D>>, SagaError> {
        let lock = if tx.backend() == Backend::Postgres {
            " FOR UPDATE"
        } else {
            ""
        };
        let sql = format!(
            "SELECT state, step, attempt, round, completed, data, awaiting, deadline, error, created_at FROM keel_sagas WHERE id = $1 AND saga_type = $2{lock}"
        );
        // `lock` is one of two fixed strings.
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(&self.inner.def.name)
            .fetch_optional(tx.conn())
            .await?;
        let Some(row) = row else { return Ok(None) };
        let state: String = row.try_get("state")?;
        let completed: String = row.try_get("completed")?;
        let data: String = row.try_get("data")?;
        Ok(Some(Instance {
            id: id.to_owned(),
            state: SagaState::parse(&state)
                .ok_or_else(|| SagaError::Data(format!("unknown state {state}")))?,
            step: row.try_get::<i64, _>("step")? as usize,
            attempt: row.try_get::<i64, _>("attempt")? as u32,
            round: row.try_get::<i64, _>("round")? as u32,
            completed: serde_json::from_str(&completed)
                .map_err(|e| SagaError::Data(e.to_string()))?,
            data: serde_json::from_str(&data).map_err(|e| SagaError::Data(e.to_string()))?,
            awaiting: row.try_get("awaiting")?,
            deadline: row.try_get("deadline")?,
            error: row.try_get("error")?,
            created_at: row.try_get("created_at")?,
        }))
    }

    async fn save(&self, tx: &mut Tx, i: &Instance<D>) -> Result<(), SagaError> {
        let now = now_ms();
        let ended = i.state.is_final().then_some(now);
        sqlx::query(
            "UPDATE keel_sagas SET state = $1, step = $2, attempt = $3, round = $4, completed = $5, data = $6, awaiting = $7, deadline = $8, error = $9, updated_at = $10, ended_at = $11 WHERE id = $12",
        )
        .bind(i.state.as_str())
        .bind(i.step as i64)
        .bind(i64::from(i.attempt))
        .bind(i64::from(i.round))
        .bind(serde_json::to_string(&i.completed).unwrap_or_else(|_| "[]".into()))
        .bind(serde_json::to_string(&i.data).map_err(|e| SagaError::Data(e.to_string()))?)
        .bind(i.awaiting.clone())
        .bind(i.deadline)
        .bind(i.error.clone())
        .bind(now)
        .bind(ended)
        .bind(&i.id)
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    async fn finish(
        &self,
        tx: &mut Tx,
        i: &mut Instance<D>,
        state: SagaState,
    ) -> Result<(), SagaError> {
        i.state = state;
        i.awaiting = None;
        i.deadline = None;
        sqlx::query("DELETE FROM keel_saga_locks WHERE saga_id = $1")
            .bind(&i.id)
            .execute(tx.conn())
            .await?;
        self.event(tx, &i.id, state.as_str(), None, i.error.clone())
            .await?;
        let name = self.inner.def.name.clone();
        let outcome = state.as_str().to_ascii_lowercase();
        metrics::counter!(format!("keel_saga_{outcome}_total"), "saga" => name.clone())
            .increment(1);
        metrics::histogram!("keel_saga_duration_seconds", "saga" => name, "outcome" => outcome)
            .record((now_ms() - i.created_at).max(0) as f64 / 1000.0);
        let (ended, id) = (self.inner.ended.clone(), i.id.clone());
        tx.after_commit(move || {
            let _ = ended.send((id, state));
        });
        Ok(())
    }

    /// Sends the command of `action` for the instance's current step.
    async fn send(
        &self,
        tx: &mut Tx,
        i: &mut Instance<D>,
        action: &Action<D>,
        dir: char,
    ) -> Result<(), SagaError> {
        let Action::Command { make, .. } = action else {
            return Ok(());
        };
        let cmd = make(&i.data);
        // Attempt-independent: the reply to any attempt of this round answers the step.
        let correlation = format!("{}|{}|{}|{}", i.id, i.step, i.round, dir);
        let mut m = Message::new(cmd.destination.clone(), cmd.payload.clone())
            .with_key(i.id.clone())
            .with_header(headers::TYPE, cmd.command_type.clone())
            .with_header(headers::CORRELATION_ID, correlation.clone())
            .with_header(headers::REPLY_TO, self.inner.reply_to.clone())
            .with_header(SAGA_ID, i.id.clone())
            .with_header(SAGA_TYPE, self.inner.def.name.clone());
        m.id = command_id(&i.id, i.step, dir, i.round);
        self.inner.outbox.send(tx, &m).await?;
        let step = &self.inner.def.steps[i.step];
        i.awaiting = Some(correlation);
        i.deadline = Some(now_ms() + step.timeout.as_millis() as i64);
        let kind = if dir == 'f' {
            "COMMAND_SENT"
        } else {
            "COMPENSATION_SENT"
        };
        let detail = format!(
            "{} → {} (attempt {})",
            cmd.command_type,
            cmd.destination,
            i.attempt + 1
        );
        self.event(tx, &i.id.clone(), kind, Some(i.step), Some(detail))
            .await
    }

    /// Moves the saga as far as it can go without waiting for a reply.
    async fn advance(&self, tx: &mut Tx, i: &mut Instance<D>) -> Result<(), SagaError> {
        let steps = &self.inner.def.steps;
        loop {
            match i.state {
                SagaState::Running => {
                    if i.step >= steps.len() {
                        return self.finish(tx, i, SagaState::Completed).await;
                    }
                    let step = &steps[i.step];
                    if let Some(when) = &step.when
                        && !when(&i.data)
                    {
                        self.event(tx, &i.id.clone(), "STEP_SKIPPED", Some(i.step), None)
                            .await?;
                        i.step += 1;
                        i.attempt = 0;
                        i.round = 0;
                        continue;
                    }
                    match &step.action {
                        Action::Local(f) => match run_local(tx, f, &mut i.data).await? {
                            Ok(()) => {
                                self.event(tx, &i.id.clone(), "STEP_SUCCEEDED", Some(i.step), None)
                                    .await?;
                                i.completed.push(i.step);
                                i.step += 1;
                                i.attempt = 0;
                                i.round = 0;
                            }
                            Err(e) => {
                                self.event(
                                    tx,
                                    &i.id.clone(),
                                    "STEP_FAILED",
                                    Some(i.step),
                                    Some(e.clone()),
                                )
                                .await?;
                                if step.kind == StepKind::Retriable {
                                    return self.retry_forward(tx, i, e).await;
                                }
                                self.start_compensating(
                                    tx,
                                    i,
                                    format!("{} failed: {e}", step.name),
                                )
                                .await?;
                            }
                        },
                        action @ Action::Command { .. } => {
                            let action = action.clone();
                            return self.send(tx, i, &action, 'f').await;
                        }
                    }
                }
                SagaState::Compensating => {
                    let Some(done) = i.completed.pop() else {
                        return self.finish(tx, i, SagaState::Compensated).await;
                    };
                    if done != i.step {
                        // A new compensation (a retried one keeps its attempt count).
                        i.step = done;
                        i.attempt = 0;
                        i.round = 0;
                    }
                    match steps[done].compensation.clone() {
                        None => continue,
                        Some(Action::Local(f)) => match run_local(tx, &f, &mut i.data).await? {
                            Ok(()) => {
                                self.event(tx, &i.id.clone(), "COMPENSATED", Some(done), None)
                                    .await?;
                            }
                            Err(e) => {
                                // Still to be compensated: retried with backoff by the sweeper.
                                i.completed.push(done);
                                return self
                                    .retry_compensation(
                                        tx,
                                        i,
                                        format!("compensation of {} failed: {e}", steps[done].name),
                                    )
                                    .await;
                            }
                        },
                        Some(action) => return self.send(tx, i, &action, 'c').await,
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// Schedules another try of the current (retriable) forward step: a new round, so a
    /// command step sends a new command.
    async fn retry_forward(
        &self,
        tx: &mut Tx,
        i: &mut Instance<D>,
        reason: String,
    ) -> Result<(), SagaError> {
        i.attempt = i.attempt.saturating_add(1);
        i.round = i.round.saturating_add(1);
        i.awaiting = None;
        i.deadline = Some(now_ms() + backoff(i.attempt));
        self.event(
            tx,
            &i.id.clone(),
            "RETRY_SCHEDULED",
            Some(i.step),
            Some(reason),
        )
        .await
    }

    /// Turns the saga around; the caller then runs [`advance`](Self::advance).
    async fn start_compensating(
        &self,
        tx: &mut Tx,
        i: &mut Instance<D>,
        reason: String,
    ) -> Result<(), SagaError> {
        i.error = Some(reason);
        i.state = SagaState::Compensating;
        i.awaiting = None;
        i.deadline = None;
        i.attempt = 0;
        i.round = 0;
        self.event(
            tx,
            &i.id.clone(),
            "COMPENSATING",
            Some(i.step),
            i.error.clone(),
        )
        .await
    }

    /// A forward step failed (failure reply, timeout after its attempts).
    async fn fail_forward(
        &self,
        tx: &mut Tx,
        i: &mut Instance<D>,
        reason: String,
    ) -> Result<(), SagaError> {
        if self.inner.def.steps[i.step].kind == StepKind::Retriable {
            return self.retry_forward(tx, i, reason).await;
        }
        self.start_compensating(tx, i, reason).await?;
        self.advance(tx, i).await
    }

    /// Applies one reply (called inside the inbox transaction).
    async fn on_reply(&self, tx: &mut Tx, m: &Message) -> Result<(), SagaError> {
        let Some(correlation) = m.correlation_id() else {
            return Ok(());
        };
        let Some(id) = correlation.split('|').next() else {
            return Ok(());
        };
        let Some(mut i) = self.load(tx, id).await? else {
            return Ok(());
        };
        // The correlation names the saga, step, round and direction — not the attempt: the
        // reply to any attempt (first send or timeout resend) of the awaited command counts.
        if i.awaiting.as_deref() != Some(correlation) {
            let detail = format!("{} (awaiting {:?})", correlation, i.awaiting);
            self.event(tx, id, "REPLY_IGNORED", Some(i.step), Some(detail))
                .await?;
            return Ok(());
        }
        let reply = Reply {
            success: m.header(REPLY_OUTCOME) != Some("FAILURE"),
            reply_type: m.message_type().unwrap_or_default().to_owned(),
            payload: m.payload.clone(),
        };
        i.awaiting = None;
        i.deadline = None;
        let step_idx = i.step;
        let step = &self.inner.def.steps[step_idx];
        match i.state {
            SagaState::Running => {
                let Action::Command {
                    on_success,
                    on_failure,
                    ..
                } = &step.action
                else {
                    return Ok(());
                };
                if reply.success {
                    if let Some(f) = on_success {
                        f(&mut i.data, &reply);
                    }
                    self.event(
                        tx,
                        id,
                        "STEP_SUCCEEDED",
                        Some(step_idx),
                        Some(reply.reply_type.clone()),
                    )
                    .await?;
                    i.completed.push(step_idx);
                    i.step += 1;
                    i.attempt = 0;
                    i.round = 0;
                    self.advance(tx, &mut i).await?;
                } else {
                    if let Some(f) = on_failure {
                        f(&mut i.data, &reply);
                    }
                    self.event(
                        tx,
                        id,
                        "STEP_FAILED",
                        Some(step_idx),
                        Some(reply.reply_type.clone()),
                    )
                    .await?;
                    self.fail_forward(
                        tx,
                        &mut i,
                        format!("{} failed: {}", step.name, reply.reply_type),
                    )
                    .await?;
                }
            }
            SagaState::Compensating => {
                if reply.success {
                    self.event(tx, id, "COMPENSATED", Some(step_idx), None)
                        .await?;
                    self.advance(tx, &mut i).await?;
                } else {
                    self.retry_compensation(
                        tx,
                        &mut i,
                        format!("compensation reply {}", reply.reply_type),
                    )
                    .await?;
                }
            }
            _ => {}
        }
        self.save(tx, &i).await
    }

    /// A compensation failed (failure reply, local error): retried with backoff in a new
    /// round, up to [`MAX_COMPENSATION_ATTEMPTS`] attempts; then the saga is FAILED.
    async fn retry_compensation(
        &self,
        tx: &mut Tx,
        i: &mut Instance<D>,
        reason: String,
    ) -> Result<(), SagaError> {
        i.attempt += 1;
        i.round += 1;
        if i.attempt >= MAX_COMPENSATION_ATTEMPTS {
            i.error = Some(format!(
                "{} gave up after {} attempts: {reason}",
                self.inner.def.steps[i.step].name, i.attempt
            ));
            return self.finish(tx, i, SagaState::Failed).await;
        }
        i.awaiting = None;
        i.deadline = Some(now_ms() + backoff(i.attempt));
        self.event(
            tx,
            &i.id.clone(),
            "RETRY_SCHEDULED",
            Some(i.step),
            Some(reason),
        )
        .await
    }

    /// Handles sagas whose deadline passed: a reply that did not come (timeout) or a
    /// scheduled retry that is due. Returns how many were handled.
    pub async fn sweep(&self) -> Result<usize, SagaError> {
        let due: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM keel_sagas WHERE saga_type = $1 AND state IN ('RUNNING', 'COMPENSATING') \
             AND deadline IS NOT NULL AND deadline <= $2 ORDER BY deadline LIMIT 200",
        )
        .bind(&self.inner.def.name)
        .bind(now_ms())
        .fetch_all(self.inner.store.pool())
        .await?;
        let mut n = 0;
        for (id,) in due {
            let mut tx = self.inner.store.begin().await?;
            let Some(mut i) = self.load(&mut tx, &id).await? else {
                continue;
            };
            if i.state.is_final() || i.deadline.is_none_or(|d| d > now_ms()) {
                tx.rollback().await?;
                continue;
            }
            let step = &self.inner.def.steps[i.step];
            let timed_out = i.awaiting.take().is_some();
            if timed_out {
                self.event(&mut tx, &id, "TIMEOUT", Some(i.step), None)
                    .await?;
            }
            i.deadline = None;
            match i.state {
                SagaState::Running => {
                    if timed_out
                        && step.kind != StepKind::Retriable
                        && i.attempt + 1 >= step.max_attempts
                    {
                        // No answer is not a refusal: the participant may yet apply the
                        // command (it waits in the bus). A step with a compensation is
                        // compensated too; its compensation, sent later with the same key,
                        // reaches the participant after the command.
                        if step.compensation.is_some() {
                            i.completed.push(i.step);
                        }
                        self.fail_forward(&mut tx, &mut i, format!("{} timed out", step.name))
                            .await?;
                    } else {
                        if timed_out {
                            // Same round: the resend carries the same message id, so a
                            // participant that already applied the command only answers it.
                            i.attempt += 1;
                        }
                        let action = step.action.clone();
                        match action {
                            Action::Command { .. } => {
                                self.send(&mut tx, &mut i, &action, 'f').await?
                            }
                            Action::Local(_) => self.advance(&mut tx, &mut i).await?,
                        }
                    }
                }
                SagaState::Compensating => {
                    if timed_out {
                        i.attempt += 1;
                        if i.attempt >= MAX_COMPENSATION_ATTEMPTS {
                            i.error = Some(format!(
                                "compensation of {} timed out {} times",
                                step.name, i.attempt
                            ));
                            self.finish(&mut tx, &mut i, SagaState::Failed).await?;
                            self.save(&mut tx, &i).await?;
                            tx.commit().await?;
                            n += 1;
                            continue;
                        }
                    }
                    match step.compensation.clone() {
                        Some(action @ Action::Command { .. }) => {
                            self.send(&mut tx, &mut i, &action, 'c').await?;
                        }
                        // A failed local compensation is back on the completed list:
                        // `advance` runs it again.
                        _ => self.advance(&mut tx, &mut i).await?,
                    }
                }
                _ => {}
            }
            self.save(&mut tx, &i).await?;
            tx.commit().await?;
            n += 1;
        }
        Ok(n)
    }

    /// Consumes replies (through the inbox) and runs the timeout sweeper until `stop`.
    /// Start it on every instance of the service: replies are shared by the group, and
    /// in-flight sagas resume at once (the sweeper's first pass runs immediately).
    pub async fn run(&self, bus: Arc<dyn Bus>, stop: CancellationToken) -> Result<(), SagaError> {
        let inbox = Inbox::new(self.inner.store.clone(), &self.inner.consumer_name).await?;
        let me = self.clone();
        let handler = inbox.handler(move |mut tx, d: Delivery| {
            let me = me.clone();
            async move {
                me.on_reply(&mut tx, &d.message)
                    .await
                    .map_err(|e| match e {
                        SagaError::Data(msg) => HandlerError::reject(msg),
                        other => HandlerError::retry(other),
                    })?;
                Ok(tx)
            }
        });
        let consumer: Consumer = bus
            .subscribe(
                Subscription::new(self.inner.reply_to.clone(), self.inner.group.clone())
                    .max_attempts(50)
                    .backoff(Duration::from_millis(50), Duration::from_secs(5)),
                handler,
            )
            .await?;
        loop {
            if let Err(e) = self.sweep().await {
                tracing::warn!(saga = %self.inner.def.name, error = %e, "saga sweep failed");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        consumer.stop().await;
        Ok(())
    }
}
