//! The simulated provider's organization API: what it served, counted per
//! UTC hour, served (dated) model, API key id, project, service tier and
//! batch, with its cost per line item at the provider's own prices; served
//! back through the Usage API (`GET /organization/usage/completions`), the
//! Costs API (`GET /organization/costs`) and the Projects API (projects and
//! their keys, redacted), in OpenAI's published shapes and paging
//! (`UsageResponse` buckets, `results`, `has_more`/`next_page`,
//! `amount.value`/`currency`, `line_item`).
//!
//! Tests and the demo inject every disagreement through [`Organization`]:
//! usage no gateway saw ([`Organization::add_usage`]), a revision of a past
//! day (the same, signed; [`Organization::add_cost`]), the provider's lag
//! ([`Organization::set_lag`]), prices that differ from Tollgate's
//! ([`Organization::set_price`]), and moving everything into the past
//! ([`Organization::shift_days`]). The endpoints require a bearer key that
//! starts with `sk-admin` (an admin key), as the real ones require one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode, Uri};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::render::{push_json, Usage};
use super::{ErrorBody, MockUpstream};
use crate::pricing::sheet::PriceSheet;

/// (model, api key id, project, tier, batch) as served.
pub type ServedGroup = (String, String, String, String, bool);
/// A usage result's group: the grouped fields, `None` when not grouped.
type UsageGroup<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    Option<bool>,
);
/// A cost result's group: line item, project, key.
type CostGroup<'a> = (Option<String>, Option<&'a str>, Option<&'a str>);

/// The project a key belongs to unless registered in another.
pub const DEFAULT_PROJECT: &str = "proj_default";

/// What was served in one hour to one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: i64,
    pub input: i64,
    pub cached: i64,
    pub output: i64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.input += other.input;
        self.cached += other.cached;
        self.output += other.output;
    }
}

/// Interned names keep millions of hourly groups small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Name(u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Group {
    hour: i64,
    model: Name,
    key: Name,
    project: Name,
    tier: Name,
    batch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct CostLine {
    day: i64,
    model: Name,
    kind: u8,
    project: Name,
    key: Name,
}

const KINDS: [&str; 3] = ["input", "cached input", "output"];

#[derive(Debug, Clone)]
struct Key {
    secret: String,
    id: String,
    project: String,
    created_at: i64,
}

#[derive(Default)]
struct OrgState {
    names: Vec<String>,
    ids: HashMap<String, Name>,
    usage: BTreeMap<Group, Counts>,
    costs: BTreeMap<CostLine, Decimal>,
    keys: Vec<Key>,
    prices: HashMap<String, PriceSheet>,
    lag_secs: i64,
}

impl OrgState {
    fn intern(&mut self, name: &str) -> Name {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = Name(self.names.len() as u32);
        self.names.push(name.to_owned());
        self.ids.insert(name.to_owned(), id);
        id
    }

    fn name(&self, id: Name) -> &str {
        self.names.get(id.0 as usize).map_or("", String::as_str)
    }

    /// The key registered for `secret`, registering it in `project` (or the
    /// default project) when new.
    fn key_for(&mut self, secret: &str, project: Option<&str>) -> Key {
        if let Some(key) = self.keys.iter().find(|k| k.secret == secret) {
            return key.clone();
        }
        let key = Key {
            secret: secret.to_owned(),
            id: api_key_id(secret),
            project: project.unwrap_or(DEFAULT_PROJECT).to_owned(),
            created_at: Utc::now().timestamp(),
        };
        self.keys.push(key.clone());
        key
    }

