//! Usage reports and CSV exports against the real database: reports equal
//! the sum of the ledger rows exactly for every bucket width and grouping
//! (also after rows are priced later or removed), tenants see only their
//! own rows and keys, bad parameters are named, and the CSV export reads
//! back field for field through Python's csv module.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/reports.rs"]
mod report_helpers;

use std::collections::BTreeSet;

use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::PgPool;

use common::TestGateway;
use report_helpers::{
    collect_pages, csv_text, python_csv, random_rows, stored_rows, tenant, Report, Tenant,
};
use tollgate::ledger::LedgerRow;

/// 2025-11-28T00:00:00Z.
const T0: i64 = 1_764_288_000;
const H: i64 = 3_600;
const D: i64 = 86_400;

const ADMIN_FIELDS: [&str; 6] = [
    "tenant",
    "api_key_id",
    "model",
    "service_tier",
    "status",
    "end_user",
];

/// One range per width, unaligned so that every source is used: ledger
/// edges, hourly rollups, daily rollups. `limit` forces paging.
const RANGES: [(&str, i64, i64, usize); 4] = [
    // 1d: ledger, hours, three days, ledger: 5 buckets over 2 pages.
    ("1d", T0 - H - 37 * 60 - 13, T0 + 3 * D + 1_807, 3),
    // 1d aligned: rollups only.
    ("1d", T0, T0 + 3 * D, 7),
    // 1h: 27 buckets over 2 pages (default limit 24).
    ("1h", T0 + D - 1_500 + 3, T0 + 2 * D + 2_000, 24),
    // 1m: 180 buckets over 2 pages.
    ("1m", T0 + 5_011, T0 + 5_000 + 3 * H, 100),
];

fn width_seconds(width: &str) -> i64 {
    match width {
        "1m" => 60,
        "1h" => H,
        _ => D,
    }
}

async fn get(gw: &TestGateway, bearer: &str, path: &str) -> (u16, Value) {
    let response = gw
        .http
        .get(gw.url(path))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Every page of a report, following `next_page`.
async fn pages(gw: &TestGateway, bearer: &str, path: &str, query: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{path}?{query}");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&page={cursor}"));
        }
        let (status, page) = get(gw, bearer, &url).await;
        assert_eq!(status, 200, "{url}: {page}");
        cursor = page["next_page"].as_str().map(str::to_owned);
        assert_eq!(page["has_more"], cursor.is_some());
        pages.push(page);
        if cursor.is_none() {
            return pages;
        }
        assert!(pages.len() < 50, "paging does not end");
    }
}

/// Checks one report against the rows: same buckets (empty ones included),
/// same groups, equal sums to the last decimal digit.
async fn check(
    gw: &TestGateway,
    bearer: &str,
    path: &str,
    report: &Report,
    rows: &[LedgerRow],
    (width, start, end, limit): (&str, i64, i64, usize),
) {
    let query = format!(
        "start_time={start}&end_time={end}&bucket_width={width}&limit={limit}&{}",
        report.params()
    );
    let pages = pages(gw, bearer, path, &query).await;
    let (got, got_buckets) = collect_pages(&pages, &report.group_by);
    let (want, want_buckets) = report.expect(rows, start, end, width_seconds(width));
    assert_eq!(got_buckets, want_buckets, "{path}?{query}");
    let only_got: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let only_want: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    assert!(
        only_got.is_empty() && only_want.is_empty(),
        "{path}?{query}: unexpected {only_got:?}, missing {only_want:?}"
    );
    for (key, sums) in &want {
        assert_eq!(&got[key], sums, "{path}?{query} at {key:?}");
    }
    // Fields not grouped by are null; `tenant` only exists for admins.
    let admin = path.starts_with("/admin");
    for result in pages
        .iter()
        .flat_map(|p| p["data"].as_array().unwrap())
        .flat_map(|b| b["results"].as_array().unwrap())
    {
        for field in ADMIN_FIELDS {
            if field == "tenant" && !admin {
                assert!(result.get("tenant").is_none());
            } else if !report.group_by.contains(&field) {
                assert!(result[field].is_null(), "{field} in {result}");
            }
        }
    }
}

/// All subsets of `fields`.
fn subsets(fields: &[&'static str]) -> Vec<Vec<&'static str>> {
    (0..1_u32 << fields.len())
        .map(|mask| {
            fields
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, f)| *f)
                .collect()
        })
        .collect()
}

