//! Layered configuration: defaults → file (TOML) → `KEEL_…` environment → command-line.
//!
//! Every leaf value remembers where it came from, so a value that fails to parse or
//! validate is reported with its field path *and* its source:
//!
//! ```text
//! invalid configuration: `server.listen` (from environment variable KEEL_SERVER__LISTEN): invalid socket address syntax
//! ```
//!
//! Environment variables map to keys by stripping the `KEEL_` prefix, lower-casing, and
//! splitting nested tables on a double underscore: `KEEL_SERVER__REQUEST_TIMEOUT_MS=500`
//! sets `server.request_timeout_ms`. `KEEL_LOG`, `KEEL_LOG_FORMAT`, `KEEL_CONFIG` and
//! `KEEL_TEST_*` are reserved and never treated as configuration keys.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use toml::{Table, Value};

/// Environment variable prefix for configuration keys.
pub const ENV_PREFIX: &str = "KEEL_";

/// Environment variables with the prefix that are not configuration keys.
const RESERVED_ENV: &[&str] = &[
    "KEEL_LOG",
    "KEEL_LOG_FORMAT",
    "KEEL_CONFIG",
    "KEEL_DATA_DIR",
];
const RESERVED_ENV_PREFIXES: &[&str] = &["KEEL_TEST_"];

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The component's built-in default.
    Default,
    /// A configuration file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
    /// A command-line flag (as written).
    Cli(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("defaults"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(name) => write!(f, "environment variable {name}"),
            Source::Cli(flag) => write!(f, "command-line flag {flag}"),
        }
    }
}

/// A configuration that could not be loaded. Its message names the field and the source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("configuration file {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value has the wrong type or an unknown key was given.
    #[error("invalid configuration: `{field}` (from {origin}): {message}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// Where the offending value came from.
        origin: Source,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The dotted field path this error is about, when it is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// A validation failure raised by [`Validate::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted field path relative to the validated struct.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Invalid {
    /// A failure of `field` for `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the field path with `section.` (for validating nested structs).
    pub fn within(mut self, section: &str) -> Self {
        self.field = format!("{section}.{}", self.field);
        self
    }
}

/// Start-up validation of a configuration struct, beyond what its types enforce.
pub trait Validate {
    /// Returns the first invalid field, if any.
    fn validate(&self) -> Result<(), Invalid> {
        Ok(())
    }
}

/// The `[app]` section of a service that has no settings of its own.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct NoAppConfig {}

impl Validate for NoAppConfig {}

/// The chassis's HTTP server settings (`[server]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes (413 beyond it).
    pub body_limit_bytes: usize,
    /// Time budget for one request, in milliseconds (503 problem+json beyond it; an
    /// incoming `keel-deadline-ms` header can only shorten it). 0 disables.
    pub request_timeout_ms: u64,
    /// After SIGTERM, how long readiness reports 503 while the server still accepts
    /// requests, so load balancers notice before the listener closes. 0 in development;
    /// a few seconds on Kubernetes.
    pub drain_delay_ms: u64,
    /// How long in-flight requests and background tasks get to finish after the listener
    /// closes, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// When set, `/health` and `/metrics` (and a service's own admin endpoints) require
    /// `Authorization: Bearer <token>`. `/health/live` and `/health/ready` stay open for
    /// probes.
    pub admin_token: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 1024 * 1024,
            request_timeout_ms: 30_000,
            drain_delay_ms: 0,
            shutdown_grace_ms: 10_000,
            admin_token: None,
        }
    }
}

impl Validate for ServerConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.body_limit_bytes == 0 {
            return Err(Invalid::new("body_limit_bytes", "must be greater than 0"));
        }
        if self.shutdown_grace_ms == 0 {
            return Err(Invalid::new("shutdown_grace_ms", "must be greater than 0"));
        }
        if self
            .admin_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return Err(Invalid::new("admin_token", "must not be empty when set"));
        }
        Ok(())
    }
}

/// Telemetry settings (`[telemetry]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP endpoint to export spans to, e.g. `http://127.0.0.1:4318`. Unset: no export.
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is honoured when this is unset.
    pub otlp_endpoint: Option<String>,
}

impl Validate for TelemetryConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if let Some(ep) = &self.otlp_endpoint
            && !(ep.starts_with("http://") || ep.starts_with("https://"))
        {
            return Err(Invalid::new(
                "otlp_endpoint",
                format!("must be an http:// or https:// URL, got {ep:?}"),
            ));
        }
        Ok(())
    }
}

