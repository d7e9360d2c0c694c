//! Helpers of the report tests: random ledger rows, the sums a report must
//! show computed straight from the rows, and Python's csv module as the
//! reference CSV reader.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write as _;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgPool;

use tollgate::ledger::{LedgerRow, COLUMNS};

/// A tenant and the public ids and secrets of its keys.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    pub key_ids: Vec<String>,
    pub keys: Vec<String>,
}

pub async fn tenant(pool: &PgPool, name: &str, keys: usize) -> Tenant {
    let mut tenant = Tenant {
        name: name.to_owned(),
        key_ids: Vec::new(),
        keys: Vec::new(),
    };
    for _ in 0..keys {
        let created = tollgate::auth::create_key(pool, name, "reports")
            .await
            .unwrap();
        tenant.key_ids.push(created.info.id);
        tenant.keys.push(created.key);
    }
    tenant
}

/// A seeded generator: `TOLLGATE_TEST_SEED` replays a failure.
pub fn rng() -> (StdRng, u64) {
    let seed = std::env::var("TOLLGATE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    (StdRng::seed_from_u64(seed), seed)
}

/// Strings that CSV must quote, and one a spreadsheet would evaluate.
pub const AWKWARD: [&str; 6] = [
    "a,b",
    "say \"hi\"",
    "line\r\nbreak",
    "lf\nonly",
    "=SUM(A1:A9)",
    "ünïcødé ✓",
];

/// Every status but `queued`: a queued row is a background response the
/// gateway's reconciler settles (rewrites) on its own schedule.
pub const FINAL_STATUSES: [&str; 7] = [
    "completed",
    "incomplete",
    "failed",
    "cancelled",
    "upstream_error",
    "rejected",
    "interrupted",
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// `n` rows spread over `[from, to)` (unix seconds, microsecond times)
/// across the tenants' keys, models, tiers, statuses, currencies and end
/// users, with random exact costs, some null.
pub fn random_rows(
    rng: &mut StdRng,
    n: usize,
    tenants: &[Tenant],
    from: i64,
    to: i64,
) -> Vec<LedgerRow> {
    let models = [
        Some("gpt-5.5"),
        Some("gpt-5.5"),
        Some("gpt-5.4-mini"),
        Some("o4-mini"),
        None,
    ];
    let tiers = [Some("default"), Some("flex"), Some("priority"), None];
    (0..n)
        .map(|i| {
            let tenant = pick(rng, tenants);
            let key = pick(rng, &tenant.key_ids).clone();
            let micros = rng.random_range(from * 1_000_000..to * 1_000_000);
            let started_at = DateTime::<Utc>::from_timestamp_micros(micros).unwrap();
            let input = rng.random_range(0..5_000_i64);
            let cached = rng.random_range(0..=input);
            let output = rng.random_range(0..3_000_i64);
            let reasoning = rng.random_range(0..=output);
            let priced = rng.random_bool(0.85);
            let cost = priced.then(|| {
                Decimal::new(
                    rng.random_range(0..100_000_000_000_000_i64),
                    rng.random_range(6..=16),
                )
            });
            let end_user = match rng.random_range(0..10) {
                0..=3 => None,
                4..=7 => Some(format!("user-{}", rng.random_range(0..5))),
                _ => Some(pick(rng, &AWKWARD).to_string()),
            };
            LedgerRow {
                id: None,
                request_id: format!("req_{i}_{}", rng.random::<u64>()),
                response_id: rng
                    .random_bool(0.8)
                    .then(|| format!("resp_{}", rng.random::<u32>())),
                tenant: tenant.name.clone(),
                api_key_id: key,
                endpoint: "responses.create".into(),
                model: pick(rng, &models).map(str::to_owned),
                upstream: Some("mock".into()),
                upstream_model: Some("gpt-5.5-2026-01-01".into()),
                stream: rng.random_bool(0.5),
                status: pick(rng, &FINAL_STATUSES).to_string(),
                usage_source: "reported".into(),
                input_tokens: input,
                cached_tokens: cached,
                output_tokens: output,
                reasoning_tokens: reasoning,
                total_tokens: input + output,
                service_tier: pick(rng, &tiers).map(str::to_owned),
                price_id: None,
                cost,
                unpriced_reason: (!priced).then(|| "no_price".to_owned()),
                currency: if rng.random_bool(0.95) { "usd" } else { "eur" }.into(),
                http_status: Some(200),
                error_code: rng
                    .random_bool(0.05)
                    .then(|| pick(rng, &AWKWARD).to_string()),
                attempts: 1,
                fallback_from: None,
                end_user,
                dropped_tools: rng
                    .random_bool(0.1)
                    .then(|| "web_search,code_interpreter".to_owned()),
                client_request_id: rng
                    .random_bool(0.3)
                    .then(|| format!("trace {i}, \"quoted\"")),
                client_disconnected: rng.random_bool(0.1),
                mcp_calls: rng.random_range(0..3),
                started_at,
                first_byte_at: rng
                    .random_bool(0.7)
                    .then(|| started_at + chrono::TimeDelta::milliseconds(120)),
                finished_at: started_at + chrono::TimeDelta::milliseconds(900),
                anomaly: None,
            }
        })
        .collect()
}

/// Every stored row, newest first (the records order).
pub async fn stored_rows(pool: &PgPool) -> Vec<LedgerRow> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM usage_ledger ORDER BY started_at DESC, id DESC"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The sums of one result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sums {
    pub requests: i64,
    pub input: i64,
    pub cached: i64,
    pub uncached: i64,
    pub output: i64,
    pub reasoning: i64,
    pub cost: Decimal,
    pub unpriced: i64,
}

impl Sums {
    fn add(&mut self, row: &LedgerRow) {
        self.requests += 1;
        self.input += row.input_tokens;
        self.cached += row.cached_tokens;
        self.uncached += row.input_tokens - row.cached_tokens;
        self.output += row.output_tokens;
        self.reasoning += row.reasoning_tokens;
        match row.cost {
            Some(cost) => self.cost += cost,
            None => self.unpriced += 1,
        }
    }

    fn from_result(result: &Value) -> Self {
        let int = |name: &str| result[name].as_i64().unwrap_or_else(|| panic!("{name}"));
        Self {
            requests: int("num_model_requests"),
            input: int("input_tokens"),
            cached: int("input_cached_tokens"),
            uncached: int("input_uncached_tokens"),
            output: int("output_tokens"),
            reasoning: int("output_reasoning_tokens"),
            cost: result["cost"]["value"].as_str().unwrap().parse().unwrap(),
            unpriced: int("unpriced_requests"),
        }
    }
}

/// (bucket start as reported, group values in `group_by` order, currency).
pub type ResultKey = (i64, Vec<Option<String>>, String);

/// What a usage report over `[start, end)` must show, from the rows alone.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub group_by: Vec<&'static str>,
    pub tenants: Vec<String>,
    pub models: Vec<String>,
    pub api_key_ids: Vec<String>,
    pub statuses: Vec<String>,
}

