//! The comparison: per UTC day and line (model, and optionally upstream
//! key, project, service tier), the ledger's requests, tokens and cost
//! beside the provider's, their difference (ledger − provider) and a status.
//!
//! Both sides come from tables that stay small whatever the ledger holds:
//! the ledger's from the `ledger_upstream_daily` rollup, the provider's
//! from `provider_usage` (daily buckets) and `provider_costs`. A day is
//! final only when every source was fetched `settle_hours` after its end
//! (and its hourly buckets add up to its daily one); until then its lines
//! are `pending`, and a day never fetched shows `provider: null` ("no data
//! yet" is never zero). Statuses of final days:
//! - `match`: requests and the three token counts equal, cost within the
//!   tolerance (the larger of `cost_tolerance` and `cost_tolerance_ratio` ×
//!   the provider's cost);
//! - `drift`: any of those differs;
//! - `provider_only`: the provider saw usage in scope that no ledger row
//!   accounts for;
//! - `gateway_only`: ledger rows the provider reports nothing for.
//!
//! The Costs API is grouped by line item and project, not key or tier: a
//! line grouped by `upstream_key` or `service_tier` shows no provider cost
//! and is judged on requests and tokens.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;

use super::keys::Mapping;
use super::names::line_item_model;
use super::store;

/// A dimension a line may be split by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Model,
    UpstreamKey,
    ProjectId,
    ServiceTier,
}

impl GroupBy {
    pub const NAMES: [&'static str; 4] = ["model", "upstream_key", "project_id", "service_tier"];

    fn parse(name: &str) -> Option<Self> {
        match name {
            "model" => Some(Self::Model),
            "upstream_key" => Some(Self::UpstreamKey),
            "project_id" => Some(Self::ProjectId),
            "service_tier" => Some(Self::ServiceTier),
            _ => None,
        }
    }

    /// Names to a grouping; an unknown name is the error.
    pub fn parse_all<S: AsRef<str>>(names: &[S]) -> Result<Grouping, String> {
        let mut grouping = Grouping::default();
        for name in names {
            let name = name.as_ref().trim();
            match Self::parse(name) {
                Some(Self::Model) => grouping.model = true,
                Some(Self::UpstreamKey) => grouping.upstream_key = true,
                Some(Self::ProjectId) => grouping.project_id = true,
                Some(Self::ServiceTier) => grouping.service_tier = true,
                None => return Err(format!("`{name}` is not one of {}", Self::NAMES.join(", "))),
            }
        }
        Ok(grouping)
    }
}

/// Which dimensions split the lines (the day always does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grouping {
    pub model: bool,
    pub upstream_key: bool,
    pub project_id: bool,
    pub service_tier: bool,
}

impl Grouping {
    pub fn names(&self) -> Vec<&'static str> {
        let flags = [
            self.model,
            self.upstream_key,
            self.project_id,
            self.service_tier,
        ];
        GroupBy::NAMES
            .iter()
            .zip(flags)
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect()
    }

    /// The Costs API is grouped by line item (model) and project only.
    pub fn cost_comparable(&self) -> bool {
        !self.upstream_key && !self.service_tier
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Match,
    Drift,
    Pending,
    ProviderOnly,
    GatewayOnly,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Match => "match",
            Status::Drift => "drift",
            Status::Pending => "pending",
            Status::ProviderOnly => "provider_only",
            Status::GatewayOnly => "gateway_only",
        }
    }

    /// Whether the line disagrees (what alerts and metrics count).
    pub fn disagrees(self) -> bool {
        matches!(
            self,
            Status::Drift | Status::ProviderOnly | Status::GatewayOnly
        )
    }
}

/// Requests, tokens and cost of one side (or their difference).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    pub requests: i64,
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    /// Decimal string; null where this side has no cost at the line's grain.
    #[serde(serialize_with = "decimal_string")]
    pub cost: Option<Decimal>,
    /// Ledger only: rows without a cost (not in `cost`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpriced_requests: Option<i64>,
}

fn decimal_string<S: serde::Serializer>(v: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => s.serialize_str(&d.normalize().to_string()),
        None => s.serialize_none(),
    }
}

impl Figures {
    fn add_counts(&mut self, requests: i64, input: i64, cached: i64, output: i64) {
        self.requests += requests;
        self.input_tokens += input;
        self.cached_tokens += cached;
        self.output_tokens += output;
    }

