//! The topology: which processes to run, how, and in which order. Loaded from TOML, validated
//! and expanded (one [`ProcessSpec`] per instance) before anything is started.

mod file;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::TopologyError;
use file::{FileProcess, FileSettings, FileTopology};

/// The topology file `keel up` reads when no path is given.
pub const DEFAULT_FILE: &str = "keel.toml";

/// The `command` value that means "the supervisor's own executable" ([`crate::Options::self_exe`]),
/// so one binary can run the whole system.
pub const SELF_COMMAND: &str = "$KEEL";

/// A validated topology: settings plus one [`ProcessSpec`] per process instance.
#[derive(Debug, Clone)]
pub struct Topology {
    source: String,
    settings: Settings,
    processes: Vec<ProcessSpec>,
    /// Start level of each `[[process]]` entry: 0 without dependencies, else one more than the
    /// deepest dependency. Dependents always have a higher level than what they depend on.
    levels: HashMap<String, usize>,
}

/// The `[supervisor]` section, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// How long a stopping process may take after `SIGTERM` before it gets `SIGKILL`
    /// (`grace_period_ms`, default 10 s).
    pub grace_period: Duration,
    /// How long a process may take to become ready at start-up (`health_timeout_ms`,
    /// default 60 s).
    pub health_timeout: Duration,
    /// Pause between two health probes (`health_interval_ms`, default 200 ms).
    pub health_interval: Duration,
    /// Restart backoff (`restart_initial_ms`, `restart_max_ms`, `restart_reset_after_ms`).
    pub restart_backoff: RestartBackoff,
    /// Lines printed under the ready summary (`notes`): URLs to open, requests to try.
    pub notes: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(10),
            health_timeout: Duration::from_secs(60),
            health_interval: Duration::from_millis(200),
            restart_backoff: RestartBackoff::default(),
            notes: Vec::new(),
        }
    }
}

/// Exponential restart backoff: the first restart waits `initial`, each further one twice as
/// long up to `max`; a process that stayed up for `reset_after` starts again from `initial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestartBackoff {
    /// Delay before the first restart (`restart_initial_ms`, default 500 ms).
    pub initial: Duration,
    /// Longest delay (`restart_max_ms`, default 30 s).
    pub max: Duration,
    /// Uptime after which the delay resets to `initial` (`restart_reset_after_ms`, default 10 s).
    pub reset_after: Duration,
}

impl Default for RestartBackoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        }
    }
}

/// When a process that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whatever the exit status.
    Always,
    /// Only after a non-zero exit status or a signal (the default).
    #[default]
    OnFailure,
    /// Never.
    Never,
}

impl RestartPolicy {
    /// Whether a process that exited (successfully or not) is restarted.
    pub fn restarts(self, success: bool) -> bool {
        match self {
            Self::Always => true,
            Self::OnFailure => !success,
            Self::Never => false,
        }
    }

    /// The spelling used in the topology file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::OnFailure => "on-failure",
            Self::Never => "never",
        }
    }
}

/// What to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandSpec {
    /// The supervisor's own executable (`command = "$KEEL"`).
    SelfExe,
    /// A program: looked up on `PATH` if it has no `/`, else a path (a relative one is taken
    /// relative to the process's working directory).
    Program(String),
}

/// One process instance, ready to start: placeholders substituted, paths resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessSpec {
    /// Unique name: the `[[process]]` name, or `name-N` for instance N when `instances` is set.
    pub name: String,
    /// The `[[process]]` entry this instance belongs to (what `depends_on` refers to).
    pub group: String,
    /// Instance number, from 1.
    pub instance: u32,
    /// What to execute.
    pub command: CommandSpec,
    /// Arguments.
    pub args: Vec<String>,
    /// Variables added to the supervisor's environment.
    pub env: BTreeMap<String, String>,
    /// Working directory; `None` means the supervisor's.
    pub cwd: Option<PathBuf>,
    /// URL polled with `GET` until it answers 2xx; `None` means ready after [`Self::ready_after`].
    pub health: Option<String>,
    /// Without a health URL: how long the process must have been running to count as ready.
    pub ready_after: Duration,
    /// The `[[process]]` entries that must be ready (every instance) before this one starts.
    pub depends_on: Vec<String>,
    /// When to restart it after it exits.
    pub restart: RestartPolicy,
    /// This instance's port (`port` plus instance number minus one), if `port` is set.
    pub port: Option<u16>,
}

