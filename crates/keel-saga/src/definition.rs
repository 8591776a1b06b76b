//! Saga definitions: a typed state (the saga's data) and ordered steps.

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use keel_store::Tx;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// The data a saga carries: anything serde can store (no size cap — it is a TEXT column).
pub trait SagaData: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> SagaData for T {}

/// A command a step sends to a participant.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The participant's command destination, e.g. `kitchen.commands`.
    pub destination: String,
    /// The command type, e.g. `CreateTicket`.
    pub command_type: String,
    /// Its payload.
    pub payload: Value,
}

impl Command {
    /// A command.
    pub fn new(
        destination: impl Into<String>,
        command_type: impl Into<String>,
        payload: Value,
    ) -> Self {
        Self {
            destination: destination.into(),
            command_type: command_type.into(),
            payload,
        }
    }
}

/// A participant's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Whether the command succeeded.
    pub success: bool,
    /// The reply type (e.g. `CreateTicketReply`, or a typed failure such as `OrderLimitExceeded`).
    pub reply_type: String,
    /// Its payload.
    pub payload: Value,
}

/// How a step fits the saga's structure (the notes' vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// May be undone by its compensation when a later step fails.
    Compensatable,
    /// The go/no-go point: once it succeeds the saga runs to completion; it is never
    /// compensated, and the steps after it must be retriable.
    Pivot,
    /// Comes after the pivot and is retried until it succeeds.
    Retriable,
}

pub(crate) type LocalFn<D> =
    Arc<dyn for<'a> Fn(&'a mut Tx, &'a mut D) -> BoxFuture<'a, Result<(), String>> + Send + Sync>;
pub(crate) type CommandFn<D> = Arc<dyn Fn(&D) -> Command + Send + Sync>;
pub(crate) type ReplyFn<D> = Arc<dyn Fn(&mut D, &Reply) + Send + Sync>;
pub(crate) type PredFn<D> = Arc<dyn Fn(&D) -> bool + Send + Sync>;

/// What a step (or its compensation) does.
pub(crate) enum Action<D> {
    /// Runs in the orchestrator's own transaction.
    Local(LocalFn<D>),
    /// Sends a command and waits for the reply.
    Command {
        make: CommandFn<D>,
        on_success: Option<ReplyFn<D>>,
        on_failure: Option<ReplyFn<D>>,
    },
}

impl<D> Clone for Action<D> {
    fn clone(&self) -> Self {
        match self {
            Action::Local(f) => Action::Local(f.clone()),
            Action::Command {
                make,
                on_success,
                on_failure,
            } => Action::Command {
                make: make.clone(),
                on_success: on_success.clone(),
                on_failure: on_failure.clone(),
            },
        }
    }
}

/// One step.
pub struct Step<D> {
    pub(crate) name: String,
    pub(crate) kind: StepKind,
    pub(crate) when: Option<PredFn<D>>,
    pub(crate) action: Action<D>,
    pub(crate) compensation: Option<Action<D>>,
    pub(crate) timeout: Duration,
    pub(crate) max_attempts: u32,
}

impl<D> std::fmt::Debug for Step<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("compensated", &self.compensation.is_some())
            .finish()
    }
}

impl<D: SagaData> Step<D> {
    fn new(name: &str, action: Action<D>) -> Self {
        Self {
            name: name.to_owned(),
            kind: StepKind::Compensatable,
            when: None,
            action,
            compensation: None,
            timeout: Duration::from_secs(30),
            max_attempts: 3,
        }
    }

    /// A step that sends `make(&data)` to a participant and waits for its reply.
    pub fn command(name: &str, make: impl Fn(&D) -> Command + Send + Sync + 'static) -> Self {
        Self::new(
            name,
            Action::Command {
                make: Arc::new(make),
                on_success: None,
                on_failure: None,
            },
        )
    }

    /// A step that runs in the orchestrator's transaction (e.g. updating the aggregate
    /// the saga belongs to). An `Err` fails the step.
    pub fn local(
        name: &str,
        f: impl for<'a> Fn(&'a mut Tx, &'a mut D) -> BoxFuture<'a, Result<(), String>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        Self::new(name, Action::Local(Arc::new(f)))
    }

    /// Updates the data from a successful reply.
    pub fn on_reply(mut self, f: impl Fn(&mut D, &Reply) + Send + Sync + 'static) -> Self {
        if let Action::Command { on_success, .. } = &mut self.action {
            *on_success = Some(Arc::new(f));
        }
        self
    }

