//! The gateway's named errors: a route file that cannot be loaded, and what stops the gateway.

use std::{fmt, io, net::SocketAddr, path::PathBuf};

/// A route file that cannot be used. At start-up the gateway exits with it; on reload the
/// previous routes stay in service.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read route file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not valid, or a route in it is not.
    #[error("{}", Located { file: file.as_ref(), route: route.as_deref(), field, problem })]
    Invalid {
        /// The file (none for configurations built in code).
        file: Option<PathBuf>,
        /// The route's id, when the problem is in a route.
        route: Option<String>,
        /// The field, e.g. `filters[1]` or `server.port` (empty for whole-file problems).
        field: String,
        /// What is wrong.
        problem: String,
    },
}

impl LoadError {
    /// The id of the route at fault, if any.
    pub fn route(&self) -> Option<&str> {
        match self {
            LoadError::Invalid { route, .. } => route.as_deref(),
            LoadError::Read { .. } => None,
        }
    }
}

struct Located<'a> {
    file: Option<&'a PathBuf>,
    route: Option<&'a str>,
    field: &'a str,
    problem: &'a str,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.file {
            Some(p) => write!(f, "{}", p.display())?,
            None => f.write_str("gateway configuration")?,
        }
        if let Some(r) = self.route {
            write!(f, ": route {r:?}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// What stops the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The route file is invalid.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// TLS could not be set up (certificate or key unreadable or invalid).
    #[error("TLS: {0}")]
    Tls(String),
    /// A command-line value is invalid.
    #[error("{flag}: {message}")]
    Args {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
}