impl Report {
    fn keeps(&self, row: &LedgerRow) -> bool {
        let within = |list: &[String], value: Option<&str>| {
            list.is_empty() || value.is_some_and(|v| list.iter().any(|l| l == v))
        };
        within(&self.tenants, Some(&row.tenant))
            && within(&self.models, row.model.as_deref())
            && within(&self.api_key_ids, Some(&row.api_key_id))
            && within(&self.statuses, Some(&row.status))
    }

    fn field(row: &LedgerRow, name: &str) -> Option<String> {
        match name {
            "tenant" => Some(row.tenant.clone()),
            "api_key_id" => Some(row.api_key_id.clone()),
            "model" => row.model.clone(),
            "service_tier" => row.service_tier.clone(),
            "status" => Some(row.status.clone()),
            "end_user" => row.end_user.clone(),
            other => panic!("no group field {other}"),
        }
    }

    /// Expected results, and every bucket start (clipped) of the range.
    pub fn expect(
        &self,
        rows: &[LedgerRow],
        start: i64,
        end: i64,
        width: i64,
    ) -> (BTreeMap<ResultKey, Sums>, Vec<(i64, i64)>) {
        let start_us = start * 1_000_000;
        let end_us = end * 1_000_000;
        let mut sums: BTreeMap<ResultKey, Sums> = BTreeMap::new();
        for row in rows {
            let at = row.started_at.timestamp_micros();
            if at < start_us || at >= end_us || !self.keeps(row) {
                continue;
            }
            let seconds = row.started_at.timestamp();
            let bucket = (seconds - seconds.rem_euclid(width)).max(start);
            let group = self
                .group_by
                .iter()
                .map(|name| Self::field(row, name))
                .collect();
            sums.entry((bucket, group, row.currency.clone()))
                .or_default()
                .add(row);
        }
        let mut buckets = Vec::new();
        let mut at = start - start.rem_euclid(width);
        while at < end {
            buckets.push((at.max(start), (at + width).min(end)));
            at += width;
        }
        (sums, buckets)
    }

    /// The query string (without start, end, width, limit, page).
    pub fn params(&self) -> String {
        let mut params = Vec::new();
        if !self.group_by.is_empty() {
            params.push(format!("group_by={}", self.group_by.join(",")));
        }
        for (name, list) in [
            ("tenants", &self.tenants),
            ("models", &self.models),
            ("api_key_ids", &self.api_key_ids),
            ("statuses", &self.statuses),
        ] {
            for value in list {
                params.push(format!(
                    "{name}={}",
                    form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>()
                ));
            }
        }
        params.join("&")
    }
}

/// Results and buckets of all pages, keyed like [`Report::expect`].
pub fn collect_pages(
    pages: &[Value],
    group_by: &[&str],
) -> (BTreeMap<ResultKey, Sums>, Vec<(i64, i64)>) {
    let mut sums = BTreeMap::new();
    let mut buckets = Vec::new();
    for page in pages {
        assert_eq!(page["object"], "page");
        for bucket in page["data"].as_array().unwrap() {
            assert_eq!(bucket["object"], "bucket");
            let start = bucket["start_time"].as_i64().unwrap();
            buckets.push((start, bucket["end_time"].as_i64().unwrap()));
            for result in bucket["results"].as_array().unwrap() {
                assert_eq!(result["object"], "usage.result");
                let group = group_by
                    .iter()
                    .map(|name| result[*name].as_str().map(str::to_owned))
                    .collect();
                let currency = result["cost"]["currency"].as_str().unwrap().to_owned();
                let previous = sums.insert((start, group, currency), Sums::from_result(result));
                assert!(previous.is_none(), "a group twice in one bucket: {result}");
            }
        }
    }
    (sums, buckets)
}

/// Parses `csv` with Python's csv module: the rows as lists of strings.
pub fn python_csv(csv: &[u8]) -> Vec<Vec<String>> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(csv).unwrap();
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import csv, json, sys\n\
             with open(sys.argv[1], newline='', encoding='utf-8') as f:\n\
             \x20   json.dump(list(csv.reader(f, strict=True)), sys.stdout)\n",
        )
        .arg(file.path())
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python csv failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A JSON record field as CSV shows it: null is the empty field.
pub fn csv_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
