//! The topology file exactly as written: serde types with no defaults applied and nothing
//! validated beyond what the TOML types enforce.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::RestartPolicy;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTopology {
    #[serde(default)]
    pub(super) supervisor: FileSettings,
    #[serde(default)]
    pub(super) process: Vec<FileProcess>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSettings {
    pub(super) grace_period_ms: Option<u64>,
    pub(super) health_timeout_ms: Option<u64>,
    pub(super) health_interval_ms: Option<u64>,
    pub(super) ready_after_ms: Option<u64>,
    pub(super) restart_initial_ms: Option<u64>,
    pub(super) restart_max_ms: Option<u64>,
    pub(super) restart_reset_after_ms: Option<u64>,
    #[serde(default)]
    pub(super) notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileProcess {
    pub(super) name: String,
    pub(super) command: String,
    #[serde(default)]
    pub(super) args: Vec<String>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    pub(super) cwd: Option<String>,
    pub(super) health: Option<String>,
    pub(super) ready_after_ms: Option<u64>,
    #[serde(default)]
    pub(super) depends_on: Vec<String>,
    #[serde(default)]
    pub(super) restart: RestartPolicy,
    pub(super) instances: Option<u32>,
    pub(super) port: Option<u16>,
}
