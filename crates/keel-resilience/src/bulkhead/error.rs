use std::fmt;
use std::sync::Arc;

/// The bulkhead had no free slot in time. Maps to HTTP 503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkheadFull {
    name: Arc<str>,
}

impl BulkheadFull {
    pub(crate) fn new(name: Arc<str>) -> Self {
        Self { name }
    }

    /// The bulkhead's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for BulkheadFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bulkhead `{}` is full and does not permit further calls",
            self.name
        )
    }
}

impl std::error::Error for BulkheadFull {}
