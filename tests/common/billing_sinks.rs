//! Stand-ins for the billing sinks, built from each API's published request
//! schema, on one real axum server at 127.0.0.1:0:
//! - OpenMeter `POST /api/v1/events` (`application/cloudevents-batch+json`,
//!   Bearer key): each CloudEvent needs `specversion` 1.0, `id`, `source`,
//!   `type`, `subject`, an RFC 3339 `time`; a bad event answers 400
//!   `application/problem+json` and stores nothing; dedupe by (`source`, `id`).
//! - Lago `POST /api/v1/events/batch` (Bearer): `{"events": [...]}`, at most
//!   100, each with `transaction_id`, `external_subscription_id`, `code`,
//!   `timestamp`, a decimal `precise_total_amount_cents`; the batch is
//!   validated as a whole: 422 `validation_errors` with `error_details` by
//!   event index (a `transaction_id` already stored is
//!   `value_already_exist`), nothing stored.
//! - Stripe `POST /v1/billing/meter_events` (form, Bearer): `event_name`,
//!   `identifier`, integer `timestamp` within the last 35 days,
//!   `payload[stripe_customer_id]`, integer `payload[value]`; an identifier
//!   already held answers 400 `resource_already_exists`.
//! - Webhook `POST /webhook`: the CloudEvents batch, `x-tollgate-signature`
//!   verified with the shared secret (401 otherwise); dedupe by (`source`, `id`).
//!
//! Each sink counts events received, duplicates seen before its dedupe, and
//! keeps the unique events; faults are set per sink: down (503), the next N
//! requests 500, the next N 429 with `Retry-After: 1`, a delay after storing
//! (the sender times out though the sink took the events), and events of a
//! given model refused as invalid.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;
use serde_json::{json, Value};

pub const API_KEY: &str = "sink-secret-key";
pub const REFUSED_MODEL: &str = "refuse-me";

#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub down: bool,
    pub fail_next: u32,
    pub rate_limit_next: u32,
    /// Sleep this long after storing, before answering.
    pub delay_after_store: Option<Duration>,
    /// Apply the delay to this many more requests only.
    pub delay_count: u32,
}

/// One sink's books.
#[derive(Debug, Clone, Default)]
pub struct Book {
    pub requests: u64,
    /// Events received in requests that reached the dedupe step.
    pub received: u64,
    /// Events whose id the sink already held.
    pub duplicates: u64,
    /// Unique events by dedupe key, in arrival order of first sight.
    pub unique: BTreeMap<String, Value>,
    pub order: Vec<String>,
    /// Events refused as invalid: (id, reason).
    pub refused: Vec<(String, String)>,
    pub largest_batch: usize,
    pub faults: Faults,
    /// Requests whose auth or signature was wrong.
    pub unauthorized: u64,
}

impl Book {
    /// The exported money: sum of the unique events' cost.
    pub fn cost_sum(&self, sink: &str) -> Decimal {
        self.unique.values().map(|e| cost_of(sink, e)).sum()
    }

    /// The ledger request id of each unique event (its id in the sink's own
    /// field), with how many unique events name it: more than one would be
    /// a double bill the sink's dedupe did not catch.
    pub fn per_request(&self) -> BTreeMap<String, usize> {
        let mut per = BTreeMap::new();
        for e in self.unique.values() {
            let id = ["id", "transaction_id", "identifier"]
                .iter()
                .find_map(|f| e[*f].as_str())
                .unwrap()
                .to_owned();
            *per.entry(id).or_insert(0) += 1;
        }
        per
    }

    /// Requests held more than once after the sink's dedupe.
    pub fn after_dedupe(&self) -> usize {
        self.per_request().values().map(|n| n - 1).sum()
    }

    pub fn value_sum(&self) -> i64 {
        self.unique
            .values()
            .map(|e| {
                e["payload[value]"]
                    .as_str()
                    .unwrap()
                    .parse::<i64>()
                    .unwrap()
            })
            .sum()
    }
}

pub fn cost_of(sink: &str, e: &Value) -> Decimal {
    match sink {
        "lago" => {
            Decimal::from_str(e["precise_total_amount_cents"].as_str().unwrap()).unwrap()
                / Decimal::ONE_HUNDRED
        }
        "stripe" => Decimal::ZERO,
        _ => Decimal::from_str(e["data"]["cost"].as_str().unwrap()).unwrap(),
    }
}

#[derive(Clone)]
struct Shared {
    books: Arc<Mutex<BTreeMap<String, Book>>>,
    secret: Vec<u8>,
}

