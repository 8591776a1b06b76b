//! The orchestrator's tables.

use keel_store::Migration;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration::new(
        1,
        "sagas",
        "CREATE TABLE keel_sagas (
        id TEXT PRIMARY KEY,
        saga_type TEXT NOT NULL,
        state TEXT NOT NULL,
        step {bigint} NOT NULL,
        attempt {bigint} NOT NULL,
        completed TEXT NOT NULL,
        data TEXT NOT NULL,
        awaiting TEXT,
        deadline {bigint},
        lock_resource TEXT,
        error TEXT,
        created_at {bigint} NOT NULL,
        updated_at {bigint} NOT NULL,
        ended_at {bigint}
    );
    CREATE INDEX keel_sagas_by_type_state ON keel_sagas (saga_type, state, created_at);
    CREATE INDEX keel_sagas_by_deadline ON keel_sagas (saga_type, state, deadline);
    CREATE TABLE keel_saga_events (
        seq {auto_id},
        saga_id TEXT NOT NULL,
        at {bigint} NOT NULL,
        kind TEXT NOT NULL,
        step {bigint},
        step_name TEXT,
        detail TEXT
    );
    CREATE INDEX keel_saga_events_by_saga ON keel_saga_events (saga_id, seq);
    CREATE TABLE keel_saga_locks (
        resource TEXT PRIMARY KEY,
        saga_id TEXT NOT NULL,
        acquired_at {bigint} NOT NULL
    )",
    ),
    // The send round of the current step: part of the command's correlation and message
    // id. A timeout resend keeps it (so the participant's inbox drops a resend of a command
    // it already applied); a retry after a failure increments it (a new command).
    Migration::new(
        2,
        "command rounds",
        "ALTER TABLE keel_sagas ADD COLUMN round {bigint} NOT NULL DEFAULT 0",
    ),
];

/// The participant helper's table: the reply each handled command got, so a command
/// delivered again (a timeout resend, a redelivery) is answered again with the same reply.
pub(crate) const PARTICIPANT_MIGRATIONS: &[Migration] = &[Migration::new(
    1,
    "command replies",
    "CREATE TABLE keel_saga_replies (
        destination TEXT NOT NULL,
        command_id TEXT NOT NULL,
        reply TEXT NOT NULL,
        created_at {bigint} NOT NULL,
        PRIMARY KEY (destination, command_id)
    )",
)];
