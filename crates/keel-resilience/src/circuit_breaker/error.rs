use std::error::Error;
use std::fmt;
use std::sync::Arc;

use super::State;

/// The breaker rejected a call (it is OPEN or FORCED_OPEN, or HALF_OPEN with every trial permit
/// taken). Resilience4j's `CallNotPermittedException`; maps to HTTP 503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallNotPermitted {
    pub(crate) name: Arc<str>,
    pub(crate) state: State,
}

impl CallNotPermitted {
    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state the breaker was in when it rejected the call.
    pub fn state(&self) -> State {
        self.state
    }
}

impl fmt::Display for CallNotPermitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "circuit breaker `{}` is {} and does not permit further calls",
            self.name, self.state
        )
    }
}

impl Error for CallNotPermitted {}

/// The result of [`CircuitBreaker::call`](super::CircuitBreaker::call): either the breaker
/// rejected the call, or the call ran and failed with its own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CircuitBreakerError<E> {
    /// The breaker did not let the call through.
    NotPermitted(CallNotPermitted),
    /// The call ran and returned this error.
    Inner(E),
}

impl<E> CircuitBreakerError<E> {
    /// The call's own error, if it ran.
    pub fn into_inner(self) -> Option<E> {
        match self {
            CircuitBreakerError::Inner(e) => Some(e),
            CircuitBreakerError::NotPermitted(_) => None,
        }
    }

    /// Whether the breaker rejected the call.
    pub fn is_not_permitted(&self) -> bool {
        matches!(self, CircuitBreakerError::NotPermitted(_))
    }
}

impl<E: fmt::Display> fmt::Display for CircuitBreakerError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CircuitBreakerError::NotPermitted(e) => e.fmt(f),
            CircuitBreakerError::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: Error + 'static> Error for CircuitBreakerError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            CircuitBreakerError::NotPermitted(_) => None,
            CircuitBreakerError::Inner(e) => Some(e),
        }
    }
}

impl<E> From<CallNotPermitted> for CircuitBreakerError<E> {
    fn from(e: CallNotPermitted) -> Self {
        CircuitBreakerError::NotPermitted(e)
    }
}
