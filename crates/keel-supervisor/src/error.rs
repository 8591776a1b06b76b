//! The crate's errors: a bad topology file, and a system that could not be brought up.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::console::{describe_exit, human_duration};

/// The topology file could not be read, parsed or validated. Every message names the file;
/// validation errors also name the process and the field.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file could not be read.
    #[error("cannot read topology file {}: {error}", path.display())]
    Read {
        /// The path given to [`crate::Topology::load`].
        path: PathBuf,
        /// Why reading failed.
        error: std::io::Error,
    },
    /// The text is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("{file}{}: {message}", position(*line, *column))]
    Parse {
        /// File (or source) name.
        file: String,
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// 1-based column of the problem, when known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// The file parsed but describes an impossible topology.
    #[error("{file}: {}{message}", process.as_ref().map(|p| format!("process {p:?}: ")).unwrap_or_default())]
    Invalid {
        /// File (or source) name.
        file: String,
        /// The `[[process]]` entry at fault, if the problem is in one.
        process: Option<String>,
        /// The key at fault, e.g. `depends_on` or `supervisor.restart_max_ms`.
        field: String,
        /// What is wrong; starts with the key.
        message: String,
    },
}

fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

/// Why a process did not become ready at start-up.
#[derive(Debug, thiserror::Error)]
pub enum StartFailure {
    /// The program could not be executed.
    #[error("cannot execute {command}: {error}")]
    Spawn {
        /// The program.
        command: String,
        /// Why spawning failed.
        error: std::io::Error,
    },
    /// The process exited before the whole system was ready.
    #[error("{} during start-up", describe_exit(*status))]
    Exited {
        /// How it exited.
        status: ExitStatus,
    },
    /// Waiting for the process failed (an operating-system error).
    #[error("cannot wait for the process: {error}")]
    Wait {
        /// The error.
        error: std::io::Error,
    },
    /// The health URL did not answer 2xx in time.
    #[error("not healthy at {url} within {} (last probe: {last})", human_duration(*timeout))]
    HealthTimeout {
        /// The health URL.
        url: String,
        /// The configured `health_timeout_ms`.
        timeout: Duration,
        /// The last probe's outcome, e.g. `HTTP 503` or `connection refused`.
        last: String,
    },
}

/// The supervisor could not bring the system up, or everything exited.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A process did not become ready; everything started before it has been stopped.
    #[error("process {process:?} failed to start: {failure}")]
    Start {
        /// The process instance name.
        process: String,
        /// Why.
        failure: StartFailure,
    },
    /// Every process exited and none is to be restarted; at least one failed.
    #[error("all processes have exited; failed: {}", failed.join(", "))]
    AllExited {
        /// The processes whose last exit was a failure.
        failed: Vec<String>,
    },
    /// The HTTP client for health probes could not be built.
    #[error("cannot build the health-check HTTP client: {message}")]
    HealthClient {
        /// Why.
        message: String,
    },
}