    fn add(&mut self, s: &Served<'_>) {
        let (at, model, tier, counts, reasoning) = (
            s.at.timestamp(),
            s.model,
            s.service_tier,
            &s.counts,
            s.reasoning,
        );
        let group = Group {
            hour: at.div_euclid(3_600) * 3_600,
            model: self.intern(model),
            key: self.intern(s.api_key_id),
            project: self.intern(s.project_id),
            tier: self.intern(tier),
            batch: s.batch,
        };
        self.usage.entry(group).or_default().add(counts);
        let Some(sheet) = self.prices.get(crate::reconcile::names::undated(model)) else {
            return;
        };
        let usage = crate::usage::Usage {
            input_tokens: counts.input,
            cached_tokens: counts.cached,
            output_tokens: counts.output,
            reasoning_tokens: reasoning,
            total_tokens: counts.input + counts.output,
        };
        let Ok((_, rates)) = crate::pricing::cost::select_rates(sheet, &usage, Some(tier)) else {
            return;
        };
        let lines = [
            Decimal::from(counts.input - counts.cached) * rates.input(),
            Decimal::from(counts.cached) * rates.cache_read_or_input(),
            Decimal::from(counts.output - reasoning) * rates.output()
                + Decimal::from(reasoning) * rates.reasoning_or_output(),
        ];
        for (kind, amount) in lines.into_iter().enumerate() {
            let line = CostLine {
                day: at.div_euclid(86_400) * 86_400,
                model: group.model,
                kind: kind as u8,
                project: group.project,
                key: group.key,
            };
            *self.costs.entry(line).or_default() += amount;
        }
    }
}

/// The provider's id of a key: `key_` and 16 hex digits of its hash.
pub fn api_key_id(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    format!("key_{}", hex::encode(&digest[..8]))
}

/// How the provider shows a key: its first 6 and last 4 characters.
pub fn redacted(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() <= 10 {
        return "sk-...".to_owned();
    }
    let head: String = chars[..6].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}...{tail}")
}

/// The simulated organization.
pub struct Organization {
    state: Mutex<OrgState>,
}

impl Default for Organization {
    fn default() -> Self {
        let org = Self {
            state: Mutex::default(),
        };
        if let Ok(report) =
            crate::pricing::litellm::parse_litellm(include_str!("../../config/prices.json"))
        {
            let mut state = org.lock();
            for model in report.imported {
                state.prices.insert(model.model, model.sheet);
            }
        }
        org
    }
}

/// One injected disagreement or revision: usage the provider counts.
#[derive(Debug, Clone)]
pub struct Served<'a> {
    pub at: DateTime<Utc>,
    /// As the provider names it (dated: `gpt-5.5-2025-08-07`).
    pub model: &'a str,
    pub api_key_id: &'a str,
    pub project_id: &'a str,
    pub service_tier: &'a str,
    pub batch: bool,
    pub counts: Counts,
    pub reasoning: i64,
}

impl Organization {
    fn lock(&self) -> std::sync::MutexGuard<'_, OrgState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `secret` as a key of `project`; its api key id.
    pub fn register_key(&self, secret: &str, project: &str) -> String {
        self.lock().key_for(secret, Some(project)).id
    }

    /// The provider's prices for `model` (undated) from now on.
    pub fn set_price(&self, model: &str, sheet: PriceSheet) {
        self.lock().prices.insert(model.to_owned(), sheet);
    }

    /// Data newer than this is not reported yet (the provider's lag).
    pub fn set_lag(&self, lag: std::time::Duration) {
        self.lock().lag_secs = lag.as_secs() as i64;
    }

    /// Counts usage (and its cost at the provider's prices) as if served.
    /// Negative counts revise what was counted.
    pub fn add_usage(&self, served: &Served<'_>) {
        self.lock().add(served);
    }

    /// Adds `amount` to one cost line (`kind`: `input`, `cached input`,
    /// `output`) of a day: a revision of the bill alone.
    pub fn add_cost(
        &self,
        day: DateTime<Utc>,
        model: &str,
        kind: &str,
        project: &str,
        key: &str,
        amount: Decimal,
    ) {
        let mut state = self.lock();
        let line = CostLine {
            day: day.timestamp().div_euclid(86_400) * 86_400,
            model: state.intern(model),
            kind: KINDS.iter().position(|k| *k == kind).unwrap_or(0) as u8,
            project: state.intern(project),
            key: state.intern(key),
        };
        *state.costs.entry(line).or_default() += amount;
    }

