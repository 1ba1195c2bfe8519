//! Process-wide telemetry set-up: the `tracing` subscriber (log format, filter, OpenTelemetry layer) and the
//! W3C propagator. Metrics live in [`metrics`]; span-context helpers in [`propagation`].
//!
//! Spans always get real OpenTelemetry ids (an SDK tracer provider is installed even without an exporter),
//! because every event of a task records the task's trace id. OTLP export is not built yet.

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
}

/// Flushes spans when dropped; hold it for the life of the process.
#[must_use = "dropping the guard flushes and stops telemetry"]
pub struct TelemetryGuard(());

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = PROVIDER.get() {
            // Errors here only mean there was nothing left to flush.
            let _ = provider.force_flush();
        }
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

    let fmt_layer = match settings.log_format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(true)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .boxed(),
    };

    let otel_layer = if settings.tracing {
        let provider = PROVIDER.get_or_init(|| {
            SdkTracerProvider::builder()
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(settings.service_name.clone())
                        .build(),
                )
                .build()
        });
        let tracer = provider.tracer("troupe");
        // Spans must exist for the OpenTelemetry layer even when the log filter would drop them, so the
        // layer carries its own filter: every span of Troupe's own code, whatever the log level.
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(EnvFilter::new("troupe=trace,tracing_actix_web=info,warn"))
                .boxed(),
        )
    } else {
        None
    };

    // A second initialisation in one process fails harmlessly: the first subscriber stays.
    let _ = tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter))
        .with(otel_layer)
        .try_init();
    Ok(TelemetryGuard(()))
}