impl Topology {
    /// Reads and validates a topology file. Relative `cwd` values are taken relative to the
    /// file's directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TopologyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| TopologyError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty());
        Self::parse(&text, &path.display().to_string(), base)
    }

    /// Parses and validates topology text. `source_name` names it in error messages (e.g. the
    /// file name); relative `cwd` values stay relative to the supervisor's working directory.
    pub fn from_str(text: &str, source_name: &str) -> Result<Self, TopologyError> {
        Self::parse(text, source_name, None)
    }

    /// The file name (or `source_name`) this topology came from.
    pub fn source_name(&self) -> &str {
        &self.source
    }

    /// The `[supervisor]` settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Every process instance, in file order.
    pub fn processes(&self) -> &[ProcessSpec] {
        &self.processes
    }

    /// Start level of a process instance: dependents always have a higher level than their
    /// dependencies, so stopping by descending level stops in reverse dependency order.
    pub(crate) fn level(&self, process: &ProcessSpec) -> usize {
        self.levels.get(&process.group).copied().unwrap_or(0)
    }

    fn parse(text: &str, source: &str, base: Option<&Path>) -> Result<Self, TopologyError> {
        let file: FileTopology = toml::from_str(text).map_err(|e| parse_error(source, text, &e))?;
        let v = Validator { source };
        let settings = v.settings(&file.supervisor)?;
        if file.process.is_empty() {
            return Err(v.top(
                "process",
                "defines no processes (add a [[process]] table)".to_owned(),
            ));
        }
        let ready_after_default =
            Duration::from_millis(file.supervisor.ready_after_ms.unwrap_or(500));
        let mut processes = Vec::new();
        let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
        for p in &file.process {
            v.check_name(p, &groups)?;
            let depends_on = dedup(&p.depends_on);
            for instance in v.expand(p, base, ready_after_default, &depends_on)? {
                processes.push(instance);
            }
            groups.push((&p.name, depends_on));
        }
        v.check_instance_names(&processes)?;
        v.check_dependencies(&groups)?;
        let levels = levels(&groups);
        Ok(Self {
            source: source.to_owned(),
            settings,
            processes,
            levels,
        })
    }
}

fn parse_error(source: &str, text: &str, e: &toml::de::Error) -> TopologyError {
    let (line, column) = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (Some(line), Some(column))
        }
        None => (None, None),
    };
    TopologyError::Parse {
        file: source.to_owned(),
        line,
        column,
        message: e.message().trim_end().to_owned(),
    }
}

fn dedup(names: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .cloned()
        .collect()
}

const PORT: &str = "{port}";

fn substitute(text: &str, name: &str, instance: u32, port: Option<u16>) -> String {
    let mut out = text
        .replace("{name}", name)
        .replace("{instance}", &instance.to_string());
    if let Some(port) = port {
        out = out.replace(PORT, &port.to_string());
    }
    out
}

struct Validator<'a> {
    source: &'a str,
}