    /// Moves everything counted `days` days into the past.
    pub fn shift_days(&self, days: i64) {
        let mut state = self.lock();
        let shift = days * 86_400;
        state.usage = std::mem::take(&mut state.usage)
            .into_iter()
            .map(|(mut g, c)| {
                g.hour -= shift;
                (g, c)
            })
            .collect();
        state.costs = std::mem::take(&mut state.costs)
            .into_iter()
            .map(|(mut l, a)| {
                l.day -= shift;
                (l, a)
            })
            .collect();
    }

    /// Everything counted on the UTC day starting at `day_start`, per
    /// (model, api key id, project, tier, batch).
    pub fn served_on(&self, day_start: i64) -> Vec<(ServedGroup, Counts)> {
        let state = self.lock();
        let mut out: BTreeMap<ServedGroup, Counts> = BTreeMap::new();
        for (g, c) in state
            .usage
            .iter()
            .filter(|(g, _)| g.hour.div_euclid(86_400) * 86_400 == day_start)
        {
            let key = (
                state.name(g.model).to_owned(),
                state.name(g.key).to_owned(),
                state.name(g.project).to_owned(),
                state.name(g.tier).to_owned(),
                g.batch,
            );
            out.entry(key).or_default().add(c);
        }
        out.into_iter().collect()
    }

    /// A create the mock served: counted at `at` for the caller's key.
    pub(super) fn record(
        &self,
        headers: &HeaderMap,
        model: &str,
        tier: &str,
        usage: Option<Usage>,
    ) {
        let Some(secret) = bearer(headers) else {
            return;
        };
        let project = headers.get("openai-project").and_then(|v| v.to_str().ok());
        let mut state = self.lock();
        let key = state.key_for(secret, project);
        let usage = usage.unwrap_or(Usage {
            input: 0,
            cached: 0,
            output: 0,
            reasoning: 0,
        });
        let counts = Counts {
            requests: 1,
            input: usage.input as i64,
            cached: usage.cached as i64,
            output: usage.output as i64,
        };
        let project = project.map_or(key.project.clone(), str::to_owned);
        state.add(&Served {
            at: Utc::now(),
            model,
            api_key_id: &key.id,
            project_id: &project,
            service_tier: tier,
            batch: false,
            counts,
            reasoning: usage.reasoning as i64,
        });
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .or_else(|| {
            headers
                .get("api-key")
                .and_then(|v| v.to_str().ok())
                .filter(|k| !k.trim().is_empty())
        })
}

/// The query as (name, value) pairs; `group_by[]=` and `group_by=a,b` both
/// accepted next to repeated `group_by=`.
fn query(uri: &Uri) -> Vec<(String, String)> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.trim_end_matches("[]").to_owned(), v.into_owned()))
        .collect()
}