    fn add_cost(&mut self, cost: Decimal) {
        self.cost = Some(self.cost.unwrap_or_default() + cost);
    }

    fn is_empty(&self) -> bool {
        self.requests == 0
            && self.input_tokens == 0
            && self.cached_tokens == 0
            && self.output_tokens == 0
            && self.cost.is_none_or(|c| c.is_zero())
    }

    /// `self − other`.
    fn minus(&self, other: &Figures) -> Figures {
        Figures {
            requests: self.requests - other.requests,
            input_tokens: self.input_tokens - other.input_tokens,
            cached_tokens: self.cached_tokens - other.cached_tokens,
            output_tokens: self.output_tokens - other.output_tokens,
            cost: self.cost.zip(other.cost).map(|(a, b)| a - b),
            unpriced_requests: None,
        }
    }
}

/// What the comparison holds to.
#[derive(Debug, Clone)]
pub struct Tolerance {
    pub cost: Decimal,
    pub cost_ratio: Decimal,
}

impl Tolerance {
    fn cost_matches(&self, ledger: Decimal, provider: Decimal) -> bool {
        let allowed = self.cost.max(self.cost_ratio * provider.abs());
        (ledger - provider).abs() <= allowed
    }
}

/// The status of a line of a final day.
pub fn judge(ledger: Option<&Figures>, provider: &Figures, tolerance: &Tolerance) -> Status {
    let Some(ledger) = ledger.filter(|l| !l.is_empty()) else {
        return Status::ProviderOnly;
    };
    if provider.is_empty() {
        return Status::GatewayOnly;
    }
    let counts_equal = ledger.requests == provider.requests
        && ledger.input_tokens == provider.input_tokens
        && ledger.cached_tokens == provider.cached_tokens
        && ledger.output_tokens == provider.output_tokens;
    let cost_ok = match (ledger.cost, provider.cost) {
        (Some(l), Some(p)) => tolerance.cost_matches(l, p),
        _ => true,
    };
    if counts_equal && cost_ok {
        Status::Match
    } else {
        Status::Drift
    }
}

/// A line's identity: the day and the grouped dimensions (others `None`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LineKey {
    pub day: NaiveDate,
    pub model: Option<String>,
    /// The upstream's name, or the provider's `api_key_id` for a key that
    /// is not one of Tollgate's.
    pub upstream_key: Option<String>,
    pub project_id: Option<String>,
    pub service_tier: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Line {
    #[serde(serialize_with = "day_string")]
    pub day: NaiveDate,
    #[serde(skip_serializing_if = "Skip::skip")]
    pub model: Grouped,
    #[serde(skip_serializing_if = "Skip::skip")]
    pub upstream_key: Grouped,
    /// The provider's id of that key, when known.
    #[serde(skip_serializing_if = "Skip::skip")]
    pub api_key_id: Grouped,
    #[serde(skip_serializing_if = "Skip::skip")]
    pub project_id: Grouped,
    #[serde(skip_serializing_if = "Skip::skip")]
    pub service_tier: Grouped,
    pub status: Status,
    pub ledger: Figures,
    /// Null until the day was fetched.
    pub provider: Option<Figures>,
    /// ledger − provider; null while `provider` is.
    pub difference: Option<Figures>,
}

impl Line {
    /// The line's value of a dimension (`model`, `upstream_key`,
    /// `project_id`, `service_tier`).
    pub fn dimension(&self, name: &str) -> &Grouped {
        match name {
            "model" => &self.model,
            "upstream_key" => &self.upstream_key,
            "project_id" => &self.project_id,
            _ => &self.service_tier,
        }
    }
}

fn day_string<S: serde::Serializer>(d: &NaiveDate, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.format("%Y-%m-%d").to_string())
}

/// A dimension's value on a line: absent when not grouped by it, else the
/// value or null.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grouped {
    Absent,
    Value(Option<String>),
}

pub trait Skip {
    fn skip(&self) -> bool;
}

impl Skip for Grouped {
    fn skip(&self) -> bool {
        matches!(self, Grouped::Absent)
    }
}

impl Serialize for Grouped {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Grouped::Value(Some(v)) => s.serialize_str(v),
            _ => s.serialize_none(),
        }
    }
}

