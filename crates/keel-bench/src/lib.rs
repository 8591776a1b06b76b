//! `keel bench …`: system benchmarks, each printing the baseline or peer measured in the
//! same run beside Keel's own figure, and ending with a one-line summary.

pub mod bus;
pub mod gateway;
pub mod machine;
pub mod outbox;
pub mod registry;
pub mod saga;
pub mod stats;