pub struct BillingSinks {
    pub base: String,
    shared: Shared,
}

impl BillingSinks {
    /// `secret`: the webhook signing secret.
    pub async fn start(secret: &str) -> Self {
        let books: BTreeMap<String, Book> = ["openmeter", "lago", "stripe", "webhook"]
            .into_iter()
            .map(|s| (s.to_owned(), Book::default()))
            .collect();
        let shared = Shared {
            books: Arc::new(Mutex::new(books)),
            secret: secret.as_bytes().to_vec(),
        };
        let app = axum::Router::new()
            .route("/api/v1/events", axum::routing::post(openmeter))
            .route("/api/v1/events/batch", axum::routing::post(lago))
            .route("/v1/billing/meter_events", axum::routing::post(stripe))
            .route("/{hook}", axum::routing::post(webhook))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, shared }
    }

    pub fn webhook_url(&self) -> String {
        format!("{}/webhook", self.base)
    }

    pub fn book(&self, sink: &str) -> Book {
        self.shared.books.lock().unwrap()[sink].clone()
    }

    pub fn set_faults(&self, sink: &str, faults: Faults) {
        self.shared
            .books
            .lock()
            .unwrap()
            .get_mut(sink)
            .unwrap()
            .faults = faults;
    }

    /// Waits until `sink` holds `n` unique events.
    pub async fn until_unique(&self, sink: &str, n: usize, within: Duration) -> Book {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let book = self.book(sink);
            if book.unique.len() >= n {
                return book;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{sink}: {} of {n} unique events",
                book.unique.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Before the dedupe: down, 5xx, 429. `Some` answers at once.
fn gate(shared: &Shared, sink: &str, headers: &HeaderMap, bearer: bool) -> Option<Response> {
    let mut books = shared.books.lock().unwrap();
    let book = books.get_mut(sink).unwrap();
    book.requests += 1;
    if bearer {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if auth != format!("Bearer {API_KEY}") {
            book.unauthorized += 1;
            return Some((StatusCode::UNAUTHORIZED, "unauthorized").into_response());
        }
    }
    let f = &mut book.faults;
    if f.down {
        return Some((StatusCode::SERVICE_UNAVAILABLE, "down").into_response());
    }
    if f.fail_next > 0 {
        f.fail_next -= 1;
        return Some((StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response());
    }
    if f.rate_limit_next > 0 {
        f.rate_limit_next -= 1;
        return Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                r#"{"error":{"type":"rate_limit_error"}}"#,
            )
                .into_response(),
        );
    }
    None
}

/// Stores `events` by key; the delay to wait before answering.
fn store(shared: &Shared, sink: &str, events: Vec<(String, Value)>) -> Option<Duration> {
    let mut books = shared.books.lock().unwrap();
    let book = books.get_mut(sink).unwrap();
    book.largest_batch = book.largest_batch.max(events.len());
    for (key, event) in events {
        book.received += 1;
        if book.unique.contains_key(&key) {
            book.duplicates += 1;
        } else {
            book.order.push(key.clone());
            book.unique.insert(key, event);
        }
    }
    let f = &mut book.faults;
    match f.delay_after_store {
        Some(delay) if f.delay_count > 0 => {
            f.delay_count -= 1;
            Some(delay)
        }
        _ => None,
    }
}

fn refuse(shared: &Shared, sink: &str, id: &str, reason: &str) {
    let mut books = shared.books.lock().unwrap();
    books
        .get_mut(sink)
        .unwrap()
        .refused
        .push((id.to_owned(), reason.to_owned()));
}

fn rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

/// A CloudEvent's problem, if any.
fn cloudevent_problem(e: &Value) -> Option<String> {
    if e["specversion"] != "1.0" {
        return Some("specversion must be 1.0".into());
    }
    for field in ["id", "source", "type", "subject"] {
        if e[field].as_str().is_none_or(str::is_empty) {
            return Some(format!("{field} is required"));
        }
    }
    if !rfc3339(&e["time"]) {
        return Some("time must be RFC 3339".into());
    }
    if e["data"]["cost"]
        .as_str()
        .is_none_or(|c| Decimal::from_str(c).is_err())
    {
        return Some("data.cost must be a decimal string".into());
    }
    if e["data"]["model"] == REFUSED_MODEL {
        return Some("meter validation: model is not billable".into());
    }
    None
}

fn cloudevents(shared: &Shared, sink: &str, body: &[u8]) -> Result<Vec<(String, Value)>, Response> {
    let events: Vec<Value> = serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("not a CloudEvents batch: {e}"),
        )
            .into_response()
    })?;
    for e in &events {
        if let Some(problem) = cloudevent_problem(e) {
            refuse(shared, sink, e["id"].as_str().unwrap_or(""), &problem);
            return Err((
                StatusCode::BAD_REQUEST,
                [("content-type", "application/problem+json")],
                json!({"type": "about:blank", "title": "Bad Request", "status": 400,
                       "detail": format!("invalid event {}: {problem}", e["id"])})
                .to_string(),
            )
                .into_response());
        }
    }
    Ok(events
        .into_iter()
        .map(|e| {
            let key = format!(
                "{}/{}",
                e["source"].as_str().unwrap(),
                e["id"].as_str().unwrap()
            );
            (key, e)
        })
        .collect())
}

