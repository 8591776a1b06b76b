//! Where the supervisor's output goes: children's lines prefixed with their name, and the
//! supervisor's own lines prefixed with `supervisor`.

use std::fmt;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

/// Which of the supervisor's output streams a line belongs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// The supervisor's output sink. The default, [`StdConsole`], writes to the process's own
/// stdout and stderr; tests and embedders can capture the output instead.
pub trait Console: Send + Sync + fmt::Debug {
    /// Writes `text` — one or more complete lines, already prefixed, without the final
    /// newline — to `stream`, in one piece so it is not interleaved with other output.
    fn write(&self, stream: Stream, text: &str);
}

/// Writes to the supervisor's stdout and stderr, ignoring write errors (a closed pipe must not
/// stop the supervisor).
#[derive(Debug, Clone, Copy, Default)]
pub struct StdConsole;

impl Console for StdConsole {
    fn write(&self, stream: Stream, text: &str) {
        let mut buf = String::with_capacity(text.len() + 1);
        buf.push_str(text);
        buf.push('\n');
        let _ = match stream {
            Stream::Stdout => std::io::stdout().lock().write_all(buf.as_bytes()),
            Stream::Stderr => std::io::stderr().lock().write_all(buf.as_bytes()),
        };
    }
}

const SUPERVISOR: &str = "supervisor";

/// Formats lines with a padded name prefix (`greeter-1  | …`).
#[derive(Debug, Clone)]
pub(crate) struct Printer {
    console: Arc<dyn Console>,
    width: usize,
}

impl Printer {
    pub(crate) fn new<'a>(console: Arc<dyn Console>, names: impl Iterator<Item = &'a str>) -> Self {
        let width = names
            .map(str::len)
            .chain([SUPERVISOR.len()])
            .max()
            .unwrap_or(0);
        Self { console, width }
    }

    fn prefixed(&self, name: &str, line: &str) -> String {
        format!("{name:<width$} | {line}", width = self.width)
    }

    /// A line of a child's output.
    pub(crate) fn child(&self, name: &str, stream: Stream, line: &str) {
        self.console.write(stream, &self.prefixed(name, line));
    }

    /// A supervisor status line (stdout).
    pub(crate) fn info(&self, message: impl AsRef<str>) {
        self.lines(Stream::Stdout, message.as_ref());
    }

    /// A supervisor problem line (stderr).
    pub(crate) fn warn(&self, message: impl AsRef<str>) {
        self.lines(Stream::Stderr, message.as_ref());
    }

    /// Several supervisor lines written together.
    pub(crate) fn lines(&self, stream: Stream, text: &str) {
        let block: Vec<String> = text.lines().map(|l| self.prefixed(SUPERVISOR, l)).collect();
        self.console.write(stream, &block.join("\n"));
    }
}

/// `exited with status 1`, `was killed by signal 9 (SIGKILL)`.
pub(crate) fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(signal) = status.signal() {
        match nix::sys::signal::Signal::try_from(signal) {
            Ok(s) => format!("was killed by signal {signal} ({})", s.as_str()),
            Err(_) => format!("was killed by signal {signal}"),
        }
    } else {
        format!("exited ({status})")
    }
}

/// `250ms`, `1s`, `1.5s`, `2m30s`.
pub(crate) fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{:.1}s", d.as_secs_f64())
        }
    } else {
        let s = d.as_secs();
        match s % 60 {
            0 => format!("{}m", s / 60),
            rest => format!("{}m{rest}s", s / 60),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Default)]
    struct Capture(Mutex<Vec<(Stream, String)>>);

    impl Console for Capture {
        fn write(&self, stream: Stream, text: &str) {
            self.0.lock().unwrap().push((stream, text.to_owned()));
        }
    }

    #[test]
    fn prefixes_are_padded_to_the_longest_name() {
        let capture = Arc::new(Capture::default());
        let printer = Printer::new(capture.clone(), ["a", "greeter-10"].into_iter());
        printer.child("a", Stream::Stderr, "hello");
        printer.info("one\ntwo");
        let got = capture.0.lock().unwrap().clone();
        assert_eq!(
            got,
            [
                (Stream::Stderr, "a          | hello".to_owned()),
                (
                    Stream::Stdout,
                    "supervisor | one\nsupervisor | two".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn exits_are_described() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(1 << 8)),
            "exited with status 1"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(9)),
            "was killed by signal 9 (SIGKILL)"
        );
    }

    #[test]
    fn durations_are_human() {
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(human_duration(Duration::from_secs(1)), "1s");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human_duration(Duration::from_secs(150)), "2m30s");
        assert_eq!(human_duration(Duration::from_secs(60)), "1m");
    }
}
