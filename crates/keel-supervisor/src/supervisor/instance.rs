//! The task that owns one process instance for its whole life: spawn, wait until ready, then
//! watch it and restart it per its policy, until told to stop.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::health;
use super::process::{Running, program};
use crate::backoff::Backoff;
use crate::console::{Printer, describe_exit, human_duration};
use crate::error::StartFailure;
use crate::topology::{ProcessSpec, RestartPolicy, Settings};

/// What an instance task reports to the supervisor.
#[derive(Debug)]
pub(super) enum Event {
    /// The instance is ready (health 2xx, or up for `ready_after`).
    Ready { index: usize, pid: u32 },
    /// The instance did not become ready, or exited before the whole system was ready. Its
    /// task has ended and its process group is gone.
    StartFailed { index: usize, failure: StartFailure },
    /// The instance exited and its restart policy says not to restart it; its task has ended.
    Ended { index: usize, success: bool },
}

/// Everything an instance task needs; shared parts are cheap clones.
#[derive(Debug, Clone)]
pub(super) struct Shared {
    pub(super) settings: Settings,
    pub(super) self_exe: PathBuf,
    pub(super) printer: Printer,
    pub(super) client: reqwest::Client,
    pub(super) events: mpsc::UnboundedSender<Event>,
    /// Cancelled once every instance is ready: from then on, exits lead to restarts rather
    /// than a failed start-up.
    pub(super) all_ready: CancellationToken,
}

/// Runs instance `index` until `stop` is cancelled (then stops it) or it ends for good.
pub(super) async fn run(
    index: usize,
    spec: Arc<ProcessSpec>,
    shared: Shared,
    stop: CancellationToken,
) {
    let Shared {
        settings,
        self_exe,
        printer,
        client,
        events,
        all_ready,
    } = shared;
    let name = spec.name.as_str();
    let report = |event| {
        // The supervisor outlives its tasks; a send can only fail while it is being dropped.
        let _ = events.send(event);
    };
    let spawn = || {
        Running::spawn(&spec, &self_exe, &printer).map_err(|error| StartFailure::Spawn {
            command: program(&spec, &self_exe).display().to_string(),
            error,
        })
    };

    // Start-up.
    let mut running = match spawn() {
        Ok(running) => running,
        Err(failure) => return report(Event::StartFailed { index, failure }),
    };
    match &spec.health {
        Some(url) => printer.info(format!(
            "starting {name} (pid {}); waiting for {url}",
            running.pid()
        )),
        None => printer.info(format!("starting {name} (pid {})", running.pid())),
    }
    let outcome = tokio::select! {
        biased;
        () = stop.cancelled() => None,
        status = running.wait() => Some(Err(match status {
            Ok(status) if is_finished_job(&spec, status) => {
                running.drain().await;
                printer.info(format!("{name} finished"));
                return report(Event::Ready {
                    index,
                    pid: running.pid(),
                });
            }
            Ok(status) => StartFailure::Exited { status },
            Err(error) => StartFailure::Wait { error },
        })),
        ready = health::ready(&spec, &settings, &client) => Some(ready),
    };
    match outcome {
        None => {
            let _ = running.stop(settings.grace_period, &printer).await;
            return;
        }
        Some(Err(failure)) => {
            if matches!(failure, StartFailure::HealthTimeout { .. }) {
                // Still running but not healthy: stop it before reporting.
                let _ = running.stop(settings.grace_period, &printer).await;
            } else {
                running.drain().await;
            }
            return report(Event::StartFailed { index, failure });
        }
        Some(Ok(())) => {
            printer.info(format!("{name} is ready"));
            report(Event::Ready {
                index,
                pid: running.pid(),
            });
        }
    }

    // Supervision.
    let mut backoff = Backoff::new(settings.restart_backoff);
    let mut restarts: u32 = 0;
    loop {
        let status = tokio::select! {
            biased;
            () = stop.cancelled() => {
                let _ = running.stop(settings.grace_period, &printer).await;
                return;
            }
            status = running.wait() => status,
        };
        running.drain().await;
        let status = match status {
            Ok(status) => status,
            Err(error) => {
                printer.warn(format!("{name}: cannot wait for it: {error}"));
                return report(Event::StartFailed {
                    index,
                    failure: StartFailure::Wait { error },
                });
            }
        };
        if !all_ready.is_cancelled() && !is_finished_job(&spec, status) {
            return report(Event::StartFailed {
                index,
                failure: StartFailure::Exited { status },
            });
        }
        let how = describe_exit(status);
        if !spec.restart.restarts(status.success()) {
            let line = format!(
                "{name} {how}; not restarting (restart = \"{}\")",
                spec.restart.as_str()
            );
            if status.success() {
                printer.info(line);
            } else {
                printer.warn(line);
            }
            return report(Event::Ended {
                index,
                success: status.success(),
            });
        }
        let mut uptime = running.uptime();
        let mut how = how;
        running = loop {
            restarts = restarts.saturating_add(1);
            let delay = backoff.next_delay(uptime);
            printer.warn(format!(
                "{name} {how}; restarting in {} (restart #{restarts})",
                human_duration(delay)
            ));
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            match spawn() {
                Ok(running) => {
                    printer.info(format!("restarted {name} (pid {})", running.pid()));
                    break running;
                }
                Err(failure) => {
                    how = format!("could not be restarted ({failure})");
                    uptime = std::time::Duration::ZERO;
                }
            }
        };
    }
}

/// A one-shot job (`restart = "never"`, no health URL) that exited successfully has done
/// its work: that is not a start-up failure.
fn is_finished_job(spec: &ProcessSpec, status: std::process::ExitStatus) -> bool {
    status.success() && spec.restart == RestartPolicy::Never && spec.health.is_none()
}