impl Grouped {
    pub fn text(&self) -> &str {
        match self {
            Grouped::Value(Some(v)) => v,
            Grouped::Value(None) => "(none)",
            Grouped::Absent => "",
        }
    }
}

/// The whole comparison for a range.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub object: &'static str,
    pub data: Vec<Line>,
    /// Unix seconds of the last fetch from the provider; null if none.
    pub fetched_at: Option<i64>,
    pub group_by: Vec<&'static str>,
    pub settle_hours: u64,
    pub tolerance: ToleranceView,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToleranceView {
    pub tokens: i64,
    pub cost: String,
    pub cost_ratio: String,
}

/// What a report is asked for.
#[derive(Debug, Clone)]
pub struct Query {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub grouping: Grouping,
}

/// How the comparison judges.
#[derive(Debug, Clone)]
pub struct Settings {
    pub settle_hours: u64,
    pub require_hourly_agreement: bool,
    pub tolerance: Tolerance,
}

type Sides = (Option<Figures>, Option<Figures>);

/// Builds the report from the stored tables, judged at `now`.
pub async fn build(
    pool: &PgPool,
    mapping: &Mapping,
    settings: &Settings,
    query: &Query,
    now: DateTime<Utc>,
) -> Result<Report, sqlx::Error> {
    let (from, to) = (query.from, query.to);
    let g = query.grouping;
    let ledger = store::ledger_daily(pool, from, to, &mapping.upstreams).await?;
    let usage = store::daily_usage(pool, from, to).await?;
    let costs = store::daily_costs(pool, from, to).await?;
    let fetched = store::fetched_days(pool, from, to).await?;
    let unsettled: HashSet<NaiveDate> = if settings.require_hourly_agreement {
        store::hourly_disagreements(pool, from, to)
            .await?
            .into_iter()
            .collect()
    } else {
        HashSet::new()
    };
    let last = store::last_fetch(pool).await?;

    // Projects that hold one of Tollgate's keys are Tollgate's too.
    let mut projects = mapping.projects.clone();
    for u in &usage {
        if let (Some(key), Some(project)) = (&u.api_key_id, &u.project_id) {
            if mapping.upstream_of_key.contains_key(key) {
                projects.insert(project.clone());
            }
        }
    }
    let in_scope = |key: Option<&str>, project: Option<&str>| {
        key.is_some_and(|k| mapping.upstream_of_key.contains_key(k))
            || project.is_some_and(|p| projects.contains(p))
    };

    let key_of = |day, model: Option<String>, upstream: Option<String>, project, tier| LineKey {
        day,
        model: if g.model { model } else { None },
        upstream_key: if g.upstream_key { upstream } else { None },
        project_id: if g.project_id { project } else { None },
        service_tier: if g.service_tier { tier } else { None },
    };
    let mut lines: BTreeMap<LineKey, Sides> = BTreeMap::new();
    for row in &ledger {
        let project = mapping.project_of_upstream.get(&row.upstream).cloned();
        let key = key_of(
            row.day,
            row.model.clone(),
            Some(row.upstream.clone()),
            project,
            row.service_tier.clone(),
        );
        let side = lines
            .entry(key)
            .or_default()
            .0
            .get_or_insert_with(|| Figures {
                cost: Some(Decimal::ZERO),
                unpriced_requests: Some(0),
                ..Figures::default()
            });
        side.add_counts(
            row.requests,
            row.input_tokens,
            row.cached_tokens,
            row.output_tokens,
        );
        side.add_cost(row.cost);
        side.unpriced_requests = Some(side.unpriced_requests.unwrap_or(0) + row.unpriced_requests);
    }
    for u in usage
        .iter()
        .filter(|u| in_scope(u.api_key_id.as_deref(), u.project_id.as_deref()))
    {
        let upstream = u.api_key_id.as_ref().map(|k| {
            mapping
                .upstream_of_key
                .get(k)
                .cloned()
                .unwrap_or_else(|| k.clone())
        });
        let model = u.model.as_deref().map(|m| mapping.models.tollgate_model(m));
        let key = key_of(
            u.day,
            model,
            upstream,
            u.project_id.clone(),
            u.service_tier.clone(),
        );
        let side = lines
            .entry(key)
            .or_default()
            .1
            .get_or_insert_with(Figures::default);
        side.add_counts(u.requests, u.input_tokens, u.cached_tokens, u.output_tokens);
    }
    if g.cost_comparable() {
        for c in costs
            .iter()
            .filter(|c| c.project_id.as_ref().is_some_and(|p| projects.contains(p)))
        {
            let model = c
                .line_item
                .as_deref()
                .map(|item| mapping.models.tollgate_model(line_item_model(item)));
            let key = key_of(c.day, model, None, c.project_id.clone(), None);
            let side = lines
                .entry(key)
                .or_default()
                .1
                .get_or_insert_with(Figures::default);
            side.add_cost(c.amount);
        }
    }

    let reverse_keys: HashMap<&str, &str> = mapping
        .upstream_of_key
        .iter()
        .map(|(k, u)| (u.as_str(), k.as_str()))
        .collect();
    let mut data = Vec::with_capacity(lines.len());
    for (key, (ledger, provider)) in lines {
        let day_end = key
            .day
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc() + Duration::days(1));
        let settled_at = day_end.map(|e| e + Duration::hours(settings.settle_hours as i64));
        let fetched_at = fetched.get(&key.day).copied();
        let fin = match (fetched_at, settled_at) {
            (Some(f), Some(s)) => f >= s && now >= s && !unsettled.contains(&key.day),
            _ => false,
        };
        let provider = fetched_at.map(|_| {
            let mut p = provider.unwrap_or_default();
            if g.cost_comparable() && p.cost.is_none() {
                p.cost = Some(Decimal::ZERO);
            }
            if !g.cost_comparable() {
                p.cost = None;
            }
            p
        });
        let mut ledger_side = ledger.clone().unwrap_or(Figures {
            cost: Some(Decimal::ZERO),
            unpriced_requests: Some(0),
            ..Figures::default()
        });
        if ledger_side.cost.is_none() {
            ledger_side.cost = Some(Decimal::ZERO);
        }
        if provider.as_ref().is_some_and(Figures::is_empty) && ledger_side.is_empty() {
            continue;
        }
        let status = match (&provider, fin) {
            (Some(p), true) => judge(ledger.as_ref(), p, &settings.tolerance),
            _ => Status::Pending,
        };
        let difference = provider.as_ref().map(|p| ledger_side.minus(p));
        let grouped = |on: bool, v: &Option<String>| {
            if on {
                Grouped::Value(v.clone())
            } else {
                Grouped::Absent
            }
        };
        let api_key_id = key.upstream_key.as_ref().map(|u| {
            reverse_keys
                .get(u.as_str())
                .map_or_else(|| u.clone(), |k| (*k).to_owned())
        });
        let api_key_id = match &api_key_id {
            Some(id) if mapping.upstreams.contains(id) => None,
            other => other.clone(),
        };
        data.push(Line {
            day: key.day,
            model: grouped(g.model, &key.model),
            upstream_key: grouped(g.upstream_key, &key.upstream_key),
            api_key_id: grouped(g.upstream_key, &api_key_id),
            project_id: grouped(g.project_id, &key.project_id),
            service_tier: grouped(g.service_tier, &key.service_tier),
            status,
            ledger: ledger_side,
            provider,
            difference,
        });
    }
    Ok(Report {
        object: "list",
        data,
        fetched_at: last.map(|t| t.timestamp()),
        group_by: g.names(),
        settle_hours: settings.settle_hours,
        tolerance: ToleranceView {
            tokens: 0,
            cost: settings.tolerance.cost.normalize().to_string(),
            cost_ratio: settings.tolerance.cost_ratio.normalize().to_string(),
        },
    })
}

