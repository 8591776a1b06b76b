//! One running child: spawned in its own process group, output pumped through the printer,
//! stopped with SIGTERM → grace → SIGKILL to the whole group.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::console::{Printer, Stream, describe_exit, human_duration};
use crate::topology::{CommandSpec, ProcessSpec};

/// Longest output line passed through in one piece; longer lines are split.
const MAX_LINE: u64 = 64 * 1024;
/// How long to wait for a stopped child's remaining output.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// A spawned child. Dropping it before it has been reaped kills its whole process group.
#[derive(Debug)]
pub(super) struct Running {
    name: String,
    child: Child,
    pid: u32,
    started: Instant,
    pumps: Vec<JoinHandle<()>>,
    /// Whether the group leader has been reaped (after which the group id may be reused and
    /// must no longer be signalled).
    reaped: bool,
}

/// The program `spec` runs, as it will be passed to `exec`.
pub(super) fn program(spec: &ProcessSpec, self_exe: &Path) -> PathBuf {
    match &spec.command {
        CommandSpec::SelfExe => self_exe.to_path_buf(),
        CommandSpec::Program(p) => {
            let p = Path::new(p);
            if p.is_absolute() || !p.as_os_str().as_encoded_bytes().contains(&b'/') {
                return p.to_path_buf();
            }
            // A relative path: relative to the child's working directory, made absolute so
            // it does not depend on how `exec` and `chdir` are ordered.
            let dir = spec.cwd.clone().unwrap_or_default();
            std::path::absolute(dir.join(p)).unwrap_or_else(|_| dir.join(p))
        }
    }
}

impl Running {
    /// Spawns `spec` in a new process group with stdin closed and output piped to `printer`.
    pub(super) fn spawn(
        spec: &ProcessSpec,
        self_exe: &Path,
        printer: &Printer,
    ) -> io::Result<Self> {
        let mut cmd = Command::new(program(spec, self_exe));
        cmd.args(&spec.args)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd.spawn()?;
        let Some(pid) = child.id() else {
            return Err(io::Error::other(
                "the child exited before its pid was known",
            ));
        };
        tracing::debug!(process = %spec.name, pid, program = ?cmd.as_std().get_program(), "spawned");
        let mut pumps = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            pumps.push(pump(
                out,
                spec.name.clone(),
                Stream::Stdout,
                printer.clone(),
            ));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(pump(
                err,
                spec.name.clone(),
                Stream::Stderr,
                printer.clone(),
            ));
        }
        Ok(Self {
            name: spec.name.clone(),
            child,
            pid,
            started: Instant::now(),
            pumps,
            reaped: false,
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    pub(super) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(self.pid as i32)
    }

    fn signal_group(&self, signal: Signal) {
        if !self.reaped {
            // ESRCH (already gone) and EPERM are not actionable here.
            let _ = killpg(self.pgid(), signal);
        }
    }

    /// Waits for the group leader to exit. Cancel-safe.
    pub(super) async fn wait(&mut self) -> io::Result<ExitStatus> {
        if self.reaped {
            // Not reached by the callers; `try_wait` returns the cached status.
            return self
                .child
                .try_wait()?
                .ok_or_else(|| io::Error::other("no exit status"));
        }
        let status = self.child.wait().await;
        // Like a container: once the main process has exited, whatever is left of its group
        // is killed. The leader is a zombie until reaped, so the group id is still ours.
        let _ = killpg(self.pgid(), Signal::SIGKILL);
        self.reaped = status.is_ok();
        status
    }

    /// After the leader exited: lets the output pumps finish (bounded).
    pub(super) async fn drain(&mut self) {
        for pump in self.pumps.drain(..) {
            let abort = pump.abort_handle();
            if tokio::time::timeout(DRAIN_TIMEOUT, pump).await.is_err() {
                abort.abort();
            }
        }
    }

    /// Stops the process: SIGTERM to the group, SIGKILL after `grace`, then reaps it.
    pub(super) async fn stop(
        &mut self,
        grace: Duration,
        printer: &Printer,
    ) -> io::Result<ExitStatus> {
        self.signal_group(Signal::SIGTERM);
        let status = match tokio::time::timeout(grace, self.wait()).await {
            Ok(status) => status,
            Err(_) => {
                printer.warn(format!(
                    "{} (pid {}) did not stop within {}; sending SIGKILL",
                    self.name,
                    self.pid,
                    human_duration(grace)
                ));
                self.signal_group(Signal::SIGKILL);
                self.wait().await
            }
        };
        self.drain().await;
        match &status {
            Ok(s) => printer.info(format!("{} stopped ({})", self.name, describe_exit(*s))),
            Err(e) => printer.warn(format!("{}: cannot wait for it: {e}", self.name)),
        }
        status
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // The safety net when the supervisor is dropped mid-run: `kill_on_drop` only reaches
        // the leader, so kill the whole group while its id is certainly still ours.
        self.signal_group(Signal::SIGKILL);
        for pump in &self.pumps {
            pump.abort();
        }
    }
}

/// Copies lines from a child's pipe to the printer until end of file.
fn pump(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    name: String,
    stream: Stream,
    printer: Printer,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match (&mut reader)
                .take(MAX_LINE)
                .read_until(b'\n', &mut buf)
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    printer.child(&name, stream, &String::from_utf8_lossy(line));
                }
            }
        }
    })
}