/// Records `rows` through the gateway's own batching writer.
async fn write(gw: &TestGateway, rows: Vec<LedgerRow>) {
    for row in rows {
        gw.state.ledger.record(row);
    }
    gw.state.ledger.flush().await;
}

/// The rollups hold exactly the ledger's sums (nothing more, nothing less).
async fn assert_rollups_match_ledger(pool: &PgPool) {
    let hourly = "SELECT date_bin('1 hour', started_at, TIMESTAMPTZ '1970-01-01+00') AS bucket, \
                  tenant_id, api_key_id, model, service_tier, status, currency";
    let sums = "count(*)::int8, sum(input_tokens)::int8, sum(cached_tokens)::int8, \
                sum(output_tokens)::int8, sum(reasoning_tokens)::int8, coalesce(sum(cost), 0), \
                count(*) FILTER (WHERE cost IS NULL)::int8";
    let rollup_sums = "requests, input_tokens, cached_tokens, output_tokens, reasoning_tokens, \
                       cost, unpriced_requests";
    for (table, ledger) in [
        (
            "usage_rollup_hourly",
            format!("{hourly}, {sums} FROM usage_ledger GROUP BY 1, 2, 3, 4, 5, 6, 7"),
        ),
        (
            "usage_rollup_daily",
            format!(
                "SELECT date_bin('1 day', started_at, TIMESTAMPTZ '1970-01-01+00'), tenant_id, \
                 api_key_id, model, service_tier, status, currency, {sums} FROM usage_ledger \
                 GROUP BY 1, 2, 3, 4, 5, 6, 7"
            ),
        ),
        (
            "usage_rollup_daily_fleet",
            format!(
                "SELECT date_bin('1 day', started_at, TIMESTAMPTZ '1970-01-01+00'), model, \
                 service_tier, status, currency, {sums} FROM usage_ledger GROUP BY 1, 2, 3, 4, 5"
            ),
        ),
    ] {
        let keys = if table == "usage_rollup_daily_fleet" {
            "bucket, model, service_tier, status, currency"
        } else {
            "bucket, tenant_id, api_key_id, model, service_tier, status, currency"
        };
        let rollup = format!("SELECT {keys}, {rollup_sums} FROM {table} WHERE requests <> 0");
        let differences: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (({rollup} EXCEPT ALL {ledger}) UNION ALL ({ledger} EXCEPT ALL {rollup})) d"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(differences, 0, "{table} differs from the ledger");
    }
}

async fn setup(pool: PgPool) -> (TestGateway, Vec<Tenant>) {
    let gw = TestGateway::start(pool).await;
    let tenants = vec![
        tenant(&gw.pool, "acme", 2).await,
        tenant(&gw.pool, "globex", 2).await,
        tenant(&gw.pool, "initech", 1).await,
    ];
    (gw, tenants)
}