fn values(query: &[(String, String)], name: &str) -> Vec<String> {
    query
        .iter()
        .filter(|(k, _)| k == name)
        .flat_map(|(_, v)| v.split(',').map(str::to_owned).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .collect()
}

fn one(query: &[(String, String)], name: &str) -> Option<String> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

impl MockUpstream {
    fn admin_error(&self, status: StatusCode, message: &str, param: Option<&str>) -> Response {
        self.error(
            status,
            ErrorBody {
                message: message.to_owned(),
                kind: "invalid_request_error".into(),
                param: param.map(str::to_owned),
                code: (status == StatusCode::UNAUTHORIZED).then(|| "invalid_api_key".to_owned()),
            },
            None,
        )
    }

    /// Counts the request; an answer when it is not an admin's.
    fn org_intake(&self, headers: &HeaderMap) -> Result<(), Response> {
        self.inner
            .count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match bearer(headers) {
            Some(key) if key.starts_with("sk-admin") => Ok(()),
            Some(_) => Err(self.admin_error(
                StatusCode::FORBIDDEN,
                "This endpoint requires an admin API key.",
                None,
            )),
            None => Err(self.admin_error(StatusCode::UNAUTHORIZED, "Missing admin API key.", None)),
        }
    }

    fn json_page(&self, value: &impl Serialize) -> Response {
        let mut out = Vec::with_capacity(4096);
        push_json(&mut out, value);
        self.json_response(StatusCode::OK, out, std::time::Instant::now())
    }
}

/// Bucket bounds and paging shared by the Usage and Costs APIs.
struct Window {
    width: i64,
    first: i64,
    end: i64,
    limit: i64,
}

fn window(
    m: &MockUpstream,
    q: &[(String, String)],
    width: i64,
    default_limit: i64,
    max_limit: i64,
) -> Result<Window, Response> {
    let start = one(q, "start_time")
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| {
            m.admin_error(
                StatusCode::BAD_REQUEST,
                "Missing required parameter: 'start_time'.",
                Some("start_time"),
            )
        })?;
    let end = match one(q, "end_time") {
        Some(v) => v.parse::<i64>().map_err(|_| {
            m.admin_error(
                StatusCode::BAD_REQUEST,
                "Invalid 'end_time'.",
                Some("end_time"),
            )
        })?,
        None => Utc::now().timestamp(),
    };
    let limit = match one(q, "limit") {
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=max_limit).contains(l))
            .ok_or_else(|| {
                m.admin_error(
                    StatusCode::BAD_REQUEST,
                    &format!("'limit' must be 1-{max_limit}."),
                    Some("limit"),
                )
            })?,
        None => default_limit,
    };
    let first = match one(q, "page") {
        Some(page) => page
            .strip_prefix("page_")
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(|| {
                m.admin_error(StatusCode::BAD_REQUEST, "Invalid 'page'.", Some("page"))
            })?,
        None => start.div_euclid(width) * width,
    };
    Ok(Window {
        width,
        first,
        end,
        limit,
    })
}

impl Window {
    /// The buckets of this page, and the next page's cursor.
    fn buckets(&self) -> (Vec<i64>, Option<String>) {
        let mut starts = Vec::new();
        let mut b = self.first;
        while b < self.end && (starts.len() as i64) < self.limit {
            starts.push(b);
            b += self.width;
        }
        let next = (b < self.end).then(|| format!("page_{b}"));
        (starts, next)
    }
}

fn page(buckets: Vec<Value>, next: Option<String>) -> Value {
    json!({"object": "page", "data": buckets, "has_more": next.is_some(), "next_page": next})
}

