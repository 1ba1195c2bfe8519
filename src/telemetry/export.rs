//! Trace export: the OTLP/HTTP (protobuf) exporter, the sampler and the resource, from Troupe's settings with
//! the standard `OTEL_*` variables as fallback.
//!
//! Precedence, per value: a non-empty Troupe setting, then the standard variable, then Troupe's default.
//! With no endpoint anywhere (or `OTEL_TRACES_EXPORTER=none`) there is no exporter and no batch thread: spans
//! still get ids (events record them) but go nowhere.

use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::Sampler;
use opentelemetry_sdk::Resource;

use crate::config::TelemetrySettings;

/// The exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The OTLP exporter refused its configuration (a malformed endpoint, for instance).
    #[error("build the OTLP span exporter for '{endpoint}'")]
    Exporter {
        /// The endpoint as resolved.
        endpoint: String,
        /// Why.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Where spans go, as resolved from settings and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// No export.
    Off,
    /// OTLP/HTTP to this traces URL (`.../v1/traces`).
    Otlp(String),
}

/// Resolves the traces URL: Troupe's `otlp_endpoint`, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is),
/// else `OTEL_EXPORTER_OTLP_ENDPOINT` (plus `/v1/traces`); `OTEL_TRACES_EXPORTER=none` turns export off.
pub fn destination(
    settings: &TelemetrySettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Destination {
    let set = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    if !settings.otlp_endpoint.is_empty() {
        return Destination::Otlp(traces_url(&settings.otlp_endpoint));
    }
    if set("OTEL_TRACES_EXPORTER").is_some_and(|value| value.trim() == "none") {
        return Destination::Off;
    }
    if let Some(url) = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Destination::Otlp(url);
    }
    match set("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Some(base) => Destination::Otlp(traces_url(&base)),
        None => Destination::Off,
    }
}

/// A collector base URL with the traces path added, unless it already ends with it.
fn traces_url(base: &str) -> String {
    let base = base.trim().trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// The OTLP/HTTP protobuf exporter for `url`. Its requests use the blocking client, which runs on the batch
/// processor's own thread (see STACK.md: an async client there has no reactor).
pub fn exporter(url: &str) -> Result<opentelemetry_otlp::SpanExporter, ExportError> {
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build()
        .map_err(|source| ExportError::Exporter {
            endpoint: url.to_owned(),
            source,
        })
}

/// The sampler from `sampling_ratio` (parent-based: a caller's sampling decision is kept); `None` when the
/// SDK should read `OTEL_TRACES_SAMPLER` itself or use its default (always on, parent-based).
pub fn sampler(settings: &TelemetrySettings) -> Option<Sampler> {
    settings.sampling_ratio.map(|ratio| {
        Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio.clamp(0.0, 1.0))))
    })
}

/// `service.name`, `service.version` and the configured attributes over the SDK's detectors (which read
/// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`).
pub fn resource(settings: &TelemetrySettings, env: &dyn Fn(&str) -> Option<String>) -> Resource {
    let service_name = if !settings.service_name.is_empty() {
        settings.service_name.clone()
    } else {
        env("OTEL_SERVICE_NAME")
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| "troupe".to_owned())
    };
    let mut builder = Resource::builder()
        .with_service_name(service_name)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    // Every process its own instance (several nodes export to one collector), unless one is given.
    let given = env("OTEL_RESOURCE_ATTRIBUTES")
        .is_some_and(|attributes| attributes.contains("service.instance.id="));
    if !given {
        builder = builder.with_attribute(KeyValue::new("service.instance.id", instance_id()));
    }
    builder
        .with_attributes(parse_attributes(&settings.resource_attributes))
        .build()
}

/// This process's default `service.instance.id`: host name and process id.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{host}-{}", std::process::id())
}

/// `key=value,key=value` as key-values; pairs without `=` or with an empty key are skipped.
fn parse_attributes(text: &str) -> Vec<KeyValue> {
    text.split(',')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = key.trim();
            (!key.is_empty()).then(|| KeyValue::new(key.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(endpoint: &str) -> TelemetrySettings {
        let mut settings = crate::config::Settings::load_from(std::path::Path::new("config"), None)
            .unwrap()
            .telemetry;
        settings.otlp_endpoint = endpoint.to_owned();
        settings
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn no_endpoint_anywhere_means_no_export() {
        assert_eq!(destination(&settings(""), &env(&[])), Destination::Off);
    }

    #[test]
    fn the_setting_wins_and_gets_the_traces_path() {
        let vars = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318")]);
        assert_eq!(
            destination(&settings("http://jaeger:4318/"), &vars),
            Destination::Otlp("http://jaeger:4318/v1/traces".into())
        );
        assert_eq!(
            destination(&settings("http://c:4318/v1/traces"), &vars),
            Destination::Otlp("http://c:4318/v1/traces".into())
        );
    }

    #[test]
    fn standard_variables_are_honoured_when_the_setting_is_empty() {
        let base = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]);
        assert_eq!(
            destination(&settings(""), &base),
            Destination::Otlp("http://collector:4318/v1/traces".into())
        );
        let signal = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9999/custom"),
        ]);
        assert_eq!(
            destination(&settings(""), &signal),
            Destination::Otlp("http://t:9999/custom".into())
        );
        let none = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ]);
        assert_eq!(destination(&settings(""), &none), Destination::Off);
    }

    #[test]
    fn resource_carries_name_version_and_configured_attributes() {
        let mut settings = settings("");
        settings.resource_attributes =
            "deployment.environment.name=staging, team = core,broken".into();
        let resource = resource(&settings, &env(&[("OTEL_SERVICE_NAME", "from-env")]));
        let get = |key: &str| {
            resource
                .get(&opentelemetry::Key::from(key.to_owned()))
                .map(|value| value.to_string())
        };
        assert_eq!(get("service.name").as_deref(), Some("from-env"));
        assert_eq!(
            get("service.version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            get("deployment.environment.name").as_deref(),
            Some("staging")
        );
        assert_eq!(get("team").as_deref(), Some("core"));
        settings.service_name = "configured".into();
        let resource = super::resource(&settings, &env(&[("OTEL_SERVICE_NAME", "from-env")]));
        assert_eq!(
            resource
                .get(&opentelemetry::Key::from("service.name"))
                .map(|v| v.to_string())
                .as_deref(),
            Some("configured")
        );
    }

    #[test]
    fn every_process_is_its_own_instance_unless_one_is_configured() {
        let mut settings = settings("");
        let instance = |settings: &TelemetrySettings| {
            resource(settings, &env(&[]))
                .get(&opentelemetry::Key::from("service.instance.id"))
                .map(|value| value.to_string())
        };
        let default = instance(&settings).unwrap();
        assert!(
            default.ends_with(&format!("-{}", std::process::id())),
            "{default}"
        );
        settings.resource_attributes = "service.instance.id=worker-a".into();
        assert_eq!(instance(&settings).as_deref(), Some("worker-a"));
    }

    #[test]
    fn a_ratio_makes_a_parent_based_sampler() {
        let mut settings = settings("");
        assert!(sampler(&settings).is_none());
        settings.sampling_ratio = Some(0.25);
        assert!(matches!(sampler(&settings), Some(Sampler::ParentBased(_))));
    }
}
