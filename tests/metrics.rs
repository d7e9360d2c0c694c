//! `/metrics` after known traffic: every counter in CONTRACT §11 adds up to
//! the ledger it describes. One test in this binary, because the Prometheus
//! recorder is process-wide and counts everything the process did.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{gpt55_price, TestGateway};
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::PgPool;

/// `name{labels} value` lines of the exposition, labels as written.
fn samples(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.to_owned()))
        })
        .collect()
}

fn value(samples: &BTreeMap<String, String>, series: &str) -> f64 {
    samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series}"))
        .parse()
        .unwrap()
}

fn type_of<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("# TYPE {name} ")))
}

#[sqlx::test]
async fn metrics_add_up_to_the_ledger(pool: PgPool) {
    let gw = TestGateway::start(pool.clone()).await;
    gw.set_price("gpt-5.5", gpt55_price()).await;
    let key = gw.key("acme").await;

    for usage in ["1200,200,900,600", "10,0,7,3", "333,33,101,1"] {
        let r = gw
            .create(&key, json!({"model": "turing/gpt-5.5", "input": "hi", "metadata": {"mock_usage": usage}}))
            .await;
        assert_eq!(r.status(), 200);
    }
    let streamed = gw
        .create(
            &key,
            json!({"model": "turing/gpt-5.5", "input": "hi", "stream": true,
                             "metadata": {"mock_usage": "50,5,40,20"}}),
        )
        .await;
    assert_eq!(streamed.status(), 200);
    streamed.text().await.unwrap();
    // Two refusals: one for a model nobody has (its label must not be the
    // client's text), one for a built-in tool the platform does not offer.
    let unknown = gw
        .create(
            &key,
            json!({"model": "turing/no-such-model-x9", "input": "hi"}),
        )
        .await;
    assert_eq!(unknown.status(), 404);
    let tool = gw
        .create(
            &key,
            json!({"model": "turing/gpt-5.5", "input": "hi",
                             "tools": [{"type": "code_interpreter"}], "tool_choice": "required"}),
        )
        .await;
    assert_eq!(tool.status(), 400);
    let rows = gw.rows(6).await;
    assert_eq!(rows.len(), 6);

    let text = gw
        .http
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains("no-such-model-x9"),
        "a client's model text became a label"
    );
    let s = samples(&text);

    let (input, cached, output, reasoning, cost, requests): (i64, i64, i64, i64, Decimal, i64) =
        sqlx::query_as(
            "SELECT sum(input_tokens)::bigint, sum(cached_tokens)::bigint, sum(output_tokens)::bigint,
                    sum(reasoning_tokens)::bigint, sum(cost), count(*)
             FROM usage_ledger WHERE model = 'gpt-5.5' AND status <> 'rejected'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(requests, 4);
    for (kind, expected) in [
        ("input", input),
        ("cached_input", cached),
        ("output", output),
        ("reasoning", reasoning),
    ] {
        let series = format!("tollgate_tokens_total{{model=\"gpt-5.5\",type=\"{kind}\"}}");
        assert_eq!(value(&s, &series), expected as f64, "{series}");
    }
    // The cost counter is summed exactly and rendered as the decimal itself.
    let cost_series = "tollgate_cost_usd_total{model=\"gpt-5.5\"}";
    let rendered: Decimal = s[cost_series].parse().unwrap();
    assert_eq!(rendered, cost.normalize());
    assert_eq!(type_of(&text, "tollgate_cost_usd_total"), Some("counter"));

    let completed = "tollgate_requests_total{endpoint=\"responses.create\",status=\"completed\",model=\"gpt-5.5\"}";
    assert_eq!(value(&s, completed), 4.0);
    let rejected = "tollgate_requests_total{endpoint=\"responses.create\",status=\"rejected\",model=\"other\"}";
    assert_eq!(value(&s, rejected), 2.0);

    let durations = "tollgate_request_duration_seconds_count{endpoint=\"responses.create\"}";
    assert_eq!(value(&s, durations), 6.0);
    assert_eq!(
        type_of(&text, "tollgate_request_duration_seconds"),
        Some("histogram")
    );
    let first_bytes = "tollgate_time_to_first_byte_seconds_count{endpoint=\"responses.create\"}";
    assert_eq!(value(&s, first_bytes), 4.0);
    let upstream = "tollgate_upstream_duration_seconds_count{upstream=\"mock\"}";
    assert_eq!(value(&s, upstream), 4.0);

    assert_eq!(value(&s, "tollgate_ledger_rows_written_total"), 6.0);
    assert_eq!(
        type_of(&text, "tollgate_ledger_rows_written_total"),
        Some("counter")
    );
    assert_eq!(value(&s, "tollgate_ledger_rows_spooled"), 0.0);
    for line in text.lines().filter(|l| l.starts_with("tollgate_")) {
        assert!(
            !line.contains("tenant=") && !line.contains("api_key"),
            "unbounded label: {line}"
        );
    }
    gw.shutdown().await;
}
