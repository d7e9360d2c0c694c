//! OpenTelemetry traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, one span per request is
//! exported over OTLP/HTTP (protobuf), carrying the GenAI attributes of
//! CONTRACT §11, the cost and the request id.
//!
//! The span is built from the finished ledger row, with the row's own start
//! and end times, so it says exactly what the ledger says and costs the
//! request path nothing but a queue push (the batch processor exports from
//! its own thread). Without the variable nothing is installed and
//! [`record_row`] is a no-op. Never blocks a request, never drops a row.

use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::trace::{Span, SpanKind, Status, Tracer, TracerProvider};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::ledger::LedgerRow;

struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static TRACES: OnceLock<Option<Traces>> = OnceLock::new();

fn configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// Installs the exporter once per process when the environment asks for it.
pub fn install_from_env() {
    TRACES.get_or_init(|| {
        if !configured() {
            return None;
        }
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => exporter,
            Err(err) => {
                tracing::error!(error = %err, "OTLP trace exporter not started");
                return None;
            }
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name("tollgate").build())
            .build();
        let tracer = provider.tracer("tollgate");
        tracing::info!("exporting one span per request over OTLP/HTTP");
        Some(Traces { provider, tracer })
    });
}

/// One span for one finished request.
pub fn record_row(row: &LedgerRow) {
    let Some(Some(traces)) = TRACES.get() else {
        return;
    };
    let name = match &row.model {
        Some(model) => format!("{} {model}", row.endpoint),
        None => row.endpoint.clone(),
    };
    let mut span = traces
        .tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_start_time(SystemTime::from(row.started_at))
        .with_attributes(attributes(row))
        .start(&traces.tracer);
    if let Some(code) = &row.error_code {
        span.set_status(Status::error(code.clone()));
    }
    span.end_with_timestamp(SystemTime::from(row.finished_at));
}

fn attributes(row: &LedgerRow) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("gen_ai.operation.name", row.endpoint.clone()),
        KeyValue::new("gen_ai.provider.name", "openai"),
        KeyValue::new("gen_ai.usage.input_tokens", row.input_tokens),
        KeyValue::new("gen_ai.usage.output_tokens", row.output_tokens),
        KeyValue::new("gen_ai.usage.cache_read.input_tokens", row.cached_tokens),
        KeyValue::new("gen_ai.usage.reasoning.output_tokens", row.reasoning_tokens),
        KeyValue::new("tollgate.request_id", row.request_id.clone()),
        KeyValue::new("tollgate.status", row.status.clone()),
        KeyValue::new("tollgate.usage_source", row.usage_source.clone()),
        KeyValue::new("tollgate.tenant", row.tenant.clone()),
        KeyValue::new("tollgate.api_key_id", row.api_key_id.clone()),
        KeyValue::new("tollgate.stream", row.stream),
    ];
    let optional = [
        ("gen_ai.request.model", &row.model),
        ("gen_ai.response.model", &row.upstream_model),
        ("gen_ai.response.id", &row.response_id),
        ("openai.response.service_tier", &row.service_tier),
        ("tollgate.upstream", &row.upstream),
        ("tollgate.unpriced_reason", &row.unpriced_reason),
        ("error.type", &row.error_code),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            attributes.push(KeyValue::new(key, value.clone()));
        }
    }
    if let Some(cost) = row.cost {
        // A string: the exact decimal, as the ledger has it.
        attributes.push(KeyValue::new("tollgate.cost", cost.normalize().to_string()));
        attributes.push(KeyValue::new("tollgate.currency", row.currency.clone()));
    }
    if let Some(status) = row.http_status {
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
    }
    attributes
}

/// Exports what is queued and stops the exporter (at shutdown). Blocking:
/// call it off the async workers.
pub fn shutdown() {
    if let Some(Some(traces)) = TRACES.get() {
        if let Err(err) = traces.provider.shutdown() {
            tracing::warn!(error = %err, "OTLP trace exporter did not flush");
        }
    }
}
