use metrics::{Counter, Gauge, counter, gauge};

/// Metric handles, created once per breaker (with no recorder installed they are no-ops).
#[derive(Debug)]
pub(crate) struct BreakerMetrics {
    pub(crate) state: Gauge,
    pub(crate) failure_rate: Gauge,
    pub(crate) slow_call_rate: Gauge,
    pub(crate) success: Counter,
    pub(crate) failure: Counter,
    pub(crate) slow_success: Counter,
    pub(crate) slow_failure: Counter,
    pub(crate) ignored: Counter,
    pub(crate) not_permitted: Counter,
}

impl BreakerMetrics {
    pub(crate) fn new(name: &str) -> Self {
        let calls = |outcome: &'static str| counter!("keel_circuit_breaker_calls_total", "name" => name.to_owned(), "outcome" => outcome);
        Self {
            state: gauge!("keel_circuit_breaker_state", "name" => name.to_owned()),
            failure_rate: gauge!("keel_circuit_breaker_failure_rate", "name" => name.to_owned()),
            slow_call_rate: gauge!("keel_circuit_breaker_slow_call_rate", "name" => name.to_owned()),
            success: calls("success"),
            failure: calls("failure"),
            slow_success: calls("slow_success"),
            slow_failure: calls("slow_failure"),
            ignored: calls("ignored"),
            not_permitted: counter!("keel_circuit_breaker_not_permitted_calls_total", "name" => name.to_owned()),
        }
    }
}