/// Every width × every group_by subset (admin: 64, tenant: 32), with and
/// without random filters, sums exactly to the ledger rows; again after a
/// reprice-style UPDATE prices rows and after rows are deleted.
#[sqlx::test]
async fn usage_reports_sum_exactly_to_the_ledger_rows(pool: PgPool) {
    let (gw, tenants) = setup(pool).await;
    let (mut rng, seed) = report_helpers::rng();
    println!("TOLLGATE_TEST_SEED={seed}");
    let rows = random_rows(&mut rng, 3_000, &tenants, T0 - 2 * H, T0 + 3 * D + 2 * H);
    write(&gw, rows).await;
    let rows = stored_rows(&gw.pool).await;
    assert_eq!(rows.len(), 3_000);
    assert!(rows.iter().any(|r| r.cost.is_none()));
    assert_rollups_match_ledger(&gw.pool).await;

    let admin = common::ADMIN_TOKEN;
    let random_filters = |rng: &mut rand::rngs::StdRng, report: &mut Report| {
        use rand::Rng;
        if rng.random_bool(0.5) {
            report.models = vec!["gpt-5.5".into()];
        }
        if rng.random_bool(0.4) {
            report.statuses = vec!["completed".into(), "failed".into(), "interrupted".into()];
        }
        if rng.random_bool(0.3) {
            let t = &tenants[rng.random_range(0..tenants.len())];
            report.api_key_ids = vec![t.key_ids[0].clone(), tenants[2].key_ids[0].clone()];
        }
        if rng.random_bool(0.3) {
            report.tenants = vec![tenants[rng.random_range(0..tenants.len())].name.clone()];
        }
    };

    for range in RANGES {
        for group_by in subsets(&ADMIN_FIELDS) {
            let mut report = Report {
                group_by: group_by.clone(),
                ..Report::default()
            };
            check(&gw, admin, "/admin/usage", &report, &rows, range).await;
            random_filters(&mut rng, &mut report);
            check(&gw, admin, "/admin/usage", &report, &rows, range).await;
        }
    }
    // Tenants: their own rows only, whatever they group or filter by.
    for t in &tenants {
        let own: Vec<LedgerRow> = rows
            .iter()
            .filter(|r| r.tenant == t.name)
            .cloned()
            .collect();
        for range in RANGES {
            for group_by in subsets(&ADMIN_FIELDS[1..]) {
                let mut report = Report {
                    group_by,
                    ..Report::default()
                };
                check(&gw, &t.keys[0], "/v1/usage", &report, &own, range).await;
                random_filters(&mut rng, &mut report);
                report.tenants.clear(); // not a client parameter
                check(&gw, &t.keys[0], "/v1/usage", &report, &own, range).await;
            }
        }
    }

    // Priced later: what /admin/reprice does to unpriced rows (same UPDATE
    // shape: UNNEST of ids and costs, guarded by cost IS NULL).
    let unpriced: Vec<i64> = rows
        .iter()
        .filter(|r| r.cost.is_none())
        .filter_map(|r| r.id)
        .step_by(2)
        .collect();
    let costs: Vec<Decimal> = unpriced
        .iter()
        .map(|id| Decimal::new(id * 7_919 + 1, 12))
        .collect();
    let updated = sqlx::query(
        "UPDATE usage_ledger AS u SET cost = v.cost, unpriced_reason = NULL, currency = 'usd'
         FROM UNNEST($1::int8[], $2::numeric[]) AS v(id, cost)
         WHERE u.id = v.id AND u.cost IS NULL",
    )
    .bind(&unpriced)
    .bind(&costs)
    .execute(&gw.pool)
    .await
    .unwrap();
    assert_eq!(updated.rows_affected(), unpriced.len() as u64);
    // And through /admin/reprice itself, once o4-mini has a (backdated)
    // price: its unpriced rows with usage get their cost.
    let mut price = common::gpt55_price();
    price["effective_from"] = Value::from("2025-01-01T00:00:00Z");
    gw.set_price("o4-mini", price).await;
    let (status, repriced) = gw
        .admin(
            Method::POST,
            "/admin/reprice",
            Some(serde_json::json!({"start_time": T0 - D, "end_time": T0 + 4 * D})),
        )
        .await;
    assert_eq!(status, 200, "{repriced}");
    assert!(repriced["priced"].as_u64().unwrap() > 0, "{repriced}");
    assert_rollups_match_ledger(&gw.pool).await;
    // Rows removed (a manual fix) leave no trace in the reports either.
    sqlx::query("DELETE FROM usage_ledger WHERE id % 17 = 0")
        .execute(&gw.pool)
        .await
        .unwrap();
    let rows = stored_rows(&gw.pool).await;
    assert_rollups_match_ledger(&gw.pool).await;
    for range in RANGES {
        for group_by in [
            vec![],
            vec!["model"],
            vec!["tenant", "api_key_id"],
            vec!["status", "end_user"],
        ] {
            let report = Report {
                group_by,
                ..Report::default()
            };
            check(&gw, admin, "/admin/usage", &report, &rows, range).await;
        }
    }
    gw.shutdown().await;
}