async fn answer_after(delay: Option<Duration>, response: Response) -> Response {
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    response
}

async fn openmeter(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = gate(&shared, "openmeter", &headers, true) {
        return r;
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok())
        != Some("application/cloudevents-batch+json")
    {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "content type").into_response();
    }
    let events = match cloudevents(&shared, "openmeter", &body) {
        Ok(events) => events,
        Err(r) => return r,
    };
    let delay = store(&shared, "openmeter", events);
    answer_after(delay, StatusCode::NO_CONTENT.into_response()).await
}

async fn webhook(
    State(shared): State<Shared>,
    Path(_hook): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = gate(&shared, "webhook", &headers, false) {
        return r;
    }
    let signature = headers
        .get("x-tollgate-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if signature != super::webhook::sign(&shared.secret, &body) {
        shared
            .books
            .lock()
            .unwrap()
            .get_mut("webhook")
            .unwrap()
            .unauthorized += 1;
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    let events = match cloudevents(&shared, "webhook", &body) {
        Ok(events) => events,
        Err(r) => return r,
    };
    let delay = store(&shared, "webhook", events);
    answer_after(delay, StatusCode::OK.into_response()).await
}

fn lago_problem(e: &Value) -> Option<(&'static str, &'static str)> {
    for field in ["transaction_id", "external_subscription_id", "code"] {
        if e[field].as_str().is_none_or(str::is_empty) {
            return Some((
                match field {
                    "transaction_id" => "transaction_id",
                    "external_subscription_id" => "external_subscription_id",
                    _ => "code",
                },
                "value_is_mandatory",
            ));
        }
    }
    if e["timestamp"]
        .as_str()
        .is_none_or(|t| Decimal::from_str(t).is_err())
    {
        return Some(("timestamp", "invalid_format"));
    }
    if e["precise_total_amount_cents"]
        .as_str()
        .is_none_or(|c| Decimal::from_str(c).is_err())
    {
        return Some(("precise_total_amount_cents", "invalid_value"));
    }
    if e["properties"]["model"] == REFUSED_MODEL {
        return Some(("properties", "invalid_value"));
    }
    None
}

async fn lago(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = gate(&shared, "lago", &headers, true) {
        return r;
    }
    let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "json").into_response();
    };
    let Some(events) = parsed["events"].as_array().cloned() else {
        return (StatusCode::BAD_REQUEST, "events").into_response();
    };
    if events.len() > 100 {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"status": 422, "error": "Unprocessable Entity", "code": "validation_errors",
                   "error_details": {"events": ["too_many_events"]}})
            .to_string(),
        )
            .into_response();
    }
    let mut details = serde_json::Map::new();
    let mut dups = 0;
    {
        let books = shared.books.lock().unwrap();
        let held = &books["lago"].unique;
        for (i, e) in events.iter().enumerate() {
            if let Some((field, error)) = lago_problem(e) {
                details.insert(i.to_string(), json!({ field: [error] }));
            } else if held.contains_key(e["transaction_id"].as_str().unwrap()) {
                dups += 1;
                details.insert(
                    i.to_string(),
                    json!({"transaction_id": ["value_already_exist"]}),
                );
            }
        }
    }
    if !details.is_empty() {
        let mut books = shared.books.lock().unwrap();
        let book = books.get_mut("lago").unwrap();
        book.received += events.len() as u64;
        book.duplicates += dups;
        for (i, d) in &details {
            if d.get("transaction_id").is_none() {
                let e = &events[i.parse::<usize>().unwrap()];
                book.refused.push((
                    e["transaction_id"].as_str().unwrap_or("").to_owned(),
                    d.to_string(),
                ));
            }
        }
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"status": 422, "error": "Unprocessable Entity", "code": "validation_errors",
                   "error_details": details})
            .to_string(),
        )
            .into_response();
    }
    let keyed = events
        .iter()
        .map(|e| (e["transaction_id"].as_str().unwrap().to_owned(), e.clone()))
        .collect();
    let delay = store(&shared, "lago", keyed);
    answer_after(
        delay,
        (StatusCode::OK, json!({"events": events}).to_string()).into_response(),
    )
    .await
}

