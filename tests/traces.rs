//! OTLP traces: a real `tollgate serve` with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! pointing at a small OTLP/HTTP receiver of the test's own; one span per
//! request arrives, with the GenAI attributes equal to the ledger row.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use common::GatewayProcess;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use sqlx::PgPool;

type Received = Arc<Mutex<Vec<Span>>>;

/// model, input, output, cached, reasoning, cost, upstream model, tier.
type LedgerFigures = (
    String,
    i64,
    i64,
    i64,
    i64,
    Option<rust_decimal::Decimal>,
    Option<String>,
    Option<String>,
);

/// An OTLP/HTTP receiver: `POST /v1/traces`, protobuf bodies.
async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                let spans = request
                    .resource_spans
                    .into_iter()
                    .flat_map(|r| r.scope_spans)
                    .flat_map(|s| s.spans);
                sink.lock().unwrap().extend(spans);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), received)
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

#[sqlx::test]
async fn one_span_per_request_with_the_rows_figures(pool: PgPool) {
    let (endpoint, received) = receiver().await;
    let gateway = GatewayProcess::start_with_env(
        &pool,
        "",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
    )
    .await;
    let mut request_ids = Vec::new();
    for (stream, usage) in [(false, "1200,200,900,600"), (true, "30,3,20,10")] {
        let response = gateway
            .http
            .post(format!("{}/v1/responses", gateway.base))
            .bearer_auth(&gateway.key)
            .json(
                &json!({"model": "turing/gpt-5.5", "input": "hi", "stream": stream,
                          "metadata": {"mock_usage": usage}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let id = response.headers()["x-tollgate-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        response.bytes().await.unwrap();
        request_ids.push(id);
    }
    // SIGTERM: the shutdown sequence exports what is queued.
    gateway.signal("TERM");
    assert!(gateway.wait().await.success());

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spans = received.lock().unwrap().clone();
    assert_eq!(spans.len(), 2, "one span per request");
    for request_id in &request_ids {
        let span = spans
            .iter()
            .find(|s| attributes(s).get("tollgate.request_id") == Some(request_id))
            .expect("a span carries the request id");
        let attrs = attributes(span);
        let row: LedgerFigures = sqlx::query_as(
            "SELECT model, input_tokens, output_tokens, cached_tokens, reasoning_tokens, cost,
                        upstream_model, service_tier
                 FROM usage_ledger WHERE request_id = $1",
        )
        .bind(request_id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(attrs["gen_ai.request.model"], row.0);
        assert_eq!(attrs["gen_ai.usage.input_tokens"], row.1.to_string());
        assert_eq!(attrs["gen_ai.usage.output_tokens"], row.2.to_string());
        assert_eq!(
            attrs["gen_ai.usage.cache_read.input_tokens"],
            row.3.to_string()
        );
        assert_eq!(
            attrs["gen_ai.usage.reasoning.output_tokens"],
            row.4.to_string()
        );
        assert_eq!(
            attrs["tollgate.cost"],
            row.5.unwrap().normalize().to_string()
        );
        assert_eq!(attrs["gen_ai.response.model"], row.6.unwrap());
        assert_eq!(attrs["openai.response.service_tier"], row.7.unwrap());
        assert!(span.end_time_unix_nano > span.start_time_unix_nano);
        assert_eq!(span.name, format!("responses.create {}", row.0));
    }
}
