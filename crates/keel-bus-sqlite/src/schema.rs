//! The bus file's tables.

use keel_store::Migration;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration::new(
        1,
        "bus",
        "CREATE TABLE bus_messages (
        seq {auto_id},
        destination TEXT NOT NULL,
        partition {bigint} NOT NULL,
        message_id TEXT NOT NULL,
        msg_key TEXT,
        headers TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at {bigint} NOT NULL
    );
    CREATE INDEX bus_messages_by_partition ON bus_messages (destination, partition, seq);
    CREATE TABLE bus_offsets (
        destination TEXT NOT NULL,
        grp TEXT NOT NULL,
        partition {bigint} NOT NULL,
        committed {bigint} NOT NULL,
        attempts {bigint} NOT NULL DEFAULT 0,
        retry_at {bigint} NOT NULL DEFAULT 0,
        PRIMARY KEY (destination, grp, partition)
    );
    CREATE TABLE bus_members (
        destination TEXT NOT NULL,
        grp TEXT NOT NULL,
        member TEXT NOT NULL,
        heartbeat_at {bigint} NOT NULL,
        PRIMARY KEY (destination, grp, member)
    );
    CREATE TABLE bus_owners (
        destination TEXT NOT NULL,
        grp TEXT NOT NULL,
        partition {bigint} NOT NULL,
        member TEXT NOT NULL,
        lease_until {bigint} NOT NULL,
        PRIMARY KEY (destination, grp, partition)
    );
    CREATE TABLE bus_wake (
        pid_port TEXT PRIMARY KEY,
        port {bigint} NOT NULL,
        heartbeat_at {bigint} NOT NULL
    )",
    ),
    // Settings every process opening the file must share (`partitions`): the first to open
    // the file records them, later ones are checked against them.
    Migration::new(
        2,
        "bus settings",
        "CREATE TABLE bus_settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )",
    ),
];