async fn stripe(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = gate(&shared, "stripe", &headers, true) {
        return r;
    }
    let form: BTreeMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let error = |code: &str, message: &str| {
        (
            StatusCode::BAD_REQUEST,
            json!({"error": {"type": "invalid_request_error", "code": code, "message": message}})
                .to_string(),
        )
            .into_response()
    };
    for field in [
        "event_name",
        "identifier",
        "timestamp",
        "payload[stripe_customer_id]",
        "payload[value]",
    ] {
        if form.get(field).is_none_or(|v| v.is_empty()) {
            return error("parameter_missing", field);
        }
    }
    let Ok(ts) = form["timestamp"].parse::<i64>() else {
        return error("parameter_invalid_integer", "timestamp");
    };
    let now = chrono::Utc::now().timestamp();
    if ts < now - 35 * 86_400 || ts > now + 300 {
        return error(
            "timestamp_too_far_in_past",
            "timestamp must be within the past 35 days",
        );
    }
    if form["payload[value]"].parse::<i64>().is_err() {
        return error("parameter_invalid_integer", "payload[value]");
    }
    let id = form["identifier"].clone();
    {
        let mut books = shared.books.lock().unwrap();
        let book = books.get_mut("stripe").unwrap();
        if book.unique.contains_key(&id) {
            book.received += 1;
            book.duplicates += 1;
            drop(books);
            return error(
                "resource_already_exists",
                "An event with this identifier already exists.",
            );
        }
    }
    let event = Value::Object(
        form.into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    );
    let delay = store(&shared, "stripe", vec![(id, event.clone())]);
    answer_after(
        delay,
        (
            StatusCode::OK,
            json!({"object": "billing.meter_event"}).to_string(),
        )
            .into_response(),
    )
    .await
}

// ---- Driving the exporter in-process against these stand-ins ----

use sqlx::PgPool;
use tollgate::config::exports::SinkConfig;
use tollgate::export::ExportJob;
use tollgate::jobs::{JobContext, Round};

pub const SIGNING_SECRET: &str = "export-signing-secret-0123456789";

impl BillingSinks {
    /// The `[exports.<sink>]` settings pointing at this stand-in.
    pub fn config(&self, sink: &str) -> SinkConfig {
        SinkConfig {
            url: if sink == "webhook" {
                self.webhook_url()
            } else {
                self.base.clone()
            },
            api_key: tollgate::config::Secret::new(if sink == "webhook" { "" } else { API_KEY }),
            code: (sink == "lago").then(|| "llm_usage".to_owned()),
            event_name: (sink == "stripe").then(|| "llm_tokens".to_owned()),
            value: (sink == "stripe").then(|| "total_tokens".to_owned()),
            request_timeout_secs: 2,
            idle_ms: 50,
            ..SinkConfig::default()
        }
    }

    /// The exporter of `sink`, as the gateway builds it.
    pub fn job(&self, sink: &'static str, adjust: impl FnOnce(&mut SinkConfig)) -> ExportJob {
        let mut config = self.config(sink);
        adjust(&mut config);
        ExportJob::new(
            sink,
            config,
            tollgate::config::Secret::new(SIGNING_SECRET),
            Arc::default(),
        )
        .unwrap()
    }
}

pub fn ctx(pool: &PgPool) -> JobContext {
    JobContext {
        pool: pool.clone(),
        stop: tokio_util::sync::CancellationToken::new(),
    }
}

/// Runs `job` until a step finds nothing more (or `max_steps`); returns the
/// errors of failed steps. Failed steps are retried at once.
pub async fn drive(pool: &PgPool, job: &mut ExportJob, max_steps: usize) -> Vec<String> {
    let ctx = ctx(pool);
    let mut errors = Vec::new();
    for _ in 0..max_steps {
        match tollgate::jobs::run_once(&ctx, job).await {
            Ok(Round::Ran(p)) if !p.more => return errors,
            Ok(_) => {}
            Err(err) => {
                eprintln!("export step failed: {err}");
                errors.push(err.to_string());
            }
        }
    }
    errors
}

/// Registers the sink (as a gateway's first step does).
pub async fn register(pool: &PgPool, sink: &str) {
    tollgate::export::outbox::register(pool, sink)
        .await
        .unwrap();
}