/// The whole configuration of a chassis service: the chassis's sections plus the
/// service's own settings under `[app]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct KeelConfig<T> {
    /// HTTP server settings.
    pub server: ServerConfig,
    /// Telemetry settings.
    pub telemetry: TelemetryConfig,
    /// The service's own settings.
    pub app: T,
}

impl<T: Validate> Validate for KeelConfig<T> {
    fn validate(&self) -> Result<(), Invalid> {
        self.server.validate().map_err(|e| e.within("server"))?;
        self.telemetry
            .validate()
            .map_err(|e| e.within("telemetry"))?;
        self.app.validate().map_err(|e| e.within("app"))
    }
}

/// The layers to read configuration from. Later layers override earlier ones.
#[derive(Debug, Clone, Default)]
pub struct Layers {
    /// A TOML file; it must exist when given.
    pub file: Option<PathBuf>,
    /// Environment variables (name, value); only `KEEL_`-prefixed ones are read.
    pub env: Vec<(String, String)>,
    /// Command-line overrides: (dotted key, raw value, the flag as the user wrote it).
    pub cli: Vec<(String, String, String)>,
}

impl Layers {
    /// Layers from a file (optional) and the process environment.
    pub fn from_env(file: Option<PathBuf>) -> Self {
        Self {
            file,
            // Variables that are not valid UTF-8 cannot be Keel settings; skip them.
            env: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            cli: Vec::new(),
        }
    }

    /// Adds a command-line override of `key` with `value`, reported as `flag`.
    pub fn cli(mut self, key: &str, value: &str, flag: &str) -> Self {
        self.cli
            .push((key.to_owned(), value.to_owned(), flag.to_owned()));
        self
    }
}

/// Loads `T` from its defaults and the given layers, then validates it.
pub fn load<T>(layers: &Layers) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    load_with(T::default(), layers)
}

/// Loads `T` from the given defaults (a component's own, e.g. another listen port) and
/// layers, then validates it.
pub fn load_with<T>(defaults: T, layers: &Layers) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Validate,
{
    let mut table = Table::try_from(defaults).map_err(|e| ConfigError::Invalid {
        field: String::new(),
        origin: Source::Default,
        message: format!("defaults cannot be represented: {e}"),
    })?;
    let mut origins: BTreeMap<String, Source> = BTreeMap::new();

    if let Some(path) = &layers.file {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.clone(),
            error,
        })?;
        let file: Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.clone(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        merge(
            &mut table,
            file,
            "",
            &Source::File(path.clone()),
            &mut origins,
        );
    }

    // Raw text of every value set from the environment or flags, so a guessed type (a
    // numeric token for a string setting) can be corrected below.
    let mut raw_values: BTreeMap<String, String> = BTreeMap::new();
    for (name, raw) in &layers.env {
        let Some(key) = env_key(name) else { continue };
        let source = Source::Env(name.clone());
        set_path(&mut table, &key, raw, &source, &mut origins)?;
        raw_values.insert(key, raw.clone());
    }
    for (key, raw, flag) in &layers.cli {
        let source = Source::Cli(flag.clone());
        set_path(&mut table, key, raw, &source, &mut origins)?;
        raw_values.insert(key.clone(), raw.clone());
    }

    let mut attempt = serde_path_to_error::deserialize::<_, T>(Value::Table(table.clone()));
    // A key absent from the defaults (an unset `Option`) was typed by guessing; when the
    // guess was wrong (`12345` for a string), retry that value as a string.
    for _ in 0..raw_values.len() {
        let Err(e) = &attempt else { break };
        let path = e.path().to_string();
        let Some(raw) = raw_values.get(&path) else {
            break;
        };
        if !e.inner().to_string().contains("invalid type") {
            break;
        }
        let parts: Vec<&str> = path.split('.').collect();
        match leaf_mut(&mut table, &parts) {
            Some(v) if !matches!(v, Value::String(_)) => *v = Value::String(raw.clone()),
            _ => break,
        }
        attempt = serde_path_to_error::deserialize::<_, T>(Value::Table(table.clone()));
    }
    let value: T = attempt.map_err(|e| {
        let mut field = e.path().to_string();
        let inner = e.inner().to_string();
        let message = inner.lines().next().unwrap_or_default().to_owned();
        if let Some(unknown) = unknown_field(&message)
            && field.rsplit('.').next() != Some(unknown)
        {
            field = if field == "." || field.is_empty() {
                unknown.to_owned()
            } else {
                format!("{field}.{unknown}")
            };
        }
        ConfigError::Invalid {
            origin: origin_of(&origins, &field),
            field,
            message,
        }
    })?;
    value.validate().map_err(|inv| ConfigError::Invalid {
        origin: origin_of(&origins, &inv.field),
        field: inv.field,
        message: inv.reason,
    })?;
    Ok(value)
}

