//! Logging and the metrics recorder, each installed once per process.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// JSON lines on stdout (or human-readable with LOG_FORMAT=pretty). LOG_LEVEL
/// is a level or RUST_LOG-style directives. A second call is a no-op.
///
/// Store, cache, embedder and worker calls are spans at debug level (ids,
/// k, batch sizes; never secrets or content). With `context_api=debug` each
/// span's end is logged with its busy and idle time, inside the request's
/// span, so one request's lines show where its time went.
pub fn init_logging(settings: &LogSettings) {
    init_logging_to(settings, std::io::stdout);
}

/// Logs on stderr, for the commands whose stdout is their output (`export`)
/// or a protocol (`mcp` over stdio).
pub fn init_logging_to_stderr(settings: &LogSettings) {
    init_logging_to(settings, std::io::stderr);
}

fn init_logging_to<W>(settings: &LogSettings, writer: W)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(&settings.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    // Span timings only when debug is asked for: at info, one line a request.
    let level = settings.level.to_ascii_lowercase();
    let spans = if level.contains("debug") || level.contains("trace") {
        FmtSpan::CLOSE
    } else {
        FmtSpan::NONE
    };
    let _ = match settings.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_span_events(spans.clone())
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_span_events(spans.clone()),
            )
            .try_init(),
    };
}

/// The process-wide Prometheus recorder (installing one twice fails, so every
/// App in a process shares this handle).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .expect("bucket list is not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}