/// Inserts `n` final, priced ledger rows for `tenant` (exact 16-digit
/// costs), `tag` making request ids unique; returns their request ids.
pub async fn insert_rows(pool: &PgPool, tenant: &str, tag: &str, n: i64) -> Vec<String> {
    insert_rows_with(
        pool,
        tenant,
        tag,
        n,
        "gpt-5.5",
        true,
        chrono::Duration::minutes(1),
    )
    .await
}

pub async fn insert_rows_with(
    pool: &PgPool,
    tenant: &str,
    tag: &str,
    n: i64,
    model: &str,
    priced: bool,
    age: chrono::Duration,
) -> Vec<String> {
    sqlx::query_scalar(
        "INSERT INTO usage_ledger (request_id, tenant_id, api_key_id, endpoint, model, stream,
             status, usage_source, input_tokens, cached_tokens, output_tokens, reasoning_tokens,
             total_tokens, service_tier, cost, unpriced_reason, started_at, finished_at)
         SELECT 'req_' || $2 || '_' || g, $1, 'key_' || $1, 'responses.create', $4, false,
             'completed', 'reported', 100 + g % 977, g % 50, 20 + g % 311, g % 7,
             120 + g % 977 + g % 311, 'default',
             CASE WHEN $5 THEN ((g * 7919) % 1000003) * 0.0000000012345678901 END,
             CASE WHEN $5 THEN NULL ELSE 'no_price' END,
             now() - $6::interval + g * interval '1 microsecond', now()
         FROM generate_series(1, $3) AS g
         RETURNING request_id",
    )
    .bind(tenant)
    .bind(tag)
    .bind(n)
    .bind(model)
    .bind(priced)
    .bind(age)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// `before` good rows, one row the stand-ins refuse (`REFUSED_MODEL`), then
/// `after` good rows, all of `tenant`; returns the refused row's request id.
pub async fn insert_rows_around_a_refused_one(
    pool: &PgPool,
    tenant: &str,
    before: i64,
    after: i64,
) -> String {
    insert_rows(pool, tenant, "a", before).await;
    let bad = insert_rows_with(
        pool,
        tenant,
        "bad",
        1,
        REFUSED_MODEL,
        true,
        chrono::Duration::minutes(1),
    )
    .await;
    insert_rows(pool, tenant, "c", after).await;
    bad.into_iter().next().unwrap()
}

/// The ledger's final rows: count, exact cost sum, token sum.
pub async fn ledger_final(pool: &PgPool, tenants: &[&str]) -> (i64, Decimal, i64) {
    sqlx::query_as(
        "SELECT count(*), coalesce(sum(cost), 0), coalesce(sum(total_tokens), 0)::int8
         FROM usage_ledger WHERE cost IS NOT NULL AND status <> 'queued' AND tenant_id = ANY($1)
           AND model IS DISTINCT FROM $2",
    )
    .bind(tenants)
    .bind(REFUSED_MODEL)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Sets a tenant's billing ids straight in the table.
pub async fn map_tenant(pool: &PgPool, tenant: &str) {
    sqlx::query(
        "INSERT INTO tenant_billing (tenant_id, openmeter_subject, lago_external_subscription_id,
             stripe_customer_id) VALUES ($1, 'subj-' || $1, 'sub-' || $1, 'cus_' || $1)
         ON CONFLICT (tenant_id) DO UPDATE SET openmeter_subject = EXCLUDED.openmeter_subject,
             lago_external_subscription_id = EXCLUDED.lago_external_subscription_id,
             stripe_customer_id = EXCLUDED.stripe_customer_id",
    )
    .bind(tenant)
    .execute(pool)
    .await
    .unwrap();
}

/// One line of the fault table (printed; the report collects them).
/// Stripe sums the meter's integer (`total_tokens` here), the others cost.
pub fn fault_line(fault: &str, sink: &str, book: &Book, ledger_rows: i64, ledger_cost: Decimal) {
    let sums = if sink == "stripe" {
        format!("tokens exported {}", book.value_sum())
    } else {
        format!(
            "cost ledger {} exported {}",
            ledger_cost.normalize(),
            book.cost_sum(sink).normalize()
        )
    };
    eprintln!(
        "FAULT | {fault} | {sink} | events sent {} | duplicates before dedupe {} | after dedupe {} | unique {} of {ledger_rows} | {sums}",
        book.received,
        book.duplicates,
        book.after_dedupe(),
        book.unique.len(),
    );
}
