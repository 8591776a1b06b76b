//! Eureka's wire format — instances, applications, deltas — in JSON (serde) and XML,
//! with the lenient parsing real Eureka clients need. Shared by `keel-registry` (server)
//! and `keel-discovery` (client); no I/O here.

pub mod model;
pub mod xml;

pub use model::{
    ActionType, Application, ApplicationEnvelope, Applications, ApplicationsEnvelope,
    DataCenterInfo, Instance, InstanceEnvelope, LeaseInfo, Port, Status,
};

/// Header marking a request as replication from a peer registry.
pub const REPLICATION_HEADER: &str = "x-netflix-discovery-replication";

/// Eureka's reconciliation hash over `(status, count)` pairs: `STATUS_count_` for each
/// status, sorted by status name (e.g. `DOWN_1_UP_3_`).
pub fn hashcode<'a>(statuses: impl IntoIterator<Item = Status> + 'a) -> String {
    let mut counts: std::collections::BTreeMap<&'static str, usize> = Default::default();
    for s in statuses {
        *counts.entry(s.as_str()).or_default() += 1;
    }
    counts.iter().map(|(s, n)| format!("{s}_{n}_")).collect()
}