fn leaf_mut<'a>(table: &'a mut Table, parts: &[&str]) -> Option<&'a mut Value> {
    let (first, rest) = parts.split_first()?;
    if rest.is_empty() {
        return table.get_mut(*first);
    }
    match table.get_mut(*first)? {
        Value::Table(t) => leaf_mut(t, rest),
        _ => None,
    }
}

/// Maps `KEEL_SERVER__LISTEN` to `server.listen`; `None` for other or reserved variables.
fn env_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    if rest.is_empty()
        || RESERVED_ENV.contains(&name)
        || RESERVED_ENV_PREFIXES.iter().any(|p| name.starts_with(p))
    {
        return None;
    }
    Some(
        rest.to_ascii_lowercase()
            .split("__")
            .collect::<Vec<_>>()
            .join("."),
    )
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// The source of `field`, or of the nearest enclosing table that has one.
fn origin_of(origins: &BTreeMap<String, Source>, field: &str) -> Source {
    let mut key = field;
    loop {
        if let Some(s) = origins.get(key) {
            return s.clone();
        }
        match key.rfind('.') {
            Some(i) => key = &key[..i],
            None => break,
        }
    }
    // A table whose leaves came from somewhere else (e.g. an unknown section in a file).
    let prefix = format!("{field}.");
    origins
        .iter()
        .find(|(k, _)| k.starts_with(&prefix))
        .map(|(_, s)| s.clone())
        .unwrap_or(Source::Default)
}

fn merge(
    base: &mut Table,
    over: Table,
    prefix: &str,
    source: &Source,
    origins: &mut BTreeMap<String, Source>,
) {
    for (k, v) in over {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o, &path, source, origins),
            (_, v) => {
                record_leaves(&v, &path, source, origins);
                base.insert(k, v);
            }
        }
    }
}

fn record_leaves(v: &Value, path: &str, source: &Source, origins: &mut BTreeMap<String, Source>) {
    if let Value::Table(t) = v {
        for (k, v) in t {
            record_leaves(v, &format!("{path}.{k}"), source, origins);
        }
    }
    origins.insert(path.to_owned(), source.clone());
}

/// Sets the dotted `key` to `raw`, coerced to the type of the value already there.
fn set_path(
    table: &mut Table,
    key: &str,
    raw: &str,
    source: &Source,
    origins: &mut BTreeMap<String, Source>,
) -> Result<(), ConfigError> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Invalid {
            field: key.to_owned(),
            origin: source.clone(),
            message: "empty key segment".to_owned(),
        });
    }
    let mut cur = table;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = cur
            .entry((*part).to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        cur = match entry {
            Value::Table(t) => t,
            _ => {
                return Err(ConfigError::Invalid {
                    field: parts[..=i].join("."),
                    origin: source.clone(),
                    message: format!("is a value, not a table, so `{key}` cannot be set"),
                });
            }
        };
    }
    let leaf = parts[parts.len() - 1];
    let value = coerce(cur.get(leaf), raw).map_err(|message| ConfigError::Invalid {
        field: key.to_owned(),
        origin: source.clone(),
        message,
    })?;
    cur.insert(leaf.to_owned(), value);
    origins.insert(key.to_owned(), source.clone());
    Ok(())
}