/// No parameter lets a tenant see another tenant's rows, keys or totals.
#[sqlx::test]
async fn a_tenant_never_sees_another_tenants_rows_or_keys(pool: PgPool) {
    let (gw, tenants) = setup(pool).await;
    let (mut rng, _) = report_helpers::rng();
    write(&gw, random_rows(&mut rng, 600, &tenants, T0, T0 + D)).await;
    let rows = stored_rows(&gw.pool).await;
    let (acme, globex) = (&tenants[0], &tenants[1]);
    let range = format!("start_time={T0}&end_time={}", T0 + D);
    let everything = "group_by=api_key_id,model,service_tier,status,end_user";

    // Grouped by key: only acme's keys appear, and the totals are acme's.
    let (status, page) = get(
        &gw,
        &acme.keys[0],
        &format!("/v1/usage?{range}&{everything}"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let mut requests = 0;
    for result in page["data"][0]["results"].as_array().unwrap() {
        assert!(acme
            .key_ids
            .contains(&result["api_key_id"].as_str().unwrap().to_owned()));
        assert!(result.get("tenant").is_none());
        requests += result["num_model_requests"].as_i64().unwrap();
    }
    let acme_rows = rows.iter().filter(|r| r.tenant == "acme").count() as i64;
    assert_eq!(requests, acme_rows);

    // Asking for another tenant's key finds nothing, in reports and records.
    let other_key = &globex.key_ids[0];
    let (_, page) = get(
        &gw,
        &acme.keys[0],
        &format!("/v1/usage?{range}&api_key_ids={other_key}&group_by=api_key_id"),
    )
    .await;
    assert_eq!(page["data"][0]["results"].as_array().unwrap().len(), 0);
    let (_, records) = get(
        &gw,
        &acme.keys[0],
        &format!("/v1/usage/records?api_key_ids={other_key}"),
    )
    .await;
    assert_eq!(records["data"].as_array().unwrap().len(), 0);
    let csv = gw
        .http
        .get(gw.url(&format!(
            "/v1/usage/records?format=csv&api_key_ids={other_key}"
        )))
        .bearer_auth(&acme.keys[0])
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(python_csv(&csv).len(), 1, "header only");

    // Tenant dimensions are refused, not ignored.
    for query in [
        format!("{range}&tenants=globex"),
        format!("{range}&group_by=tenant"),
        format!("{range}&tenants[]=globex"),
    ] {
        let (status, error) = get(&gw, &acme.keys[0], &format!("/v1/usage?{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert!(
            error["error"]["param"]
                .as_str()
                .unwrap()
                .starts_with("tenants")
                || error["error"]["param"] == "group_by"
        );
    }
    let (status, _) = get(&gw, &acme.keys[0], "/v1/usage/records?tenants=globex").await;
    assert_eq!(status, 400);

    // Every CSV row of acme is acme's.
    let csv = gw
        .http
        .get(gw.url("/v1/usage/records?format=csv"))
        .bearer_auth(&acme.keys[1])
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let parsed = python_csv(&csv);
    let tenant_column = parsed[0].iter().position(|h| h == "tenant").unwrap();
    assert_eq!(parsed.len() as i64 - 1, acme_rows);
    assert!(parsed[1..].iter().all(|r| r[tenant_column] == "acme"));

    // No key, a wrong key, a client key on the admin endpoint: refused.
    let (status, _) = get(&gw, "nope", &format!("/v1/usage?{range}")).await;
    assert_eq!(status, 401);
    let (status, _) = get(&gw, &acme.keys[0], &format!("/admin/usage?{range}")).await;
    assert_eq!(status, 401);
    gw.shutdown().await;
}

/// Bad parameters answer 400 in the OpenAI envelope, naming the parameter.
#[sqlx::test]
async fn bad_usage_parameters_are_named(pool: PgPool) {
    let (gw, tenants) = setup(pool).await;
    let key = &tenants[0].keys[0];
    let cases = [
        ("", "start_time", "missing_required_parameter"),
        ("start_time=yesterday", "start_time", "invalid_value"),
        ("start_time=100&end_time=50", "end_time", "invalid_value"),
        (
            "start_time=100&group_by=project_id",
            "group_by",
            "invalid_value",
        ),
        (
            "start_time=100&group_by=model,nope",
            "group_by",
            "invalid_value",
        ),
        (
            "start_time=100&bucket_width=1w",
            "bucket_width",
            "invalid_value",
        ),
        // 32 days of minutes: too long a range for the width.
        (
            "start_time=0&end_time=2764800&bucket_width=1m",
            "end_time",
            "invalid_value",
        ),
        (
            "start_time=100&end_time=200&limit=0",
            "limit",
            "invalid_value",
        ),
        (
            "start_time=100&end_time=200&limit=32",
            "limit",
            "invalid_value",
        ),
        (
            "start_time=100&end_time=200&page=page_zzz",
            "page",
            "invalid_value",
        ),
        (
            "start_time=100&end_time=200&project_ids=p",
            "project_ids",
            "unknown_parameter",
        ),
        (
            "start_time=100&end_time=200&statuses=done",
            "statuses",
            "invalid_value",
        ),
    ];
    for (query, param, code) in cases {
        let (status, body) = get(&gw, key, &format!("/v1/usage?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["param"], param, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        let (status, body) = gw
            .admin(Method::GET, &format!("/admin/usage?{query}"), None)
            .await;
        assert_eq!(
            (status, &body["error"]["param"]),
            (400, &Value::from(param))
        );
    }
    // A cursor from another query's range is refused too.
    let (_, page) = get(
        &gw,
        key,
        &format!("/v1/usage?start_time={T0}&end_time={}&limit=1", T0 + 3 * D),
    )
    .await;
    let cursor = page["next_page"].as_str().unwrap();
    let (status, body) = get(
        &gw,
        key,
        &format!(
            "/v1/usage?start_time={}&end_time={}&page={cursor}",
            T0 + 2 * D,
            T0 + 3 * D
        ),
    )
    .await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("page"))
    );
    // Empty buckets are listed, as OpenAI does.
    assert_eq!(page["data"][0]["results"], Value::Array(Vec::new()));
    assert_eq!(page["data"][0]["start_time"], T0);
    assert_eq!(page["data"][0]["end_time"], T0 + D);
    // format=csv exports everything: a page size makes no sense there.
    let (status, body) = get(&gw, key, "/v1/usage/records?format=csv&limit=10").await;
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("limit"))
    );
    gw.shutdown().await;
}

/// The CSV export streams every row of the filter; Python's csv module reads
/// back every field exactly as the JSON records show it.
#[sqlx::test]
async fn csv_export_round_trips_every_field_through_python(pool: PgPool) {
    let (gw, tenants) = setup(pool).await;
    let (mut rng, seed) = report_helpers::rng();
    println!("TOLLGATE_TEST_SEED={seed}");
    // Enough rows for many 64 KiB chunks.
    write(&gw, random_rows(&mut rng, 2_500, &tenants, T0, T0 + 2 * D)).await;
    let rows = stored_rows(&gw.pool).await;

    let fetch = |path: String, bearer: String| {
        let gw = &gw;
        async move {
            let response = gw
                .http
                .get(gw.url(&path))
                .bearer_auth(bearer)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert!(response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/csv"));
            // Streamed: no length known up front.
            assert!(response.content_length().is_none());
            response.bytes().await.unwrap()
        }
    };
    let admin = common::ADMIN_TOKEN.to_owned();
    let body = fetch("/admin/usage/records?format=csv".into(), admin.clone()).await;
    let parsed = python_csv(&body);
    let header = &parsed[0];
    assert_eq!(header, &tollgate::reports::csv::header());
    assert_eq!(parsed.len() - 1, rows.len(), "every row, not one page");
    for (row, fields) in rows.iter().zip(&parsed[1..]) {
        let json = serde_json::to_value(row).unwrap();
        assert_eq!(fields.len(), header.len());
        for (name, field) in header.iter().zip(fields) {
            assert_eq!(
                field,
                &csv_text(&json[name]),
                "{name} of {}",
                row.request_id
            );
        }
    }
    // The awkward strings made it through.
    let end_user = header.iter().position(|h| h == "end_user").unwrap();
    let seen: BTreeSet<&str> = parsed[1..].iter().map(|r| r[end_user].as_str()).collect();
    for awkward in report_helpers::AWKWARD {
        assert!(seen.contains(awkward), "{awkward:?}");
    }

    // Same filters as the JSON records; `after` resumes an export.
    let t = &tenants[1];
    let query = format!(
        "format=csv&models=gpt-5.5&statuses=completed,failed&end_time={}",
        T0 + D
    );
    let body = fetch(format!("/v1/usage/records?{query}"), t.keys[0].clone()).await;
    let parsed = python_csv(&body);
    let want: Vec<&LedgerRow> = rows
        .iter()
        .filter(|r| {
            r.tenant == t.name
                && r.model.as_deref() == Some("gpt-5.5")
                && (r.status == "completed" || r.status == "failed")
                && r.started_at.timestamp() < T0 + D
        })
        .collect();
    let ids: Vec<String> = parsed[1..].iter().map(|r| r[1].clone()).collect();
    let want_ids: Vec<String> = want.iter().map(|r| r.request_id.clone()).collect();
    assert_eq!(ids, want_ids);
    let (_, page) = get(
        &gw,
        &t.keys[0],
        &format!(
            "/v1/usage/records?{}&limit=5",
            query.replace("format=csv&", "")
        ),
    )
    .await;
    let cursor = page["next_cursor"].as_str().unwrap();
    let body = fetch(
        format!("/v1/usage/records?{query}&after={cursor}"),
        t.keys[0].clone(),
    )
    .await;
    let rest: Vec<String> = python_csv(&body)[1..]
        .iter()
        .map(|r| r[1].clone())
        .collect();
    assert_eq!(rest, want_ids[5..]);
    gw.shutdown().await;
}
