//! Readiness at start-up: a health URL answering 2xx, or simply staying up for `ready_after`.

use std::time::Duration;

use crate::error::StartFailure;
use crate::topology::{ProcessSpec, Settings};

/// Longest single health probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The client used for every health probe: no proxy (probes target local addresses).
pub(super) fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(PROBE_TIMEOUT)
        .build()
}

/// Resolves once `spec` counts as ready, or fails after the health timeout. Does not watch the
/// process itself; the caller races this against the process exiting.
pub(super) async fn ready(
    spec: &ProcessSpec,
    settings: &Settings,
    client: &reqwest::Client,
) -> Result<(), StartFailure> {
    let Some(url) = &spec.health else {
        tokio::time::sleep(spec.ready_after).await;
        return Ok(());
    };
    let mut last = String::from("no answer yet");
    let probes = async {
        loop {
            let probe = client
                .get(url.as_str())
                .timeout(PROBE_TIMEOUT.min(settings.health_timeout))
                .send()
                .await;
            match probe {
                Ok(resp) if resp.status().is_success() => return,
                Ok(resp) => last = format!("HTTP {}", resp.status()),
                Err(e) => last = root_cause(&e),
            }
            tokio::time::sleep(settings.health_interval).await;
        }
    };
    let outcome = tokio::time::timeout(settings.health_timeout, probes).await;
    match outcome {
        Ok(()) => Ok(()),
        Err(_) => Err(StartFailure::HealthTimeout {
            url: url.clone(),
            timeout: settings.health_timeout,
            last,
        }),
    }
}

/// The innermost cause: `Connection refused (os error 111)` rather than reqwest's
/// `error sending request for url (…)`.
fn root_cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