impl Validator<'_> {
    fn top(&self, field: &str, message: String) -> TopologyError {
        TopologyError::Invalid {
            file: self.source.to_owned(),
            process: None,
            field: field.to_owned(),
            message,
        }
    }

    fn process(&self, process: &str, field: &str, message: String) -> TopologyError {
        TopologyError::Invalid {
            file: self.source.to_owned(),
            process: Some(process.to_owned()),
            field: field.to_owned(),
            message,
        }
    }

    fn settings(&self, s: &FileSettings) -> Result<Settings, TopologyError> {
        let d = Settings::default();
        let ms = |v: Option<u64>, default: Duration| v.map_or(default, Duration::from_millis);
        let settings = Settings {
            grace_period: ms(s.grace_period_ms, d.grace_period),
            health_timeout: ms(s.health_timeout_ms, d.health_timeout),
            health_interval: ms(s.health_interval_ms, d.health_interval),
            restart_backoff: RestartBackoff {
                initial: ms(s.restart_initial_ms, d.restart_backoff.initial),
                max: ms(s.restart_max_ms, d.restart_backoff.max),
                reset_after: ms(s.restart_reset_after_ms, d.restart_backoff.reset_after),
            },
            notes: s.notes.clone(),
        };
        for (field, value) in [
            ("health_timeout_ms", settings.health_timeout),
            ("health_interval_ms", settings.health_interval),
            ("restart_initial_ms", settings.restart_backoff.initial),
        ] {
            if value.is_zero() {
                return Err(self.top(
                    &format!("supervisor.{field}"),
                    format!("supervisor.{field} must be at least 1"),
                ));
            }
        }
        let b = settings.restart_backoff;
        if b.max < b.initial {
            return Err(self.top(
                "supervisor.restart_max_ms",
                format!(
                    "supervisor.restart_max_ms ({}) must not be less than restart_initial_ms ({})",
                    b.max.as_millis(),
                    b.initial.as_millis()
                ),
            ));
        }
        Ok(settings)
    }

    fn check_name(
        &self,
        p: &FileProcess,
        seen: &[(&str, Vec<String>)],
    ) -> Result<(), TopologyError> {
        let name = p.name.as_str();
        if name.is_empty() {
            return Err(self.top("name", "a process has an empty name".to_owned()));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(self.process(
                name,
                "name",
                "name may contain only ASCII letters, digits, '-', '_' and '.'".to_owned(),
            ));
        }
        if name == "supervisor" {
            return Err(self.process(
                name,
                "name",
                "name \"supervisor\" is reserved for the supervisor's own output".to_owned(),
            ));
        }
        if seen.iter().any(|(n, _)| *n == name) {
            return Err(self.process(
                name,
                "name",
                "name is used by more than one process".to_owned(),
            ));
        }
        Ok(())
    }

    fn expand(
        &self,
        p: &FileProcess,
        base: Option<&Path>,
        ready_after_default: Duration,
        depends_on: &[String],
    ) -> Result<Vec<ProcessSpec>, TopologyError> {
        let name = p.name.as_str();
        let command = p.command.trim();
        if command.is_empty() {
            return Err(self.process(name, "command", "command is empty".to_owned()));
        }
        let command = if command == SELF_COMMAND {
            CommandSpec::SelfExe
        } else {
            CommandSpec::Program(command.to_owned())
        };
        let count = p.instances.unwrap_or(1);
        if count == 0 {
            return Err(self.process(name, "instances", "instances must be at least 1".to_owned()));
        }
        match p.port {
            Some(0) => {
                return Err(self.process(
                    name,
                    "port",
                    "port must be between 1 and 65535".to_owned(),
                ));
            }
            Some(port) if u32::from(port) + count - 1 > u32::from(u16::MAX) => {
                return Err(self.process(
                    name,
                    "port",
                    format!("port {port} plus {count} instances goes past 65535"),
                ));
            }
            Some(_) => {}
            None => {
                let uses_port = [
                    ("args", p.args.iter().any(|a| a.contains(PORT))),
                    ("env", p.env.values().any(|v| v.contains(PORT))),
                    (
                        "health",
                        p.health.as_deref().is_some_and(|h| h.contains(PORT)),
                    ),
                    ("cwd", p.cwd.as_deref().is_some_and(|c| c.contains(PORT))),
                ];
                if let Some((field, _)) = uses_port.iter().find(|(_, used)| *used) {
                    return Err(self.process(
                        name,
                        field,
                        format!("{field} uses {PORT} but the process sets no port"),
                    ));
                }
            }
        }
        if let Some(key) = p
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains(['=', '\0']))
        {
            return Err(self.process(
                name,
                "env",
                format!("env has an invalid variable name {key:?}"),
            ));
        }

        let mut out = Vec::new();
        for instance in 1..=count {
            let instance_name = if p.instances.is_some() {
                format!("{name}-{instance}")
            } else {
                name.to_owned()
            };
            let port = p.port.map(|base| base + (instance - 1) as u16);
            let sub = |s: &str| substitute(s, &instance_name, instance, port);
            let health = match &p.health {
                Some(url) => Some(self.health_url(name, &sub(url))?),
                None => None,
            };
            let cwd = p.cwd.as_deref().map(|c| {
                let c = PathBuf::from(sub(c));
                match base {
                    Some(base) if c.is_relative() => base.join(c),
                    _ => c,
                }
            });
            out.push(ProcessSpec {
                name: instance_name.clone(),
                group: name.to_owned(),
                instance,
                command: command.clone(),
                args: p.args.iter().map(|a| sub(a)).collect(),
                env: p.env.iter().map(|(k, v)| (k.clone(), sub(v))).collect(),
                cwd,
                health,
                ready_after: p
                    .ready_after_ms
                    .map_or(ready_after_default, Duration::from_millis),
                depends_on: depends_on.to_vec(),
                restart: p.restart,
                port,
            });
        }
        Ok(out)
    }

    fn health_url(&self, name: &str, url: &str) -> Result<String, TopologyError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| {
            self.process(
                name,
                "health",
                format!("health {url:?} is not a valid URL: {e}"),
            )
        })?;
        if parsed.scheme() != "http" {
            return Err(self.process(
                name,
                "health",
                format!("health {url:?} must be an http:// URL (https is not supported)"),
            ));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(self.process(name, "health", format!("health {url:?} has no host")));
        }
        Ok(url.to_owned())
    }

    fn check_instance_names(&self, processes: &[ProcessSpec]) -> Result<(), TopologyError> {
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for p in processes {
            if let Some(other) = seen.insert(&p.name, &p.group) {
                return Err(self.process(
                    &p.group,
                    "name",
                    format!(
                        "instance name {:?} is also used by process {other:?}",
                        p.name
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_dependencies(&self, groups: &[(&str, Vec<String>)]) -> Result<(), TopologyError> {
        let known: HashSet<&str> = groups.iter().map(|(n, _)| *n).collect();
        for (name, deps) in groups {
            if let Some(dep) = deps.iter().find(|d| !known.contains(d.as_str())) {
                return Err(self.process(
                    name,
                    "depends_on",
                    format!("depends_on names unknown process {dep:?}"),
                ));
            }
        }
        if let Some(cycle) = find_cycle(groups) {
            return Err(self.process(
                &cycle[0],
                "depends_on",
                format!("depends_on forms a cycle: {}", cycle.join(" -> ")),
            ));
        }
        Ok(())
    }
}

/// A dependency cycle as a path that starts and ends with the same name, if there is one.
fn find_cycle(groups: &[(&str, Vec<String>)]) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let index: HashMap<&str, usize> = groups
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (*n, i))
        .collect();
    let mut marks = vec![Mark::New; groups.len()];
    for root in 0..groups.len() {
        if marks[root] != Mark::New {
            continue;
        }
        // Iterative depth-first search; `path` holds (node, next dependency to visit).
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        marks[root] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            let Some(dep) = groups[node].1.get(*next) else {
                marks[node] = Mark::Done;
                path.pop();
                continue;
            };
            *next += 1;
            let Some(&dep) = index.get(dep.as_str()) else {
                continue;
            };
            match marks[dep] {
                Mark::New => {
                    marks[dep] = Mark::Open;
                    path.push((dep, 0));
                }
                Mark::Open => {
                    let start = path.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                    let mut cycle: Vec<String> = path[start..]
                        .iter()
                        .map(|(n, _)| groups[*n].0.to_owned())
                        .collect();
                    cycle.push(groups[dep].0.to_owned());
                    return Some(cycle);
                }
                Mark::Done => {}
            }
        }
    }
    None
}

/// Start level per `[[process]]` entry (the graph is known to be acyclic).
fn levels(groups: &[(&str, Vec<String>)]) -> HashMap<String, usize> {
    let mut levels: HashMap<String, usize> = HashMap::new();
    // Relaxation: at most `groups.len()` rounds for an acyclic graph.
    for _ in 0..=groups.len() {
        let mut changed = false;
        for (name, deps) in groups {
            let level = deps
                .iter()
                .map(|d| levels.get(d).copied().unwrap_or(0) + 1)
                .max()
                .unwrap_or(0);
            if levels.get(*name) != Some(&level) {
                levels.insert((*name).to_owned(), level);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    levels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Topology, TopologyError> {
        Topology::from_str(text, "keel.toml")
    }

    fn err(text: &str) -> String {
        match load(text) {
            Ok(t) => panic!("expected an error, got {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_process_gets_defaults() {
        let t = load("[[process]]\nname = \"a\"\ncommand = \"sleep\"\nargs = [\"10\"]\n").unwrap();
        assert_eq!(t.settings(), &Settings::default());
        let [p] = t.processes() else {
            panic!("one process expected")
        };
        assert_eq!(p.name, "a");
        assert_eq!(p.instance, 1);
        assert_eq!(p.command, CommandSpec::Program("sleep".to_owned()));
        assert_eq!(p.args, ["10"]);
        assert_eq!(p.restart, RestartPolicy::OnFailure);
        assert_eq!(p.ready_after, Duration::from_millis(500));
        assert_eq!(p.health, None);
        assert_eq!(p.port, None);
    }

    #[test]
    fn full_file_parses() {
        let t = load(
            r#"
            [supervisor]
            grace_period_ms = 100
            health_timeout_ms = 2000
            health_interval_ms = 10
            ready_after_ms = 50
            restart_initial_ms = 20
            restart_max_ms = 80
            restart_reset_after_ms = 1000

            [[process]]
            name = "registry"
            command = "$KEEL"
            args = ["registry"]
            restart = "always"

            [[process]]
            name = "greeter"
            command = "/usr/bin/env"
            args = ["serve", "--port={port}", "--id={name}/{instance}"]
            env = { PORT = "{port}", MODE = "x" }
            instances = 2
            port = 8081
            health = "http://127.0.0.1:{port}/health"
            depends_on = ["registry"]
            restart = "never"
            ready_after_ms = 7
            "#,
        )
        .unwrap();
        let s = t.settings();
        assert_eq!(s.grace_period, Duration::from_millis(100));
        assert_eq!(s.health_timeout, Duration::from_millis(2000));
        assert_eq!(s.health_interval, Duration::from_millis(10));
        assert_eq!(
            s.restart_backoff,
            RestartBackoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(80),
                reset_after: Duration::from_millis(1000),
            }
        );
        let names: Vec<_> = t.processes().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["registry", "greeter-1", "greeter-2"]);
        let reg = &t.processes()[0];
        assert_eq!(reg.command, CommandSpec::SelfExe);
        assert_eq!(reg.restart, RestartPolicy::Always);
        assert_eq!(reg.ready_after, Duration::from_millis(50));
        let g2 = &t.processes()[2];
        assert_eq!(g2.group, "greeter");
        assert_eq!(g2.instance, 2);
        assert_eq!(g2.port, Some(8082));
        assert_eq!(g2.args, ["serve", "--port=8082", "--id=greeter-2/2"]);
        assert_eq!(g2.env["PORT"], "8082");
        assert_eq!(g2.env["MODE"], "x");
        assert_eq!(g2.health.as_deref(), Some("http://127.0.0.1:8082/health"));
        assert_eq!(g2.depends_on, ["registry"]);
        assert_eq!(g2.restart, RestartPolicy::Never);
        assert_eq!(g2.ready_after, Duration::from_millis(7));
        assert_eq!(t.level(reg), 0);
        assert_eq!(t.level(g2), 1);
    }

    #[test]
    fn levels_follow_the_longest_dependency_chain() {
        let t = load(
            r#"
            [[process]]
            name = "c"
            command = "x"
            depends_on = ["b", "a"]
            [[process]]
            name = "b"
            command = "x"
            depends_on = ["a"]
            [[process]]
            name = "a"
            command = "x"
            "#,
        )
        .unwrap();
        let level = |n: &str| t.level(t.processes().iter().find(|p| p.name == n).unwrap());
        assert_eq!((level("a"), level("b"), level("c")), (0, 1, 2));
    }

    #[test]
    fn unknown_dependency_names_process_field_and_file() {
        let e = err("[[process]]\nname = \"api\"\ncommand = \"x\"\ndepends_on = [\"db\"]\n");
        assert_eq!(
            e,
            r#"keel.toml: process "api": depends_on names unknown process "db""#
        );
    }

    #[test]
    fn dependency_cycle_is_reported_with_its_path() {
        let e = err(r#"
            [[process]]
            name = "a"
            command = "x"
            depends_on = ["b"]
            [[process]]
            name = "b"
            command = "x"
            depends_on = ["c"]
            [[process]]
            name = "c"
            command = "x"
            depends_on = ["a"]
            "#);
        assert_eq!(
            e,
            r#"keel.toml: process "a": depends_on forms a cycle: a -> b -> c -> a"#
        );
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let e = err("[[process]]\nname = \"a\"\ncommand = \"x\"\ndepends_on = [\"a\"]\n");
        assert_eq!(
            e,
            r#"keel.toml: process "a": depends_on forms a cycle: a -> a"#
        );
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let e = err(
            "[[process]]\nname = \"a\"\ncommand = \"x\"\n[[process]]\nname = \"a\"\ncommand = \"y\"\n",
        );
        assert_eq!(
            e,
            r#"keel.toml: process "a": name is used by more than one process"#
        );
    }

    #[test]
    fn instance_names_must_not_collide() {
        let e = err(
            "[[process]]\nname = \"a-2\"\ncommand = \"x\"\n[[process]]\nname = \"a\"\ncommand = \"y\"\ninstances = 2\n",
        );
        assert_eq!(
            e,
            r#"keel.toml: process "a": instance name "a-2" is also used by process "a-2""#
        );
    }

    #[test]
    fn empty_command_is_rejected() {
        let e = err("[[process]]\nname = \"a\"\ncommand = \"  \"\n");
        assert_eq!(e, r#"keel.toml: process "a": command is empty"#);
    }

    #[test]
    fn bad_health_urls_are_rejected() {
        let e = err("[[process]]\nname = \"a\"\ncommand = \"x\"\nhealth = \"not a url\"\n");
        assert!(
            e.starts_with(r#"keel.toml: process "a": health "not a url" is not a valid URL"#),
            "{e}"
        );
        let e = err("[[process]]\nname = \"a\"\ncommand = \"x\"\nhealth = \"https://h/x\"\n");
        assert!(e.contains("must be an http:// URL"), "{e}");
    }

    #[test]
    fn port_placeholder_needs_a_port() {
        let e = err("[[process]]\nname = \"a\"\ncommand = \"x\"\nargs = [\"--port={port}\"]\n");
        assert_eq!(
            e,
            r#"keel.toml: process "a": args uses {port} but the process sets no port"#
        );
        let e = err("[[process]]\nname = \"a\"\ncommand = \"x\"\nport = 65535\ninstances = 2\n");
        assert_eq!(
            e,
            r#"keel.toml: process "a": port 65535 plus 2 instances goes past 65535"#
        );
    }

    #[test]
    fn zero_instances_and_bad_names_are_rejected() {
        let e = err("[[process]]\nname = \"a\"\ncommand = \"x\"\ninstances = 0\n");
        assert_eq!(e, r#"keel.toml: process "a": instances must be at least 1"#);
        let e = err("[[process]]\nname = \"a b\"\ncommand = \"x\"\n");
        assert!(
            e.starts_with(r#"keel.toml: process "a b": name may contain only"#),
            "{e}"
        );
        let e = err("[[process]]\nname = \"supervisor\"\ncommand = \"x\"\n");
        assert!(e.contains("reserved"), "{e}");
    }

    #[test]
    fn unknown_keys_are_parse_errors_with_line_and_column() {
        let e =
            load("[[process]]\nname = \"a\"\ncommand = \"x\"\nrestrat = \"always\"\n").unwrap_err();
        let TopologyError::Parse {
            line,
            column,
            message,
            ..
        } = &e
        else {
            panic!("expected a parse error, got {e:?}")
        };
        assert_eq!((*line, *column), (Some(4), Some(1)));
        assert!(message.contains("unknown field `restrat`"), "{message}");
        assert!(
            e.to_string()
                .starts_with("keel.toml:4:1: unknown field `restrat`"),
            "{e}"
        );

        let e = err("[supervisor]\ngrace_period = 5\n[[process]]\nname = \"a\"\ncommand = \"x\"\n");
        assert!(
            e.starts_with("keel.toml:2:1: unknown field `grace_period`"),
            "{e}"
        );
        let e = err("[proces]\n");
        assert!(e.contains("unknown field `proces`"), "{e}");
    }

    #[test]
    fn bad_values_and_syntax_are_parse_errors() {
        let e = err("[[process]]\nname = \"a\"\ncommand = \"x\"\nrestart = \"sometimes\"\n");
        assert!(e.starts_with("keel.toml:4:"), "{e}");
        assert!(e.contains("unknown variant `sometimes`"), "{e}");
        let e = err("[[process]]\nname = \"a\"\ncommand = \"x\"\nargs = \"--x\"\n");
        assert!(e.starts_with("keel.toml:4:"), "{e}");
        let e = err("[[process]]\nname = \"a\"\n");
        assert!(e.contains("missing field `command`"), "{e}");
        let e = err("[[process]]\nname = \"a\n");
        assert!(e.starts_with("keel.toml:2:"), "{e}");
    }

    #[test]
    fn settings_are_validated() {
        let e = err(
            "[supervisor]\nrestart_initial_ms = 100\nrestart_max_ms = 50\n[[process]]\nname = \"a\"\ncommand = \"x\"\n",
        );
        assert_eq!(
            e,
            "keel.toml: supervisor.restart_max_ms (50) must not be less than restart_initial_ms (100)"
        );
        let e = err(
            "[supervisor]\nhealth_timeout_ms = 0\n[[process]]\nname = \"a\"\ncommand = \"x\"\n",
        );
        assert_eq!(
            e,
            "keel.toml: supervisor.health_timeout_ms must be at least 1"
        );
    }

    #[test]
    fn empty_topology_is_rejected() {
        assert_eq!(
            err(""),
            "keel.toml: defines no processes (add a [[process]] table)"
        );
    }

    #[test]
    fn load_names_the_file_and_resolves_cwd() {
        let dir = std::env::temp_dir().join(format!("keel-topology-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keel.toml");
        std::fs::write(
            &path,
            "[[process]]\nname = \"a\"\ncommand = \"x\"\ncwd = \"sub\"\n",
        )
        .unwrap();
        let t = Topology::load(&path).unwrap();
        assert_eq!(
            t.processes()[0].cwd.as_deref(),
            Some(dir.join("sub").as_path())
        );
        assert_eq!(t.source_name(), path.display().to_string());

        std::fs::write(
            &path,
            "[[process]]\nname = \"a\"\ncommand = \"x\"\ndepends_on = [\"b\"]\n",
        )
        .unwrap();
        let e = Topology::load(&path).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                r#"{}: process "a": depends_on names unknown process "b""#,
                path.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let e = Topology::load(dir.join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot read topology file"), "{e}");
        assert!(e.contains("missing.toml"), "{e}");
    }

    #[test]
    fn restart_policy_decisions() {
        assert!(RestartPolicy::Always.restarts(true));
        assert!(RestartPolicy::Always.restarts(false));
        assert!(!RestartPolicy::OnFailure.restarts(true));
        assert!(RestartPolicy::OnFailure.restarts(false));
        assert!(!RestartPolicy::Never.restarts(false));
    }
}
