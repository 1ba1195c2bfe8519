//! JSON log lines for Loki: one object per line with `timestamp`, `level`, `target`, `message`, the
//! OpenTelemetry `trace_id` and `span_id` of the span the event happened in, the `task_id` and `agent` of the
//! nearest enclosing span that names them, the span's `span` name and the event's other fields under `fields`.
//!
//! Two parts: [`ContextLayer`] (a layer seeing every span, whatever the log filter) remembers the task and
//! agent a span names and the dispatcher it runs under; [`JsonLines`] (the fmt layer's event formatter) reads
//! them back. Span lookups go to the registry directly, not through the fmt layer's filtered view, so a warn
//! line inside an info span still carries the span's ids when the log level is `warn`.

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Span and event fields that name the task.
const TASK_FIELDS: &[&str] = &["task_id", "troupe.task.id", "gen_ai.conversation.id"];
/// Span and event fields that name the agent.
const AGENT_FIELDS: &[&str] = &["agent", "gen_ai.agent.name"];

/// The task and agent a span names (its own fields only; lookups walk up the parents).
#[derive(Debug, Default, Clone)]
struct SpanNames {
    task_id: Option<String>,
    agent: Option<String>,
}

impl Visit for SpanNames {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.keep(field.name(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.keep(field.name(), format!("{value:?}"));
    }
}

impl SpanNames {
    fn keep(&mut self, name: &str, value: String) {
        if TASK_FIELDS.contains(&name) {
            self.task_id = Some(value);
        } else if AGENT_FIELDS.contains(&name) {
            self.agent = Some(value);
        }
    }

    fn is_empty(&self) -> bool {
        self.task_id.is_none() && self.agent.is_none()
    }
}

/// What the layer and the formatter share: the dispatcher, captured when the subscriber is built.
#[derive(Default)]
struct Shared {
    dispatch: OnceLock<tracing::dispatcher::WeakDispatch>,
}

/// Creates the layer and the formatter that reads what it records.
pub fn pair() -> (ContextLayer, JsonLines) {
    let shared = Arc::new(Shared::default());
    (
        ContextLayer {
            shared: shared.clone(),
        },
        JsonLines { shared },
    )
}

/// Records the task and agent each span names, for [`JsonLines`].
pub struct ContextLayer {
    shared: Arc<Shared>,
}

impl<S> Layer<S> for ContextLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        let _ = self.shared.dispatch.set(subscriber.downgrade());
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut names = SpanNames::default();
        attrs.record(&mut names);
        if names.is_empty() {
            return;
        }
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(names);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        let mut names = extensions.remove::<SpanNames>().unwrap_or_default();
        values.record(&mut names);
        if !names.is_empty() {
            extensions.insert(names);
        }
    }
}

/// Formats each event as one JSON object on one line.
pub struct JsonLines {
    shared: Arc<Shared>,
}

/// Collects an event's fields: `message` apart, the rest as JSON values.
#[derive(Default)]
struct EventFields {
    message: Option<String>,
    fields: Map<String, Value>,
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::from(format!("{value:?}")));
    }
}

impl EventFields {
    fn put(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                Value::String(text) => text,
                other => other.to_string(),
            });
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

/// What an event learns from the span it happened in.
#[derive(Default)]
struct SpanFacts {
    span: Option<&'static str>,
    names: SpanNames,
    trace_id: Option<String>,
    span_id: Option<String>,
}