/// Turns a raw string into a TOML value of the same type as `existing`.
fn coerce(existing: Option<&Value>, raw: &str) -> Result<Value, String> {
    let literal = || -> Option<Value> {
        let t: Table = toml::from_str(&format!("v = {raw}")).ok()?;
        t.get("v").cloned()
    };
    match existing {
        Some(Value::String(_)) => Ok(Value::String(raw.to_owned())),
        Some(Value::Integer(_)) => raw
            .trim()
            .parse::<i64>()
            .map(Value::Integer)
            .map_err(|_| format!("expected an integer, got {raw:?}")),
        Some(Value::Float(_)) => raw
            .trim()
            .parse::<f64>()
            .map(Value::Float)
            .map_err(|_| format!("expected a number, got {raw:?}")),
        Some(Value::Boolean(_)) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Boolean(false)),
            _ => Err(format!("expected true or false, got {raw:?}")),
        },
        Some(Value::Array(_)) => match literal() {
            Some(v @ Value::Array(_)) => Ok(v),
            _ => Ok(Value::Array(
                raw.split(',')
                    .map(|s| Value::String(s.trim().to_owned()))
                    .filter(|v| v.as_str() != Some(""))
                    .collect(),
            )),
        },
        Some(Value::Table(_)) => Err("is a table; set its keys individually".to_owned()),
        _ => Ok(match literal() {
            Some(
                v @ (Value::Integer(_) | Value::Float(_) | Value::Boolean(_) | Value::Array(_)),
            ) => v,
            _ => Value::String(raw.to_owned()),
        }),
    }
}

