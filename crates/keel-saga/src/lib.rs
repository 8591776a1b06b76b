//! Sagas for Keel: a crash-safe, inspectable orchestration engine. A saga is typed data and
//! ordered steps (participant commands or local actions, each optionally compensated;
//! compensatable, pivot or retriable; optionally conditional). The orchestrator persists
//! every instance, sends commands through the transactional outbox, consumes replies
//! through the idempotent inbox, and advances one transaction per event — so a crash at any
//! point loses no reply and applies no step twice. Participants and event-driven
//! (choreographed) flows get helpers with the same guarantees. See `docs/sagas.md`.

pub mod choreography;
pub mod definition;
pub mod orchestrator;
pub mod participant;
pub mod query;
mod schema;

pub use choreography::react;
pub use definition::{Command, DefinitionError, Reply, SagaData, SagaDefinition, Step, StepKind};
pub use orchestrator::{
    Orchestrator, REPLY_OUTCOME, SAGA_ID, SAGA_TYPE, SagaError, SagaState, command_id,
};
pub use participant::{CommandError, command_handler, prune_replies};
pub use query::{SagaDetail, SagaEvent, SagaSummary};