impl JsonLines {
    /// The facts of the event's span: its own (explicit parent, else the thread's current span), read from the
    /// registry without the fmt layer's filter.
    fn span_facts(&self, event: &Event<'_>) -> SpanFacts {
        let mut facts = SpanFacts::default();
        let Some(dispatch) = self.shared.dispatch.get().and_then(|weak| weak.upgrade()) else {
            return facts;
        };
        let id = if let Some(parent) = event.parent() {
            Some(parent.clone())
        } else if event.is_contextual() {
            dispatch.current_span().id().cloned()
        } else {
            None
        };
        let Some(id) = id else {
            return facts;
        };
        let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>() else {
            return facts;
        };
        if let Some(span) = registry.span(&id) {
            facts.span = Some(span.name());
            for ancestor in span.scope() {
                let extensions = ancestor.extensions();
                if let Some(names) = extensions.get::<SpanNames>() {
                    if facts.names.task_id.is_none() {
                        facts.names.task_id.clone_from(&names.task_id);
                    }
                    if facts.names.agent.is_none() {
                        facts.names.agent.clone_from(&names.agent);
                    }
                }
                if facts.names.task_id.is_some() && facts.names.agent.is_some() {
                    break;
                }
            }
        }
        // No span extensions are held here: the OpenTelemetry layer locks them to build the context.
        if let Some(cx) = tracing_opentelemetry::get_otel_context(&id, &dispatch) {
            let span = cx.span();
            let span_context = span.span_context();
            if span_context.is_valid() {
                facts.trace_id = Some(span_context.trace_id().to_string());
                facts.span_id = Some(span_context.span_id().to_string());
            }
        }
        facts
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let facts = self.span_facts(event);

        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert("level".into(), Value::from(metadata.level().as_str()));
        line.insert("target".into(), Value::from(metadata.target()));
        line.insert(
            "message".into(),
            Value::from(fields.message.unwrap_or_default()),
        );
        // An event's own task_id/agent fields win over its spans'.
        let own = |keys: &[&str]| {
            keys.iter().find_map(|key| match fields.fields.get(*key) {
                Some(Value::String(text)) => Some(text.clone()),
                _ => None,
            })
        };
        let task_id = own(TASK_FIELDS).or(facts.names.task_id);
        let agent = own(AGENT_FIELDS).or(facts.names.agent);
        for (key, value) in [
            ("trace_id", facts.trace_id),
            ("span_id", facts.span_id),
            ("task_id", task_id),
            ("agent", agent),
            ("span", facts.span.map(str::to_owned)),
        ] {
            if let Some(value) = value {
                line.insert(key.into(), Value::from(value));
            }
        }
        if !fields.fields.is_empty() {
            line.insert("fields".into(), Value::Object(fields.fields));
        }
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::Mutex;
    use tracing_subscriber::layer::SubscriberExt;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn lines(buffer: &Buffer) -> Vec<Value> {
        String::from_utf8(buffer.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn lines_carry_ids_task_and_agent_of_enclosing_spans_even_when_spans_are_filtered_out() {
        use opentelemetry::trace::TracerProvider as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let (context, format) = pair();
        let subscriber = tracing_subscriber::registry()
            .with(context)
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(format)
                    .with_writer(move || writer.clone())
                    .with_filter(tracing_subscriber::EnvFilter::new("warn")),
            )
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let (trace_id, span_id) = tracing::subscriber::with_default(subscriber, || {
            let task = tracing::info_span!("invoke_workflow", gen_ai.conversation.id = "t-1");
            let _task = task.enter();
            let agent = tracing::info_span!("invoke_agent", gen_ai.agent.name = "research");
            let _agent = agent.enter();
            tracing::warn!(tokens = 3_u64, "slow step");
            tracing::info!("filtered out by the level");
            crate::telemetry::propagation::ids(&crate::telemetry::propagation::current())
        });
        let lines = lines(&buffer);
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "slow step");
        assert_eq!(line["task_id"], "t-1");
        assert_eq!(line["agent"], "research");
        assert_eq!(line["span"], "invoke_agent");
        assert_eq!(line["fields"]["tokens"], 3);
        assert_eq!(line["trace_id"], trace_id.as_str());
        assert_eq!(line["span_id"], span_id.as_str());
        assert_ne!(trace_id, "00000000000000000000000000000000");
        assert!(line["target"].as_str().unwrap().starts_with("troupe"));
    }

    #[test]
    fn an_event_outside_spans_has_no_ids_and_its_own_fields_win() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let (context, format) = pair();
        let subscriber = tracing_subscriber::registry().with(context).with(
            tracing_subscriber::fmt::layer()
                .event_format(format)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(task_id = "t-9", agent = "qa", "store failed");
        });
        let lines = lines(&buffer);
        assert_eq!(lines[0]["task_id"], "t-9");
        assert_eq!(lines[0]["agent"], "qa");
        assert!(lines[0].get("trace_id").is_none());
        assert_eq!(lines[0]["level"], "ERROR");
    }
}