/// `GET /organization/usage/completions`.
pub(super) async fn usage_completions(
    State(m): State<MockUpstream>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = m.org_intake(&headers) {
        return r;
    }
    let q = query(&uri);
    let (width, default_limit, max_limit) = match one(&q, "bucket_width").as_deref() {
        None | Some("1d") => (86_400, 7, 31),
        Some("1h") => (3_600, 24, 168),
        Some("1m") => (60, 60, 1_440),
        Some(_) => {
            return m.admin_error(
                StatusCode::BAD_REQUEST,
                "Invalid 'bucket_width'.",
                Some("bucket_width"),
            )
        }
    };
    let w = match window(&m, &q, width, default_limit, max_limit) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let group_by = values(&q, "group_by");
    let known = [
        "project_id",
        "user_id",
        "api_key_id",
        "model",
        "batch",
        "service_tier",
    ];
    if let Some(bad) = group_by.iter().find(|g| !known.contains(&g.as_str())) {
        return m.admin_error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid group_by field '{bad}'."),
            Some("group_by"),
        );
    }
    let by = |f: &str| group_by.iter().any(|g| g == f);
    let models = values(&q, "models");
    let keys = values(&q, "api_key_ids");
    let projects = values(&q, "project_ids");
    let batch = one(&q, "batch").map(|b| b == "true");
    let (starts, next) = w.buckets();
    let state = m.inner.org.lock();
    let visible_until = Utc::now().timestamp() - state.lag_secs;
    let mut buckets = Vec::with_capacity(starts.len());
    for start in starts {
        let end = start + w.width;
        let lo = Group {
            hour: start.div_euclid(3_600) * 3_600,
            model: Name(0),
            key: Name(0),
            project: Name(0),
            tier: Name(0),
            batch: false,
        };
        let mut groups: BTreeMap<UsageGroup<'_>, Counts> = BTreeMap::new();
        for (g, c) in state.usage.range(lo..).take_while(|(g, _)| g.hour < end) {
            if g.hour >= visible_until
                || !models.is_empty() && !models.iter().any(|x| x == state.name(g.model))
                || !keys.is_empty() && !keys.iter().any(|x| x == state.name(g.key))
                || !projects.is_empty() && !projects.iter().any(|x| x == state.name(g.project))
                || batch.is_some_and(|b| b != g.batch)
            {
                continue;
            }
            let key = (
                by("model").then(|| state.name(g.model)),
                by("api_key_id").then(|| state.name(g.key)),
                by("project_id").then(|| state.name(g.project)),
                by("service_tier").then(|| state.name(g.tier)),
                by("batch").then_some(g.batch),
            );
            groups.entry(key).or_default().add(c);
        }
        let results: Vec<Value> = groups
            .into_iter()
            .filter(|(_, c)| *c != Counts::default())
            .map(|((model, key, project, tier, batch), c)| {
                json!({"object": "organization.usage.completions.result",
                       "input_tokens": c.input, "input_cached_tokens": c.cached,
                       "input_cache_write_tokens": 0, "input_uncached_tokens": c.input - c.cached,
                       "output_tokens": c.output, "input_text_tokens": c.input - c.cached,
                       "output_text_tokens": c.output, "input_cached_text_tokens": c.cached,
                       "input_audio_tokens": 0, "input_cached_audio_tokens": 0, "output_audio_tokens": 0,
                       "input_image_tokens": 0, "input_cached_image_tokens": 0, "output_image_tokens": 0,
                       "num_model_requests": c.requests,
                       "project_id": project, "user_id": null, "api_key_id": key, "model": model,
                       "batch": batch, "service_tier": tier})
            })
            .collect();
        buckets.push(
            json!({"object": "bucket", "start_time": start, "end_time": end, "results": results}),
        );
    }
    drop(state);
    m.json_page(&page(buckets, next))
}

/// `CostsResult` with its amount written as the exact decimal.
#[derive(Serialize)]
struct CostResult<'a> {
    object: &'static str,
    amount: Amount,
    line_item: Option<String>,
    project_id: Option<&'a str>,
    api_key_id: Option<&'a str>,
    quantity: Option<i64>,
    quantity_unit: Option<&'static str>,
}

#[derive(Serialize)]
struct Amount {
    value: Box<RawValue>,
    currency: &'static str,
}

/// `GET /organization/costs` (daily buckets only, as the real one).
pub(super) async fn costs(State(m): State<MockUpstream>, uri: Uri, headers: HeaderMap) -> Response {
    if let Err(r) = m.org_intake(&headers) {
        return r;
    }
    let q = query(&uri);
    if one(&q, "bucket_width").is_some_and(|w| w != "1d") {
        return m.admin_error(
            StatusCode::BAD_REQUEST,
            "Only bucket_width=1d is supported.",
            Some("bucket_width"),
        );
    }
    let w = match window(&m, &q, 86_400, 7, 180) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let group_by = values(&q, "group_by");
    if let Some(bad) = group_by
        .iter()
        .find(|g| !["project_id", "line_item", "api_key_id"].contains(&g.as_str()))
    {
        return m.admin_error(
            StatusCode::BAD_REQUEST,
            &format!("Invalid group_by field '{bad}'."),
            Some("group_by"),
        );
    }
    let by = |f: &str| group_by.iter().any(|g| g == f);
    let projects = values(&q, "project_ids");
    let keys = values(&q, "api_key_ids");
    let (starts, next) = w.buckets();
    let state = m.inner.org.lock();
    let mut buckets = Vec::with_capacity(starts.len());
    for start in starts {
        let mut groups: BTreeMap<CostGroup<'_>, Decimal> = BTreeMap::new();
        for (line, amount) in state.costs.iter().filter(|(l, _)| l.day == start) {
            if !projects.is_empty() && !projects.iter().any(|x| x == state.name(line.project))
                || !keys.is_empty() && !keys.iter().any(|x| x == state.name(line.key))
            {
                continue;
            }
            let item = by("line_item").then(|| {
                format!(
                    "{}, {}",
                    state.name(line.model),
                    KINDS[usize::from(line.kind)]
                )
            });
            let key = (
                item,
                by("project_id").then(|| state.name(line.project)),
                by("api_key_id").then(|| state.name(line.key)),
            );
            *groups.entry(key).or_default() += *amount;
        }
        let results: Vec<CostResult<'_>> = groups
            .into_iter()
            .filter_map(|((item, project, key), amount)| {
                let value = RawValue::from_string(amount.normalize().to_string()).ok()?;
                Some(CostResult {
                    object: "organization.costs.result",
                    amount: Amount {
                        value,
                        currency: "usd",
                    },
                    line_item: item,
                    project_id: project,
                    api_key_id: key,
                    quantity: None,
                    quantity_unit: None,
                })
            })
            .collect();
        buckets.push(
            json!({"object": "bucket", "start_time": start, "end_time": start + 86_400,
                            "results": results}),
        );
    }
    drop(state);
    m.json_page(&page(buckets, next))
}

