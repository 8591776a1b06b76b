//! `keel up`: runs a topology of processes on one machine — in dependency order, with health
//! waits, prefixed output, restarts with backoff and an orderly stop.
//!
//! The topology is a TOML file (see `docs/supervisor.md` for every key):
//!
//! ```toml
//! [supervisor]
//! grace_period_ms = 5000
//!
//! [[process]]
//! name = "greeter"
//! command = "$KEEL"                      # the supervisor's own executable
//! args = ["serve", "greeter", "--port", "{port}"]
//! instances = 2                          # greeter-1 on 8081, greeter-2 on 8082
//! port = 8081
//! health = "http://127.0.0.1:{port}/health/ready"
//! ```
//!
//! ```no_run
//! # async fn up() -> Result<(), Box<dyn std::error::Error>> {
//! use keel_supervisor::{CancellationToken, Options, Supervisor, Topology};
//!
//! let topology = Topology::load("keel.toml")?;
//! let options = Options {
//!     self_exe: std::env::current_exe()?,
//!     summary_extra: vec!["gateway: http://127.0.0.1:8080".to_owned()],
//!     ..Options::default()
//! };
//! let shutdown = CancellationToken::new();
//! // Cancel `shutdown` on Ctrl-C / SIGTERM; `run` then stops every child and returns.
//! Supervisor::new(topology, options).run(shutdown).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Every child runs in its own process group with stdin closed; its stdout and stderr lines
//! are written to the supervisor's stdout and stderr prefixed with the child's name. On stop,
//! the whole group gets `SIGTERM`, then `SIGKILL` after the grace period.

#![cfg(unix)]

mod backoff;
mod console;
mod error;
mod supervisor;
mod topology;

pub use console::{Console, StdConsole, Stream};
pub use error::{StartFailure, SupervisorError, TopologyError};
pub use supervisor::{Options, Supervisor};
pub use tokio_util::sync::CancellationToken;
pub use topology::{
    CommandSpec, DEFAULT_FILE, ProcessSpec, RestartBackoff, RestartPolicy, SELF_COMMAND, Settings,
    Topology,
};
