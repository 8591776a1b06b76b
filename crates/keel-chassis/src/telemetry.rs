//! Logs (tracing), Prometheus metrics and optional OTLP span export.
//!
//! Logs are human-readable on a terminal and JSON lines otherwise, or as `KEEL_LOG_FORMAT`
//! (`json` | `text`) says. The level filter comes from `KEEL_LOG`, else `RUST_LOG`, else
//! `info`. Every log line written inside a request carries its `trace_id` and `span_id`
//! (top-level keys in JSON).

use std::{fmt::Write as _, io::IsTerminal, sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{Map, Value};
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    field::Visit,
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields,
        format::{JsonFields, Writer},
        time::{FormatTime, SystemTime},
    },
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

use crate::config::TelemetryConfig;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, coloured on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `KEEL_LOG_FORMAT` when set to `json` or `text`/`pretty`; else JSON unless stdout is a terminal.
    pub fn from_env() -> Self {
        match std::env::var("KEEL_LOG_FORMAT").ok().as_deref() {
            Some("json") => LogFormat::Json,
            Some("text" | "pretty" | "human") => LogFormat::Text,
            _ if std::io::stdout().is_terminal() => LogFormat::Text,
            _ => LogFormat::Json,
        }
    }
}

/// Keeps telemetry running; flushes exported spans when shut down or dropped.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Flushes and stops span export.
    pub fn shutdown(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = self.provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

static LOGGING: OnceLock<()> = OnceLock::new();
static OTLP_ACTIVE: OnceLock<bool> = OnceLock::new();

/// Whether spans are being exported over OTLP in this process.
pub fn otlp_active() -> bool {
    OTLP_ACTIVE.get().copied().unwrap_or(false)
}

/// Installs the global log subscriber (once per process; later calls return an empty
/// guard) and, when an OTLP endpoint is configured, span export.
pub fn init(service_name: &str, config: &TelemetryConfig) -> TelemetryGuard {
    #[cfg_attr(not(feature = "otlp"), allow(unused_mut))]
    let mut guard = TelemetryGuard::default();
    if LOGGING.get().is_some() {
        return guard;
    }
    let filter = std::env::var("KEEL_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let fmt_layer: Box<dyn Layer<Registry> + Send + Sync> = match LogFormat::from_env() {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines {
                service: service_name.to_owned(),
            })
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
    };
    let registry = Registry::default().with(fmt_layer);

    #[cfg(feature = "otlp")]
    let endpoint = config.otlp_endpoint.clone().or_else(|| {
        std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .ok()
            .filter(|s| !s.is_empty())
    });
    #[cfg(not(feature = "otlp"))]
    let _ = config;

    #[cfg(feature = "otlp")]
    if let Some(endpoint) = endpoint {
        match otlp::provider(service_name, &endpoint) {
            Ok(provider) => {
                use opentelemetry::trace::TracerProvider as _;
                let tracer = provider.tracer("keel");
                let otel = tracing_opentelemetry::layer().with_tracer(tracer);
                if registry.with(otel).with(filter).try_init().is_ok() {
                    let _ = LOGGING.set(());
                    let _ = OTLP_ACTIVE.set(true);
                    tracing::info!(%endpoint, "exporting spans over OTLP/HTTP");
                }
                guard.provider = Some(provider);
                return guard;
            }
            Err(error) => {
                eprintln!("keel: OTLP export disabled: {error}");
            }
        }
    }

    if registry.with(filter).try_init().is_ok() {
        let _ = LOGGING.set(());
    }
    guard
}

#[cfg(feature = "otlp")]
mod otlp {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};

    pub(super) fn provider(
        service: &str,
        endpoint: &str,
    ) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
        let mut url = endpoint.trim_end_matches('/').to_owned();
        if !url.ends_with("/v1/traces") {
            url.push_str("/v1/traces");
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_headers(Default::default())
            .build()?;
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service.to_owned())
                    .build(),
            )
            .build())
    }
}