/// A list page by `after` (an object id) and `limit` (1-100, default 20).
fn list_page(m: &MockUpstream, uri: &Uri, items: Vec<Value>) -> Response {
    let q = query(uri);
    let limit = one(&q, "limit")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|l| (1..=100).contains(l))
        .unwrap_or(20);
    let skip = one(&q, "after")
        .and_then(|after| items.iter().position(|i| i["id"] == after.as_str()))
        .map_or(0, |p| p + 1);
    let rest: Vec<Value> = items.into_iter().skip(skip).collect();
    let has_more = rest.len() > limit;
    let data: Vec<Value> = rest.into_iter().take(limit).collect();
    let first = data.first().map(|v| v["id"].clone()).unwrap_or(Value::Null);
    let last = data.last().map(|v| v["id"].clone()).unwrap_or(Value::Null);
    m.json_page(&json!({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more}))
}

/// `GET /organization/projects`.
pub(super) async fn projects(
    State(m): State<MockUpstream>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = m.org_intake(&headers) {
        return r;
    }
    let state = m.inner.org.lock();
    let mut ids: Vec<&str> = state.keys.iter().map(|k| k.project.as_str()).collect();
    ids.push(DEFAULT_PROJECT);
    ids.sort_unstable();
    ids.dedup();
    let items = ids
        .into_iter()
        .map(|id| {
            json!({"id": id, "object": "organization.project", "name": id,
                         "created_at": 1_711_471_533, "archived_at": null, "status": "active"})
        })
        .collect();
    drop(state);
    list_page(&m, &uri, items)
}

/// `GET /organization/projects/{project_id}/api_keys`.
pub(super) async fn project_keys(
    State(m): State<MockUpstream>,
    Path(project): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = m.org_intake(&headers) {
        return r;
    }
    let state = m.inner.org.lock();
    let items = state
        .keys
        .iter()
        .filter(|k| k.project == project)
        .map(|k| json!({"object": "organization.project.api_key", "redacted_value": redacted(&k.secret),
                        "name": format!("key {}", &k.id[4..10]), "created_at": k.created_at,
                        "last_used_at": null, "id": k.id, "owner_project_access": "active",
                        "owner": {"type": "service_account",
                                  "service_account": {"id": format!("svc_{}", &k.id[4..]), "name": "tollgate",
                                                      "created_at": k.created_at, "role": "member"}}}))
        .collect();
    drop(state);
    list_page(&m, &uri, items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_redacted_like_the_provider_does() {
        assert_eq!(redacted("sk-upstream-secret"), "sk-ups...cret");
        assert!(crate::reconcile::names::redacted_matches(
            &redacted("sk-upstream-secret"),
            "sk-upstream-secret"
        ));
        assert_eq!(api_key_id("x"), api_key_id("x"));
        assert_ne!(api_key_id("x"), api_key_id("y"));
    }
}
