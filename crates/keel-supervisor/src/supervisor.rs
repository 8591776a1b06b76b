//! The supervisor: brings a [`Topology`] up in dependency order, prints the ready summary,
//! keeps it running, and stops it in reverse dependency order.

mod health;
mod instance;
mod process;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::console::{Console, Printer, StdConsole, Stream, human_duration};
use crate::error::{StartFailure, SupervisorError};
use crate::topology::{ProcessSpec, Topology};
use instance::{Event, Shared};

/// How the supervisor runs, beyond what the topology file says.
#[derive(Debug, Clone)]
pub struct Options {
    /// The executable that `command = "$KEEL"` runs: normally the supervisor's own
    /// (`std::env::current_exe()`, the default).
    pub self_exe: PathBuf,
    /// Extra lines appended to the ready summary (e.g. where the gateway listens).
    pub summary_extra: Vec<String>,
    /// Where output goes; [`StdConsole`] (the supervisor's stdout and stderr) by default.
    pub console: Arc<dyn Console>,
    /// Environment given to every child unless its own `env` sets the same variable
    /// (e.g. `KEEL_LOG_FORMAT=text` when the supervisor runs on a terminal).
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            self_exe: std::env::current_exe().unwrap_or_default(),
            summary_extra: Vec::new(),
            console: Arc::new(StdConsole),
            env: Vec::new(),
        }
    }
}

/// Runs a [`Topology`]; see [`Supervisor::run`].
#[derive(Debug)]
pub struct Supervisor {
    topology: Topology,
    options: Options,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Starting,
    Ready { pid: u32 },
}

impl Supervisor {
    /// A supervisor for `topology`; nothing starts before [`Supervisor::run`].
    pub fn new(topology: Topology, options: Options) -> Self {
        Self { topology, options }
    }

    /// Brings the system up, keeps it running until `shutdown` is cancelled, then stops it.
    ///
    /// 1. Starts each process once every process it depends on is ready (independent ones in
    ///    parallel) and waits for it to become ready: its health URL answers 2xx within
    ///    `health_timeout_ms`, or, without one, it stays up for `ready_after_ms`.
    /// 2. When all are ready, prints one summary (name, pid, health URL, then
    ///    [`Options::summary_extra`]).
    /// 3. Restarts processes that exit, per their restart policy, with exponential backoff.
    /// 4. When `shutdown` is cancelled, stops everything in reverse dependency order (SIGTERM to
    ///    each process group, SIGKILL after `grace_period_ms`), reaps it, and returns `Ok`.
    ///
    /// If a process cannot be started, does not become ready in time, or exits before the
    /// system is up, everything started so far is stopped and [`SupervisorError::Start`] names
    /// it. If every process exits for good, returns `Ok` when all succeeded, else
    /// [`SupervisorError::AllExited`]. Dropping the future kills every child's process group.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SupervisorError> {
        let Self { topology, options } = self;
        let specs: Vec<Arc<ProcessSpec>> = topology
            .processes()
            .iter()
            .cloned()
            .map(|mut spec| {
                for (k, v) in &options.env {
                    spec.env.entry(k.clone()).or_insert_with(|| v.clone());
                }
                Arc::new(spec)
            })
            .collect();
        let printer = Printer::new(
            Arc::clone(&options.console),
            specs.iter().map(|p| p.name.as_str()),
        );
        let client = health::client().map_err(|e| SupervisorError::HealthClient {
            message: e.to_string(),
        })?;
        let (events, mut rx) = mpsc::unbounded_channel();
        let all_ready = CancellationToken::new();
        let shared = Shared {
            settings: topology.settings().clone(),
            self_exe: options.self_exe.clone(),
            printer: printer.clone(),
            client,
            events,
            all_ready: all_ready.clone(),
        };
        let mut fleet = Fleet {
            tasks: specs.iter().map(|_| None).collect(),
            stops: specs.iter().map(|_| CancellationToken::new()).collect(),
            levels: specs.iter().map(|p| topology.level(p)).collect(),
            printer: printer.clone(),
        };