    /// Records a failure reply in the data (e.g. the rejection reason) before compensating.
    pub fn on_failure(mut self, f: impl Fn(&mut D, &Reply) + Send + Sync + 'static) -> Self {
        if let Action::Command { on_failure, .. } = &mut self.action {
            *on_failure = Some(Arc::new(f));
        }
        self
    }

    /// Undoes this step with a command to a participant.
    pub fn compensate_with(mut self, make: impl Fn(&D) -> Command + Send + Sync + 'static) -> Self {
        self.compensation = Some(Action::Command {
            make: Arc::new(make),
            on_success: None,
            on_failure: None,
        });
        self
    }

    /// Undoes this step in the orchestrator's own transaction.
    pub fn compensate_locally(
        mut self,
        f: impl for<'a> Fn(&'a mut Tx, &'a mut D) -> BoxFuture<'a, Result<(), String>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.compensation = Some(Action::Local(Arc::new(f)));
        self
    }

    /// Marks the step as the pivot.
    pub fn pivot(mut self) -> Self {
        self.kind = StepKind::Pivot;
        self
    }

    /// Marks the step as retriable (after the pivot; retried until it succeeds).
    pub fn retriable(mut self) -> Self {
        self.kind = StepKind::Retriable;
        self.max_attempts = u32::MAX;
        self
    }

    /// Runs the step only when `pred(&data)` holds.
    pub fn when(mut self, pred: impl Fn(&D) -> bool + Send + Sync + 'static) -> Self {
        self.when = Some(Arc::new(pred));
        self
    }

    /// How long to wait for the reply before counting the step as failed (default 30 s).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Attempts before a failing compensatable step starts compensation (default 3; a
    /// failure *reply* compensates at once — attempts apply to timeouts).
    pub fn attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
}

/// A saga: a name and its steps.
pub struct SagaDefinition<D> {
    pub(crate) name: String,
    pub(crate) steps: Vec<Step<D>>,
}

impl<D> std::fmt::Debug for SagaDefinition<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaDefinition")
            .field("name", &self.name)
            .field("steps", &self.steps)
            .finish()
    }
}

/// A definition that breaks the structure's rules.
#[derive(Debug, Clone, thiserror::Error)]
#[error("saga {saga}: step {step:?}: {problem}")]
pub struct DefinitionError {
    /// The saga.
    pub saga: String,
    /// The step.
    pub step: String,
    /// What is wrong.
    pub problem: String,
}

impl<D: SagaData> SagaDefinition<D> {
    /// A saga named `name` (a message-destination-safe name, e.g. `create-order`).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            steps: Vec::new(),
        }
    }

    /// Appends a step.
    pub fn step(mut self, step: Step<D>) -> Self {
        self.steps.push(step);
        self
    }

    /// Checks the structure: at most one pivot; every step after it retriable; retriable
    /// steps only after the pivot (or, in a saga without one, with no compensatable step
    /// after them: the retriable steps always end the saga); names unique.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        let err = |step: &str, problem: &str| DefinitionError {
            saga: self.name.clone(),
            step: step.to_owned(),
            problem: problem.to_owned(),
        };
        keel_messaging::validate_name(&self.name).map_err(|e| err("", &e))?;
        if self.steps.is_empty() {
            return Err(err("", "a saga needs at least one step"));
        }
        let mut seen_pivot = false;
        // The first retriable step seen: nothing but retriable steps may follow it.
        let mut retriable: Option<&str> = None;
        let mut names = std::collections::HashSet::new();
        for s in &self.steps {
            if !names.insert(&s.name) {
                return Err(err(&s.name, "step names must be unique"));
            }
            if let Some(r) = retriable
                && s.kind != StepKind::Retriable
            {
                return Err(err(
                    r,
                    "retriable steps come after the pivot: only retriable steps may follow one",
                ));
            }
            match s.kind {
                StepKind::Pivot if seen_pivot => return Err(err(&s.name, "only one pivot step")),
                StepKind::Pivot => seen_pivot = true,
                StepKind::Retriable => {
                    retriable.get_or_insert(&s.name);
                }
                StepKind::Compensatable if seen_pivot => {
                    return Err(err(&s.name, "steps after the pivot must be retriable"));
                }
                _ => {}
            }
            if s.kind != StepKind::Compensatable && s.compensation.is_some() {
                return Err(err(
                    &s.name,
                    "pivot and retriable steps are never compensated",
                ));
            }
        }
        Ok(())
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