/// Resolves the configuration file to use: the explicit path, else `KEEL_CONFIG`.
pub fn config_path(explicit: Option<&Path>) -> Option<PathBuf> {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("KEEL_CONFIG").map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct App {
        greeting: String,
        retries: u32,
        verbose: bool,
        tags: Vec<String>,
        limit: Option<u64>,
    }

    impl Default for App {
        fn default() -> Self {
            Self {
                greeting: "hello".into(),
                retries: 3,
                verbose: false,
                tags: vec![],
                limit: None,
            }
        }
    }

    impl Validate for App {
        fn validate(&self) -> Result<(), Invalid> {
            if self.retries > 10 {
                return Err(Invalid::new("retries", "must be at most 10"));
            }
            Ok(())
        }
    }

    type Cfg = KeelConfig<App>;

    fn file(text: &str) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("service.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    mod tempdir {
        /// A directory removed on drop.
        pub(super) struct Dir(pub(super) std::path::PathBuf);
        impl Dir {
            pub(super) fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "keel-config-test-{}-{}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_only() {
        let cfg: Cfg = load(&Layers::default()).unwrap();
        assert_eq!(cfg, Cfg::default());
    }

    #[test]
    fn layers_override_in_order() {
        let (_d, path) = file(
            "[server]\nlisten = \"127.0.0.1:9000\"\nrequest_timeout_ms = 100\n[app]\ngreeting = \"from file\"\nretries = 5\n",
        );
        let layers = Layers {
            file: Some(path),
            env: env(&[
                ("KEEL_SERVER__REQUEST_TIMEOUT_MS", "200"),
                ("KEEL_APP__RETRIES", "7"),
                ("KEEL_APP__TAGS", "a, b"),
                ("KEEL_APP__LIMIT", "42"),
                ("KEEL_LOG", "debug"),
                ("KEEL_TEST_DATABASE_URL", "postgres://x"),
                ("PATH", "/bin"),
            ]),
            cli: vec![],
        }
        .cli("app.retries", "8", "--set app.retries=8");
        let cfg: Cfg = load(&layers).unwrap();
        assert_eq!(cfg.server.listen.port(), 9000, "file beats defaults");
        assert_eq!(cfg.server.request_timeout_ms, 200, "env beats file");
        assert_eq!(cfg.app.greeting, "from file");
        assert_eq!(cfg.app.retries, 8, "cli beats env");
        assert_eq!(cfg.app.tags, vec!["a", "b"]);
        assert_eq!(cfg.app.limit, Some(42));
        assert_eq!(
            cfg.server.body_limit_bytes,
            1024 * 1024,
            "untouched default"
        );
    }

    #[test]
    fn wrong_type_in_env_names_field_and_variable() {
        let layers = Layers {
            env: env(&[("KEEL_SERVER__LISTEN", "not-an-address")]),
            ..Default::default()
        };
        let err = load::<Cfg>(&layers).unwrap_err();
        assert_eq!(err.field(), Some("server.listen"));
        let msg = err.to_string();
        assert!(msg.contains("KEEL_SERVER__LISTEN"), "{msg}");
        assert!(msg.contains("`server.listen`"), "{msg}");
    }

    #[test]
    fn non_integer_env_for_integer_field() {
        let layers = Layers {
            env: env(&[("KEEL_APP__RETRIES", "many")]),
            ..Default::default()
        };
        let msg = load::<Cfg>(&layers).unwrap_err().to_string();
        assert!(
            msg.contains("`app.retries`") && msg.contains("KEEL_APP__RETRIES"),
            "{msg}"
        );
        assert!(msg.contains("expected an integer"), "{msg}");
    }

    #[test]
    fn wrong_type_in_file_names_field_and_file() {
        let (_d, path) = file("[app]\nretries = \"three\"\n");
        let err = load::<Cfg>(&Layers {
            file: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.field(), Some("app.retries"));
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_in_file_is_rejected_with_its_path() {
        let (_d, path) = file("[server]\nlisten_addr = \"127.0.0.1:1\"\n");
        let err = load::<Cfg>(&Layers {
            file: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.field(), Some("server.listen_addr"), "{err}");
        assert!(err.to_string().contains("service.toml"), "{err}");
    }

    #[test]
    fn unknown_section_from_env_is_rejected() {
        let err = load::<Cfg>(&Layers {
            env: env(&[("KEEL_SERVR__LISTEN", "127.0.0.1:1")]),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.field(), Some("servr"), "{err}");
        assert!(err.to_string().contains("KEEL_SERVR__LISTEN"), "{err}");
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let (_d, path) = file("[server\nlisten = 1\n");
        let err = load::<Cfg>(&Layers {
            file: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load::<Cfg>(&Layers {
            file: Some("/nonexistent/keel.toml".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/keel.toml"));
    }

    #[test]
    fn validation_error_names_field_and_source() {
        let layers = Layers::default().cli("app.retries", "11", "--set app.retries=11");
        let err = load::<Cfg>(&layers).unwrap_err();
        assert_eq!(err.field(), Some("app.retries"));
        assert!(err.to_string().contains("--set app.retries=11"), "{err}");
        assert!(err.to_string().contains("at most 10"), "{err}");

        let (_d, path) = file("[server]\nbody_limit_bytes = 0\n");
        let err = load::<Cfg>(&Layers {
            file: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.field(), Some("server.body_limit_bytes"));
        assert!(err.to_string().contains("service.toml"), "{err}");
    }

    #[test]
    fn validation_of_default_value_reports_defaults() {
        let layers = Layers::default().cli(
            "telemetry.otlp_endpoint",
            "collector:4318",
            "--set telemetry.otlp_endpoint=collector:4318",
        );
        let err = load::<Cfg>(&layers).unwrap_err();
        assert_eq!(err.field(), Some("telemetry.otlp_endpoint"));
        assert!(err.to_string().contains("http://"), "{err}");
    }

    #[test]
    fn env_key_mapping() {
        assert_eq!(
            env_key("KEEL_SERVER__LISTEN").as_deref(),
            Some("server.listen")
        );
        assert_eq!(
            env_key("KEEL_APP__MAX_ITEMS").as_deref(),
            Some("app.max_items")
        );
        assert_eq!(env_key("KEEL_LOG"), None);
        assert_eq!(env_key("KEEL_DATA_DIR"), None);
        assert_eq!(env_key("KEEL_TEST_NATS_URL"), None);
        assert_eq!(env_key("HOME"), None);
    }

    #[test]
    fn numeric_text_for_an_unset_string_option_stays_text() {
        #[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
        #[serde(default, deny_unknown_fields)]
        struct Secret {
            token: Option<String>,
            limit: Option<u64>,
        }
        impl Validate for Secret {}
        let layers = Layers {
            env: env(&[("KEEL_APP__TOKEN", "12345"), ("KEEL_APP__LIMIT", "7")]),
            ..Default::default()
        };
        let cfg: KeelConfig<Secret> = load(&layers).unwrap();
        assert_eq!(cfg.app.token.as_deref(), Some("12345"));
        assert_eq!(cfg.app.limit, Some(7));
        let layers =
            Layers::default().cli("server.admin_token", "987", "--set server.admin_token=987");
        let cfg: KeelConfig<Secret> = load(&layers).unwrap();
        assert_eq!(cfg.server.admin_token.as_deref(), Some("987"));
    }

    #[test]
    fn setting_below_a_value_is_an_error() {
        let layers = Layers::default().cli("app.greeting.x", "1", "--set app.greeting.x=1");
        let err = load::<Cfg>(&layers).unwrap_err();
        assert_eq!(err.field(), Some("app.greeting"));
    }
}