        // 1. Start-up, in dependency order.
        let started_at = Instant::now();
        printer.info(format!(
            "starting {} from {}",
            plural(specs.len(), "process", "processes"),
            topology.source_name()
        ));
        let mut state = vec![State::Waiting; specs.len()];
        loop {
            for (index, spec) in specs.iter().enumerate() {
                if state[index] == State::Waiting && dependencies_ready(spec, &specs, &state) {
                    state[index] = State::Starting;
                    let stop = fleet.stops[index].clone();
                    let task = instance::run(index, Arc::clone(spec), shared.clone(), stop);
                    fleet.tasks[index] = Some(AbortOnDropHandle::new(tokio::spawn(task)));
                }
            }
            if state.iter().all(|s| matches!(s, State::Ready { .. })) {
                break;
            }
            let event = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    printer.info("shutdown requested during start-up");
                    fleet.stop_all().await;
                    return Ok(());
                }
                event = rx.recv() => event,
            };
            match event {
                Some(Event::Ready { index, pid }) => state[index] = State::Ready { pid },
                Some(Event::StartFailed { index, failure }) => {
                    return Err(fleet.fail(&specs[index].name, failure).await);
                }
                // `Ended` is only sent once all are ready; `None` cannot happen while
                // `shared` holds a sender.
                Some(Event::Ended { .. }) | None => {}
            }
        }
        all_ready.cancel();
        // An exit that raced with the last readiness still counts as a start-up failure.
        while let Ok(event) = rx.try_recv() {
            if let Event::StartFailed { index, failure } = event {
                return Err(fleet.fail(&specs[index].name, failure).await);
            }
        }

        // 2. The summary.
        let mut summary = vec![format!(
            "ready: {} up in {}",
            plural(specs.len(), "process", "processes"),
            human_duration(started_at.elapsed())
        )];
        let width = specs.iter().map(|p| p.name.len()).max().unwrap_or(0);
        // Dependencies before dependents, file order within a level.
        let mut order: Vec<usize> = (0..specs.len()).collect();
        order.sort_by_key(|&i| fleet.levels[i]);
        for (spec, state) in order.iter().map(|&i| (&specs[i], &state[i])) {
            let pid = match state {
                State::Ready { pid } => pid.to_string(),
                _ => "?".to_owned(),
            };
            let health = match &spec.health {
                Some(url) => url.clone(),
                None => format!(
                    "(no health URL; up for {})",
                    human_duration(spec.ready_after)
                ),
            };
            summary.push(format!("  {:<width$}  pid {pid:<7}  {health}", spec.name));
        }
        summary.extend(shared.settings.notes.iter().map(|n| format!("  {n}")));
        summary.extend(options.summary_extra.iter().cloned());
        printer.lines(Stream::Stdout, &summary.join("\n"));

        // 3. Supervision: restarts happen in the instance tasks.
        let mut ended = 0;
        let mut failed = Vec::new();
        loop {
            let event = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                event = rx.recv() => event,
            };
            match event {
                Some(Event::Ended { index, success }) => {
                    ended += 1;
                    if !success {
                        failed.push(specs[index].name.clone());
                    }
                    if ended == specs.len() {
                        printer.info("all processes have exited");
                        fleet.stop_all().await;
                        return if failed.is_empty() {
                            Ok(())
                        } else {
                            Err(SupervisorError::AllExited { failed })
                        };
                    }
                }
                Some(Event::StartFailed { index, failure }) => {
                    return Err(fleet.fail(&specs[index].name, failure).await);
                }
                Some(Event::Ready { .. }) | None => {}
            }
        }

        // 4. Orderly stop.
        printer.info("shutting down");
        fleet.stop_all().await;
        Ok(())
    }
}

/// Whether every instance of every process `spec` depends on is ready.
fn dependencies_ready(spec: &ProcessSpec, specs: &[Arc<ProcessSpec>], state: &[State]) -> bool {
    spec.depends_on.iter().all(|group| {
        specs
            .iter()
            .zip(state)
            .filter(|(s, _)| s.group == *group)
            .all(|(_, st)| matches!(st, State::Ready { .. }))
    })
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The instance tasks, with what is needed to stop them in order. Dropping it aborts every
/// task, which kills every child's process group.
#[derive(Debug)]
struct Fleet {
    tasks: Vec<Option<AbortOnDropHandle<()>>>,
    stops: Vec<CancellationToken>,
    levels: Vec<usize>,
    printer: Printer,
}

impl Fleet {
    /// Stops every instance task, dependents before their dependencies; instances of the same
    /// level stop in parallel.
    async fn stop_all(&mut self) {
        let live = self
            .tasks
            .iter()
            .flatten()
            .filter(|t| !t.is_finished())
            .count();
        if live > 0 {
            self.printer
                .info(format!("stopping {}", plural(live, "process", "processes")));
        }
        let top = self.levels.iter().copied().max().unwrap_or(0);
        for level in (0..=top).rev() {
            let members: Vec<usize> = (0..self.tasks.len())
                .filter(|&i| self.levels[i] == level && self.tasks[i].is_some())
                .collect();
            for &i in &members {
                self.stops[i].cancel();
            }
            for i in members {
                if let Some(task) = self.tasks[i].take() {
                    let _ = task.await;
                }
            }
        }
        if live > 0 {
            self.printer.info("all processes stopped");
        }
    }

    /// Reports a start-up failure, stops everything, and returns the error.
    async fn fail(&mut self, name: &str, failure: StartFailure) -> SupervisorError {
        self.printer.lines(
            Stream::Stderr,
            &format!("{name} failed to start: {failure}"),
        );
        self.stop_all().await;
        SupervisorError::Start {
            process: name.to_owned(),
            failure,
        }
    }
}