/// The report as a fixed-width table (the CLI's `reconcile show`).
pub fn table(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let dims = &report.group_by;
    let mut header = format!("{:<10}", "day");
    for d in dims {
        let _ = write!(header, "  {d:<16}");
    }
    let _ = write!(
        header,
        "  {:<13}  {:>9} {:>9}  {:>12} {:>12}  {:>11} {:>11}  {:>11} {:>11}  {:>16} {:>16}  {:>14}",
        "status",
        "req",
        "prov req",
        "input",
        "prov input",
        "cached",
        "prov cached",
        "output",
        "prov output",
        "cost",
        "prov cost",
        "cost diff"
    );
    out.push_str(header.trim_end());
    out.push('\n');
    for line in &report.data {
        let mut row = line.day.format("%Y-%m-%d").to_string();
        for d in dims {
            let _ = write!(row, "  {:<16}", line.dimension(d).text());
        }
        let p = line.provider.as_ref();
        let num = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let money =
            |v: Option<Decimal>| v.map_or_else(|| "-".to_owned(), |v| v.normalize().to_string());
        let _ = write!(
            row,
            "  {:<13}  {:>9} {:>9}  {:>12} {:>12}  {:>11} {:>11}  {:>11} {:>11}  {:>16} {:>16}  {:>14}",
            line.status.as_str(),
            line.ledger.requests,
            num(p.map(|p| p.requests)),
            line.ledger.input_tokens,
            num(p.map(|p| p.input_tokens)),
            line.ledger.cached_tokens,
            num(p.map(|p| p.cached_tokens)),
            line.ledger.output_tokens,
            num(p.map(|p| p.output_tokens)),
            money(line.ledger.cost),
            money(p.and_then(|p| p.cost)),
            money(line.difference.as_ref().and_then(|d| d.cost)),
        );
        out.push_str(row.trim_end());
        out.push('\n');
    }
    let fetched = report
        .fetched_at
        .and_then(|t| DateTime::from_timestamp(t, 0))
        .map_or_else(|| "never".to_owned(), |t| t.to_rfc3339());
    let _ = writeln!(
        out,
        "{} lines; provider last fetched: {fetched}; a day is pending until fetched {} h after its end; cost tolerance {} or {} of the provider's cost",
        report.data.len(),
        report.settle_hours,
        report.tolerance.cost,
        report.tolerance.cost_ratio
    );
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn figures(requests: i64, tokens: i64, cost: &str) -> Figures {
        Figures {
            requests,
            input_tokens: tokens,
            cached_tokens: tokens / 10,
            output_tokens: tokens / 2,
            cost: Some(d(cost)),
            unpriced_requests: None,
        }
    }

    fn tolerance() -> Tolerance {
        Tolerance {
            cost: d("0.01"),
            cost_ratio: d("0.001"),
        }
    }

    #[test]
    fn equal_counts_and_close_costs_match() {
        let p = figures(1204, 1830211, "24.55");
        let l = figures(1204, 1830211, "24.5512340000");
        assert_eq!(judge(Some(&l), &p, &tolerance()), Status::Match);
    }

    #[test]
    fn one_token_is_drift_and_so_is_a_cost_beyond_both_tolerances() {
        let p = figures(10, 1000, "1");
        let mut l = p.clone();
        l.output_tokens += 1;
        assert_eq!(judge(Some(&l), &p, &tolerance()), Status::Drift);
        // 0.01 absolute allowed below 10 USD ...
        let l = figures(10, 1000, "1.0100");
        assert_eq!(judge(Some(&l), &p, &tolerance()), Status::Match);
        let l = figures(10, 1000, "1.0101");
        assert_eq!(judge(Some(&l), &p, &tolerance()), Status::Drift);
        // ... and 0.1 % above it.
        let p = figures(10, 1000, "1000");
        let l = figures(10, 1000, "1000.99");
        assert_eq!(judge(Some(&l), &p, &tolerance()), Status::Match);
        let l = figures(10, 1000, "1001.01");
        assert_eq!(judge(Some(&l), &p, &tolerance()), Status::Drift);
    }

    #[test]
    fn one_sided_lines_say_which_side() {
        let p = figures(3, 30, "0.3");
        assert_eq!(judge(None, &p, &tolerance()), Status::ProviderOnly);
        let empty = Figures {
            cost: Some(Decimal::ZERO),
            ..Figures::default()
        };
        assert_eq!(judge(Some(&empty), &p, &tolerance()), Status::ProviderOnly);
        assert_eq!(judge(Some(&p), &empty, &tolerance()), Status::GatewayOnly);
    }

    #[test]
    fn a_cost_missing_on_one_side_is_not_compared() {
        let mut p = figures(3, 30, "0.3");
        p.cost = None;
        let l = figures(3, 30, "99");
        assert_eq!(judge(Some(&l), &p, &tolerance()), Status::Match);
    }

    #[test]
    fn group_by_names_are_checked() {
        let g = GroupBy::parse_all(&["model", "service_tier"]).unwrap();
        assert_eq!(g.names(), ["model", "service_tier"]);
        assert!(!g.cost_comparable());
        assert!(GroupBy::parse_all(&["tenant"]).is_err());
    }
}
