use std::fmt;

/// The call's deadline passed before it finished, or had already passed when it was made.
/// Maps to HTTP 504.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeadlineExceeded {
    _private: (),
}

impl DeadlineExceeded {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}
