//! Process-wide telemetry set-up: the `tracing` subscriber (log format, filter, OpenTelemetry layer), trace
//! export and the W3C propagator. Metrics live in [`metrics`]; their bounded in-process history (the
//! dashboard's charts) in [`history`]; span-context helpers in [`propagation`]; the
//! exporter, sampler and resource in [`export`]; the JSON log format in [`json_log`].
//!
//! Spans always get real OpenTelemetry ids (an SDK tracer provider is installed even without an exporter),
//! because every event of a task records the task's trace id. With an OTLP endpoint they are also exported
//! in batches, and flushed when the [`TelemetryGuard`] is dropped.

pub mod export;
pub mod history;
pub mod json_log;
pub mod metrics;
pub mod propagation;

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetrySettings};

/// The tracer provider, kept so that spans can be flushed at shutdown.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Telemetry could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("parse log filter '{filter}'")]
    Filter {
        /// The filter as configured.
        filter: String,
        /// Why it does not parse.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The span exporter could not be built.
    #[error(transparent)]
    Export(#[from] export::ExportError),
}

/// Flushes spans when dropped; hold it for the life of the process.
#[must_use = "dropping the guard flushes and stops telemetry"]
pub struct TelemetryGuard(());

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        flush();
    }
}

/// Exports every span ended so far (a no-op without an exporter). Blocks until the exporter answers or
/// times out.
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        // Errors here only mean there was nothing left to flush or the collector is unreachable; neither
        // may stop a shutdown.
        let _ = provider.force_flush();
    }
}

/// Installs the global subscriber and propagator. A second call in the same process (tests start many apps)
/// keeps the first subscriber and returns a guard all the same.
pub fn init(settings: &TelemetrySettings) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let filter_text = std::env::var("RUST_LOG").unwrap_or_else(|_| settings.log_level.clone());
    let filter = EnvFilter::try_new(&filter_text).map_err(|source| TelemetryError::Filter {
        filter: filter_text.clone(),
        source,
    })?;

    // The context layer is only for JSON lines: it visits every new span's fields. Boxed rather than in an
    // Option, because `Option<Layer>` does not pass on `on_register_dispatch`, which the layer needs.
    let (context_layer, fmt_layer) = match settings.log_format {
        LogFormat::Human => (
            tracing_subscriber::layer::Identity::new().boxed(),
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(true)
                .boxed(),
        ),
        LogFormat::Json => {
            let (context_layer, json_lines) = json_log::pair();
            (
                context_layer.boxed(),
                tracing_subscriber::fmt::layer()
                    .event_format(json_lines)
                    .with_writer(std::io::stdout)
                    .boxed(),
            )
        }
    };

    let otel_layer = if settings.tracing {
        let provider = match PROVIDER.get() {
            Some(provider) => provider,
            None => {
                let provider = tracer_provider(settings)?;
                PROVIDER.get_or_init(|| provider)
            }
        };
        let tracer = provider.tracer("troupe");
        // Spans must exist for the OpenTelemetry layer even when the log filter would drop them, so the
        // layer carries its own filter: every span of Troupe's own code, whatever the log level.
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // busy_ns/idle_ns would read the clock on every poll of every instrumented future (an async
                // span is entered and exited at each poll); span start and end times are kept regardless.
                .with_tracked_inactivity(false)
                .with_filter(EnvFilter::new("troupe=trace,tracing_actix_web=info,warn"))
                .boxed(),
        )
    } else {
        None
    };

    // A second initialisation in one process fails harmlessly: the first subscriber stays.
    let _ = tracing_subscriber::registry()
        .with(context_layer)
        .with(fmt_layer.with_filter(filter))
        .with(otel_layer)
        .try_init();
    Ok(TelemetryGuard(()))
}

/// The SDK tracer provider: batch export when a destination is configured, the configured sampler and the
/// resource.
fn tracer_provider(settings: &TelemetrySettings) -> Result<SdkTracerProvider, TelemetryError> {
    let env = |name: &str| std::env::var(name).ok();
    let mut builder = SdkTracerProvider::builder().with_resource(export::resource(settings, &env));
    if let Some(sampler) = export::sampler(settings) {
        builder = builder.with_sampler(sampler);
    }
    if let export::Destination::Otlp(url) = export::destination(settings, &env) {
        builder = builder.with_batch_exporter(export::exporter(&url)?);
    }
    Ok(builder.build())
}