/// JSON-lines event format with `trace_id`/`span_id` lifted to the top level.
struct JsonLines {
    service: String,
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut obj = Map::new();
        let mut ts = String::new();
        SystemTime.format_time(&mut Writer::new(&mut ts))?;
        obj.insert("timestamp".into(), Value::String(ts));
        obj.insert(
            "level".into(),
            Value::String(event.metadata().level().to_string()),
        );
        obj.insert("service".into(), Value::String(self.service.clone()));
        obj.insert(
            "target".into(),
            Value::String(event.metadata().target().to_owned()),
        );
        let mut fields = FieldsToJson(Map::new());
        event.record(&mut fields);
        let mut span_names = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                span_names.push(Value::String(span.name().to_owned()));
                let ext = span.extensions();
                let Some(formatted) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                let Ok(Value::Object(map)) = serde_json::from_str::<Value>(formatted.as_str())
                else {
                    continue;
                };
                for key in ["trace_id", "span_id", "request_id"] {
                    if let Some(v) = map.get(key) {
                        obj.insert(key.into(), v.clone());
                    }
                }
            }
        }
        if !span_names.is_empty() {
            obj.insert("spans".into(), Value::Array(span_names));
        }
        for (k, v) in fields.0 {
            obj.entry(k).or_insert(v);
        }
        let line = serde_json::to_string(&Value::Object(obj)).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

struct FieldsToJson(Map<String, Value>);

impl Visit for FieldsToJson {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_string()));
    }
}

/// Histogram buckets (seconds) for request durations.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often recorded histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Installs the process-wide Prometheus recorder (once). Returns `None` when another
/// recorder was installed first by someone else.
///
/// Histogram samples queue up in the recorder until an upkeep folds them into buckets. That
/// happens on every scrape and, so memory stays flat when nobody scrapes, once a second on
/// a small thread of its own (it works whatever runtime, if any, the process uses).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("keel-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histogram samples are folded only when /metrics is scraped");
            }
            Some(handle)
        })
        .as_ref()
}

/// Renders all metrics in the Prometheus text format, process metrics included.
pub fn render_metrics() -> String {
    let mut out = String::new();
    if let Some(handle) = prometheus() {
        handle.run_upkeep();
        out.push_str(&handle.render());
    }
    process::render(&mut out);
    out
}

/// `process_*` metrics in the standard Prometheus client shape, read from `/proc`.
mod process {
    use super::*;

    static START: OnceLock<f64> = OnceLock::new();

    pub(super) fn render(out: &mut String) {
        let Some(stat) = read_stat() else { return };
        let ticks = 100.0; // USER_HZ is 100 on every Linux we target.
        let page = 4096.0;
        let cpu = (stat.utime + stat.stime) as f64 / ticks;
        let start =
            *START.get_or_init(|| boot_time().unwrap_or(0.0) + stat.starttime as f64 / ticks);
        let fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0);
        let max_fds = limits_max_fds();
        let metric = |out: &mut String, name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        metric(
            out,
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            cpu,
        );
        metric(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            stat.rss as f64 * page,
        );
        metric(
            out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            stat.vsize as f64,
        );
        metric(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds as f64,
        );
        metric(
            out,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max_fds,
        );
        metric(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            start,
        );
        metric(
            out,
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            stat.threads as f64,
        );
    }

    struct Stat {
        utime: u64,
        stime: u64,
        threads: u64,
        starttime: u64,
        vsize: u64,
        rss: u64,
    }

    fn read_stat() -> Option<Stat> {
        let s = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = &s[s.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        // Indices are field numbers from proc(5) minus 3.
        Some(Stat {
            utime: n(11)?,
            stime: n(12)?,
            threads: n(17)?,
            starttime: n(19)?,
            vsize: n(20)?,
            rss: n(21)?,
        })
    }

    fn boot_time() -> Option<f64> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse().ok())
    }

    fn limits_max_fds() -> f64 {
        std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_are_rendered() {
        let mut out = String::new();
        process::render(&mut out);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                out.contains(&format!("\n{name} ")),
                "{name} missing in {out}"
            );
        }
        let rss: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(rss > 1_000_000.0, "rss {rss}");
    }
}
