//! The ledger by month (CONTRACT §5a): the online upgrade of an
//! unpartitioned ledger while a writer writes, months created ahead and the
//! default partition emptied, archive → verify → drop → restore compared
//! row for row, and records of an archived month answering 410.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;

use tollgate::ledger::months::{self, Month};
use tollgate::ledger::quarantine::insert_isolating;
use tollgate::ledger::LedgerRow;
use tollgate::ledger::{archive, indexes};

/// A row as the gateway builds it, for `tenant` at `started_at`.
fn row(
    request_id: &str,
    tenant: &str,
    started_at: DateTime<Utc>,
    cost: Option<Decimal>,
) -> LedgerRow {
    LedgerRow {
        id: None,
        request_id: request_id.into(),
        response_id: Some(format!("resp_{request_id}")),
        tenant: tenant.into(),
        api_key_id: format!("key_{tenant}"),
        endpoint: "responses.create".into(),
        model: Some("gpt-5.5".into()),
        upstream: Some("mock".into()),
        upstream_model: Some("gpt-5.5-2026".into()),
        stream: false,
        status: "completed".into(),
        usage_source: "reported".into(),
        input_tokens: 120,
        cached_tokens: 20,
        output_tokens: 40,
        reasoning_tokens: 10,
        total_tokens: 160,
        service_tier: Some("default".into()),
        price_id: None,
        unpriced_reason: cost.is_none().then(|| "no_price".into()),
        cost,
        currency: "usd".into(),
        http_status: Some(200),
        error_code: None,
        attempts: 1,
        fallback_from: None,
        end_user: Some("u1".into()),
        dropped_tools: None,
        client_request_id: None,
        client_disconnected: false,
        mcp_calls: 0,
        started_at,
        first_byte_at: Some(started_at),
        finished_at: started_at + chrono::Duration::milliseconds(350),
        anomaly: None,
    }
}

/// Every column of the matching rows, in id order, as one digest.
async fn digest(pool: &PgPool, filter: &str) -> (i64, String) {
    sqlx::query_as(&format!(
        "SELECT count(*), coalesce(md5(string_agg(u::text, '|' ORDER BY id)), '')
         FROM usage_ledger u WHERE {filter}"
    ))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// What every report reads for `tenant`: the rollups, the spend sums and the
/// reconciliation rollup (the fleet-wide ones before `before`), as one digest.
async fn reports_digest_before(pool: &PgPool, tenant: &str, before: DateTime<Utc>) -> String {
    sqlx::query_scalar(
        "SELECT md5(concat_ws('#',
            (SELECT string_agg(r::text, '|' ORDER BY r::text) FROM usage_rollup_hourly r WHERE tenant_id = $1),
            (SELECT string_agg(r::text, '|' ORDER BY r::text) FROM usage_rollup_daily r WHERE tenant_id = $1),
            (SELECT string_agg(r::text, '|' ORDER BY r::text) FROM usage_rollup_daily_fleet r WHERE bucket < $2),
            (SELECT string_agg(r::text, '|' ORDER BY r::text) FROM limit_spend r WHERE day < $2::date),
            (SELECT string_agg(r::text, '|' ORDER BY r::text) FROM ledger_upstream_daily r WHERE day < $2::date)))",
    )
    .bind(tenant)
    .bind(before)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn reports_digest(pool: &PgPool, tenant: &str) -> String {
    let end = Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0).unwrap();
    reports_digest_before(pool, tenant, end).await
}

/// The rollups equal the ledger rows they sum (exact to the last digit).
async fn assert_rollups_exact(pool: &PgPool) {
    let (ledger_rows, ledger_cost): (i64, Option<Decimal>) =
        sqlx::query_as("SELECT count(*), sum(cost) FROM usage_ledger")
            .fetch_one(pool)
            .await
            .unwrap();
    let (rollup_rows, rollup_cost): (Option<i64>, Option<Decimal>) =
        sqlx::query_as("SELECT sum(requests)::bigint, sum(cost) FROM usage_rollup_hourly")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(rollup_rows.unwrap_or(0), ledger_rows);
    assert_eq!(
        rollup_cost.unwrap_or_default().normalize(),
        ledger_cost.unwrap_or_default().normalize()
    );
}

async fn migrate_to_0017(pool: &PgPool) {
    let mut old = sqlx::migrate!("./migrations");
    old.migrations = std::borrow::Cow::Owned(
        old.migrations
            .iter()
            .filter(|m| m.version <= 17)
            .cloned()
            .collect(),
    );
    old.run(pool).await.unwrap();
}

/// Rows spread over the months before now, by SQL (fast for large counts).
async fn fill_old_ledger(pool: &PgPool, rows: i64) {
    sqlx::query(
        "INSERT INTO usage_ledger (request_id, response_id, tenant_id, api_key_id, endpoint, model,
            upstream, stream, status, usage_source, input_tokens, cached_tokens, output_tokens,
            reasoning_tokens, total_tokens, service_tier, cost, unpriced_reason, currency,
            http_status, attempts, end_user, started_at, first_byte_at, finished_at)
         SELECT 'req_old_' || g, 'resp_old_' || g, 'acme', 'key_' || (g % 7), 'responses.create',
            CASE WHEN g % 3 = 0 THEN 'gpt-5.5' ELSE 'gpt-5-mini' END, 'mock', g % 2 = 0,
            CASE WHEN g % 11 = 0 THEN 'interrupted' ELSE 'completed' END, 'reported',
            100 + g % 1000, g % 50, 30 + g % 300, g % 20, 130 + g % 1000 + g % 300,
            'default',
            CASE WHEN g % 13 = 0 THEN NULL ELSE (g % 997) * 0.0000001234567891 END,
            CASE WHEN g % 13 = 0 THEN 'no_price' END, 'usd', 200, 1, 'user_' || (g % 50),
            now() - (1 + g % 200) * interval '1 day' - (g % 3600) * interval '1 second',
            now() - (1 + g % 200) * interval '1 day', now() - (1 + g % 200) * interval '1 day'
         FROM generate_series(1, $1) g",
    )
    .bind(rows)
    .execute(pool)
    .await
    .unwrap();
}

/// A writer storing one row at a time (tenant `live`, now) until `stop`:
/// how many it stored and its longest write.
fn live_writer(pool: &PgPool, stop: &Arc<AtomicBool>) -> tokio::task::JoinHandle<(u64, Duration)> {
    let (pool, stop) = (pool.clone(), stop.clone());
    tokio::spawn(async move {
        let (mut written, mut longest) = (0u64, Duration::ZERO);
        while !stop.load(Ordering::Relaxed) {
            let mut batch = row(&format!("req_live_{written}"), "live", Utc::now(), None);
            batch.upstream = None;
            let started = Instant::now();
            insert_isolating(&pool, &[batch]).await.unwrap();
            longest = longest.max(started.elapsed());
            written += 1;
        }
        (written, longest)
    })
}

/// Upgrading a populated ledger while a writer keeps inserting: no row
/// lost or changed, every report the same, writes never stalled for a
/// second. `LEDGER_UPGRADE_ROWS` sets the size (the figure in BENCHMARKS).
#[sqlx::test(migrations = false)]
async fn the_upgrade_is_online_and_loses_nothing(pool: PgPool) {
    let size: i64 = std::env::var("LEDGER_UPGRADE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    migrate_to_0017(&pool).await;
    fill_old_ledger(&pool, size).await;
    let before = digest(&pool, "tenant_id = 'acme'").await;
    // The writer's rows are today's: the fleet-wide rollups are compared
    // before today.
    let today = Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let reports_before = reports_digest_before(&pool, "acme", today).await;
    assert_eq!(before.0, size);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = live_writer(&pool, &stop);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    tollgate::state::migrate(&pool).await.unwrap();
    let took = started.elapsed();
    // A replica starting on the upgraded database migrates nothing.
    tollgate::state::migrate(&pool).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (written, longest) = writer.await.unwrap();
    println!(
        "upgrade of {size} rows: {:.2} s; writer stored {written} rows meanwhile, longest write {:.0} ms",
        took.as_secs_f64(),
        longest.as_secs_f64() * 1e3
    );

    let kind: String =
        sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE relname = 'usage_ledger'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kind, "p", "usage_ledger is partitioned");
    assert_eq!(
        digest(&pool, "tenant_id = 'acme'").await,
        before,
        "old rows unchanged"
    );
    assert_eq!(
        reports_digest_before(&pool, "acme", today).await,
        reports_before
    );
    let live: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_ledger WHERE tenant_id = 'live'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        live as u64, written,
        "every row the writer stored is there once"
    );
    assert!(written > 0);
    assert!(
        longest < Duration::from_secs(1),
        "a write waited {longest:?}"
    );
    assert_rollups_exact(&pool).await;

    // A replay of an old row and of a new one is still stored once.
    let mut replay = row("req_live_0", "live", Utc::now(), None);
    replay.started_at =
        sqlx::query_scalar("SELECT started_at FROM usage_ledger WHERE request_id = 'req_live_0'")
            .fetch_one(&pool)
            .await
            .unwrap();
    replay.upstream = None;
    insert_isolating(&pool, &[replay]).await.unwrap();
    assert_eq!(digest(&pool, "request_id = 'req_live_0'").await.0, 1);
    // Migration 0020's indexes were built ahead, concurrently, on the old
    // table, and the migration attached them (it built none under its
    // lock); the indexes they replace are gone.
    let legacy_indexes: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE i.indrelid = 'usage_ledger_legacy'::regclass AND i.indisvalid
           AND EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for prepared in [
        "usage_ledger_legacy_time_idx",
        "usage_ledger_legacy_model_idx",
        "usage_ledger_legacy_response_idx",
    ] {
        assert!(
            legacy_indexes.iter().any(|i| i == prepared),
            "{prepared} attached: {legacy_indexes:?}"
        );
    }
    assert_eq!(
        parent_indexes_named(&pool, "usage_ledger_started_idx").await,
        0
    );
    assert_eq!(
        parent_indexes_named(&pool, "usage_ledger_model_started_idx").await,
        0
    );
    assert_eq!(
        parent_indexes_named(&pool, "usage_ledger_response_id_idx").await,
        0
    );
    let partitions = months::partitions(&pool).await.unwrap();
    assert!(partitions.iter().any(|p| p.state == "legacy"));
    assert!(partitions
        .iter()
        .any(|p| p.month.as_deref() == Some(&Month::of(Utc::now()).plus(2).to_string()[..])));
}

async fn parent_indexes_named(pool: &PgPool, name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE i.indrelid = 'usage_ledger'::regclass AND c.relname = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A closed month's indexes are rebuilt once, concurrently, while a writer
/// writes: smaller, every row and report the same, each index still valid
/// and attached to the parent's; a month is not touched before it has been
/// over for two days.
#[sqlx::test(migrations = "./migrations")]
async fn a_closed_months_indexes_are_compacted_once(pool: PgPool) {
    let now = Utc::now();
    let closed = Month::of(now).plus(-2);
    months::create_range(&pool, closed, closed).await.unwrap();
    // 40 tenants appending at once in time order, in the writer's batches:
    // the pattern that leaves the (tenant, time) and (key, time) indexes
    // half full.
    for batch in 0..40 {
        let rows: Vec<LedgerRow> = (0..500)
            .map(|i| {
                let n = batch * 500 + i;
                row(
                    &format!("req_closed_{n:06}"),
                    &format!("t{:02}", n % 40),
                    closed.start() + chrono::Duration::seconds(n),
                    Some(Decimal::new(n + 1, 9)),
                )
            })
            .collect();
        insert_isolating(&pool, &rows).await.unwrap();
    }
    let before = digest(&pool, "true").await;
    let this_month = Month::of(now).start();
    let reports = reports_digest_before(&pool, "t07", this_month).await;
    // Compacted while a writer writes into this month.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = live_writer(&pool, &stop);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let not_yet = Month::of(now).end() + chrono::Duration::days(1);
    let (first, _) = indexes::compact_next(&pool, not_yet).await.unwrap();
    let first = first.expect("the month over for two days is due");
    assert_eq!(first.partition, closed.partition(), "only it is due");
    assert!(
        first.bytes_after < first.bytes_before,
        "rebuilt smaller: {first:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (written, longest) = writer.await.unwrap();
    assert!(written > 0);
    assert!(
        longest < Duration::from_secs(1),
        "a write waited {longest:?}"
    );
    let (again, more) = indexes::compact_next(&pool, not_yet).await.unwrap();
    assert!(again.is_none() && !more, "compacted once: {again:?}");

    // This month is due two days after it ends.
    let later = Month::of(now).end() + chrono::Duration::days(3);
    let (second, _) = indexes::compact_next(&pool, later).await.unwrap();
    assert_eq!(second.unwrap().partition, Month::of(now).partition());

    assert_eq!(digest(&pool, "tenant_id <> 'live'").await, before);
    assert_eq!(
        reports_digest_before(&pool, "t07", this_month).await,
        reports
    );
    for month in [closed, Month::of(now)] {
        let broken: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_index i WHERE i.indrelid = to_regclass($1)
               AND (NOT i.indisvalid OR NOT EXISTS
                    (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid))",
        )
        .bind(month.partition())
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(broken, 0, "{month}: every index valid and attached");
    }
    let listed = months::partitions(&pool).await.unwrap();
    let shown = listed
        .iter()
        .find(|p| p.month.as_deref() == Some(&closed.to_string()[..]))
        .unwrap();
    assert!(shown.compacted_at.is_some());
    assert_rollups_exact(&pool).await;
}

/// A fresh ledger has this month and three ahead; a row no month covers
/// lands in the default partition, is counted, and moves into its month
/// when the job creates it, without changing a rollup.
#[sqlx::test(migrations = "./migrations")]
async fn months_are_created_ahead_and_the_default_partition_empties(pool: PgPool) {
    let now = Utc::now();
    for i in 0..=months::MONTHS_AHEAD as i32 {
        let name = Month::of(now).plus(i).partition();
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&name)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(exists, "{name}");
    }
    let old = Utc.with_ymd_and_hms(2020, 1, 15, 12, 0, 0).unwrap();
    let far = Utc.with_ymd_and_hms(2031, 6, 1, 0, 0, 0).unwrap();
    let rows = [
        row("req_old", "acme", old, Some(Decimal::new(12345, 7))),
        row("req_far", "acme", far, Some(Decimal::new(1, 16))),
    ];
    insert_isolating(&pool, &rows).await.unwrap();
    assert_eq!(months::default_rows(&pool).await.unwrap(), 2);
    let reports = reports_digest(&pool, "acme").await;
    let before = digest(&pool, "true").await;

    let (a, b) = tokio::join!(
        months::ensure_months(&pool, now),
        months::ensure_months(&pool, now)
    );
    assert_eq!(a.unwrap() + b.unwrap(), 2, "both rows moved, once");
    assert_eq!(months::default_rows(&pool).await.unwrap(), 0);
    assert_eq!(digest(&pool, "true").await, before);
    assert_eq!(reports_digest(&pool, "acme").await, reports);
    let home: String = sqlx::query_scalar(
        "SELECT tableoid::regclass::text FROM usage_ledger WHERE request_id = 'req_old'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(home, "usage_ledger_2020_01");
    // Replaying both rows stores nothing new.
    let stored = insert_isolating(&pool, &rows).await.unwrap();
    assert_eq!(stored.quarantined, 0);
    assert_eq!(digest(&pool, "true").await, before);
    assert_rollups_exact(&pool).await;
}

/// Archive → verify → drop → restore: the manifest's sums are exact, the
/// rollups stay (reports of the month answer the same), records answer 410
/// naming the archive, and the restored month is the same row for row.
#[sqlx::test(migrations = "./migrations")]
async fn a_month_round_trips_through_its_archive(pool: PgPool) {
    let month = Month::of(Utc::now()).plus(-2);
    let start = month.start();
    let mut rows = Vec::new();
    let mut expected_cost = Decimal::ZERO;
    for i in 0..3_000i64 {
        let at = start + chrono::Duration::seconds(i * 700);
        let cost = (i % 9 != 0).then(|| Decimal::new(i * 1_234_567 + 1, 16));
        expected_cost += cost.unwrap_or_default();
        let mut r = row(&format!("req_arch_{i}"), "acme", at, cost);
        if i % 5 == 0 {
            r.end_user = None;
            r.anomaly = Some("o'dd \"text\" ✓".into());
        }
        rows.push(r);
    }
    for chunk in rows.chunks(1_000) {
        insert_isolating(&pool, chunk).await.unwrap();
    }
    months::ensure_months(&pool, Utc::now()).await.unwrap();
    // A reprice-like UPDATE before archiving: the rollups follow it.
    sqlx::query(
        "UPDATE usage_ledger SET cost = cost + 0.0000000000000001 WHERE request_id = 'req_arch_1'",
    )
    .execute(&pool)
    .await
    .unwrap();
    expected_cost += Decimal::new(1, 16);
    let range = format!(
        "started_at >= '{}' AND started_at < '{}'",
        month.start().to_rfc3339(),
        month.end().to_rfc3339()
    );
    let before = digest(&pool, &range).await;
    assert_eq!(before.0, 3_000);
    let reports = reports_digest(&pool, "acme").await;

    let gateway = common::TestGateway::start(pool.clone()).await;
    let usage_path = format!(
        "/admin/usage?start_time={}&end_time={}&group_by=model",
        start.timestamp(),
        month.end().timestamp()
    );
    let (status, usage_before) = gateway.admin(reqwest::Method::GET, &usage_path, None).await;
    assert_eq!(status, 200, "{usage_before}");

    let dir = tempfile::tempdir().unwrap();
    let manifest = archive::archive_and_drop(&pool, dir.path(), month)
        .await
        .unwrap();
    assert_eq!(manifest.rows, 3_000);
    assert_eq!(
        manifest.cost_sum["usd"],
        expected_cost.normalize().to_string()
    );
    assert_eq!(manifest.unpriced_rows, 334);
    let gone: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NULL")
        .bind(month.partition())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(gone, "the partition was dropped");
    assert_eq!(digest(&pool, &range).await.0, 0);
    assert_eq!(reports_digest(&pool, "acme").await, reports, "rollups kept");
    archive::verify(&pool, dir.path(), month).await.unwrap();

    // Reports answer the archived month exactly as before.
    let (status, usage_after) = gateway.admin(reqwest::Method::GET, &usage_path, None).await;
    assert_eq!(status, 200);
    assert_eq!(usage_after, usage_before);
    // Records and CSV over it answer 410 naming the month and its archive.
    for format in ["json", "csv"] {
        let path = format!(
            "/admin/usage/records?start_time={}&end_time={}&format={format}",
            start.timestamp(),
            month.end().timestamp()
        );
        let (status, body) = gateway.admin(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 410, "{format}: {body}");
        assert_eq!(body["error"]["code"], "ledger_archived");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(&month.to_string()), "{message}");
        assert!(message.contains("usage_ledger/month="), "{message}");
    }
    // A range after the archived month still pages normally.
    let (status, _) = gateway
        .admin(
            reqwest::Method::GET,
            &format!(
                "/admin/usage/records?start_time={}",
                month.end().timestamp()
            ),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, list) = gateway
        .admin(reqwest::Method::GET, "/admin/ledger/partitions", None)
        .await;
    assert_eq!(status, 200);
    let archived = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["month"] == month.to_string())
        .expect("the archived month is listed");
    assert_eq!(archived["state"], "archived");
    assert_eq!(archived["rows"], 3_000);
    assert_eq!(
        archived["archive"]["files"][0]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );

    // A tampered archive fails verification.
    let copy = tempfile::tempdir().unwrap();
    let from = archive::month_dir(dir.path(), month);
    let to = archive::month_dir(copy.path(), month);
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    let mut bytes = std::fs::read(to.join("part-00000.parquet")).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(to.join("part-00000.parquet"), bytes).unwrap();
    assert!(archive::verify(&pool, copy.path(), month).await.is_err());

    archive::restore(&pool, dir.path(), month).await.unwrap();
    assert_eq!(digest(&pool, &range).await, before, "restored row for row");
    assert_eq!(reports_digest(&pool, "acme").await, reports);
    assert_rollups_exact(&pool).await;
    let (status, _) = gateway
        .admin(
            reqwest::Method::GET,
            &format!(
                "/admin/usage/records?start_time={}&end_time={}",
                start.timestamp(),
                month.end().timestamp()
            ),
            None,
        )
        .await;
    assert_eq!(status, 200);
    gateway.shutdown().await;
}

/// The current month is never archived (its rows are still arriving).
#[sqlx::test(migrations = "./migrations")]
async fn the_current_month_is_not_archived(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let err = archive::archive_and_drop(&pool, dir.path(), Month::of(Utc::now()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not over"), "{err}");
}

/// `[ledger] retention_months`: the job archives a month past retention
/// (then drops it) and keeps the months within it.
#[sqlx::test(migrations = "./migrations")]
async fn retention_archives_months_past_it(pool: PgPool) {
    let now = Utc::now();
    let old = Month::of(now).plus(-3);
    let kept = Month::of(now).plus(-1);
    let rows = [
        row(
            "req_ret_old",
            "acme",
            old.start() + chrono::Duration::hours(5),
            Some(Decimal::new(7, 3)),
        ),
        row(
            "req_ret_kept",
            "acme",
            kept.start() + chrono::Duration::hours(5),
            Some(Decimal::new(9, 3)),
        ),
    ];
    insert_isolating(&pool, &rows).await.unwrap();
    let reports = reports_digest(&pool, "acme").await;
    let dir = tempfile::tempdir().unwrap();
    let mut job = tollgate::ledger::upkeep::MonthsJob {
        retention_months: Some(2),
        archive_dir: dir.path().to_path_buf(),
    };
    let ctx = tollgate::jobs::JobContext {
        pool: pool.clone(),
        stop: tokio_util::sync::CancellationToken::new(),
    };
    // First round: creates the rows' months (from the default partition)
    // and archives the oldest one past retention.
    for _ in 0..3 {
        tollgate::jobs::run_once(&ctx, &mut job).await.unwrap();
    }
    let archived: Vec<String> = months::partitions(&pool)
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.state == "archived")
        .filter_map(|p| p.month)
        .collect();
    assert_eq!(archived, vec![old.to_string()]);
    assert_eq!(digest(&pool, "request_id = 'req_ret_old'").await.0, 0);
    assert_eq!(digest(&pool, "request_id = 'req_ret_kept'").await.0, 1);
    assert_eq!(reports_digest(&pool, "acme").await, reports, "rollups kept");
    let manifest = archive::verify(&pool, dir.path(), old).await.unwrap();
    assert_eq!(manifest.rows, 1);
    assert_eq!(manifest.cost_sum["usd"], "0.007");
}

/// An upgraded ledger's legacy partition leaves by retention too: once its
/// last month is past retention, each of its months is archived and
/// verified (`pending`: rows still served), then the table is re-checked,
/// detached and dropped; reports answer the same, records of those months
/// answer 410, and a month restores row for row. A legacy row changed after
/// its month's archive stops the drop and has that month archived again.
#[sqlx::test(migrations = false)]
async fn the_legacy_partition_is_archived_month_by_month_then_dropped(pool: PgPool) {
    migrate_to_0017(&pool).await;
    let now = Utc::now();
    // Rows 100 to 199 days old; the upgrade's bound three months back
    // (as if it had run then), so its last month is past retention.
    sqlx::query(
        "INSERT INTO usage_ledger (request_id, response_id, tenant_id, api_key_id, endpoint, model,
            stream, status, usage_source, input_tokens, output_tokens, total_tokens, cost,
            unpriced_reason, currency, started_at, finished_at)
         SELECT 'req_legacy_' || g, 'resp_legacy_' || g, 'acme', 'key_a', 'responses.create',
            'gpt-5.5', false, 'completed', 'reported', 100, 20, 120,
            CASE WHEN g % 7 = 0 THEN NULL ELSE g * 0.0000000001234567 END,
            CASE WHEN g % 7 = 0 THEN 'no_price' END, 'usd',
            now() - (100 + g % 100) * interval '1 day', now() - (100 + g % 100) * interval '1 day'
         FROM generate_series(1, 2000) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    let bound = Month::of(now).plus(-2);
    sqlx::query(&format!(
        "ALTER TABLE usage_ledger ADD CONSTRAINT usage_ledger_upgrade_bound_{}
         CHECK (started_at < '{}')",
        bound.first_day().format("%Y%m"),
        bound.start().to_rfc3339()
    ))
    .execute(&pool)
    .await
    .unwrap();
    tollgate::state::migrate(&pool).await.unwrap();
    assert_eq!(
        months::legacy_end(&pool).await.unwrap(),
        Some(bound.start())
    );
    let held = months::legacy_months(&pool).await.unwrap();
    assert!(held.len() >= 4, "{held:?}");
    let before = digest(&pool, "true").await;
    let reports = reports_digest(&pool, "acme").await;

    // Retention keeping two months: every legacy month is due, oldest first.
    let oldest_kept = Month::of(now).plus(-1);
    // (then the empty month partitions after the legacy bound)
    let legacy_due = || async {
        months::months_past_retention(&pool, oldest_kept)
            .await
            .unwrap()
            .into_iter()
            .filter(|m| *m < bound)
            .collect::<Vec<_>>()
    };
    assert_eq!(legacy_due().await, held);
    let dir = tempfile::tempdir().unwrap();
    for month in &held[..held.len() - 1] {
        archive::archive_and_drop(&pool, dir.path(), *month)
            .await
            .unwrap();
    }
    assert_eq!(
        digest(&pool, "true").await,
        before,
        "rows stay until the last"
    );
    assert!(
        archive::archived_in(&pool, None, None)
            .await
            .unwrap()
            .is_none(),
        "pending months still serve their rows"
    );
    // A reprice of a pending month's row: the drop (due with the last
    // month's archive) refuses, that month is due again, and its new
    // archive drops the legacy partition.
    let last = *held.last().unwrap();
    sqlx::query(
        "UPDATE usage_ledger SET cost = cost + 0.0000000000000001
         WHERE request_id = (SELECT request_id FROM usage_ledger
                             WHERE started_at >= $1 AND started_at < $2 AND cost IS NOT NULL LIMIT 1)",
    )
    .bind(held[0].start())
    .bind(held[0].end())
    .execute(&pool)
    .await
    .unwrap();
    let refused = archive::archive_and_drop(&pool, dir.path(), last).await;
    assert!(refused.is_err(), "a changed legacy row stops the drop");
    assert_eq!(
        legacy_due().await,
        vec![held[0]],
        "the changed month is archived again"
    );
    let before = digest(&pool, "true").await;
    let reports_repriced = reports_digest(&pool, "acme").await;
    assert_ne!(reports_repriced, reports);
    archive::archive_and_drop(&pool, dir.path(), held[0])
        .await
        .unwrap();
    assert_eq!(
        months::legacy_end(&pool).await.unwrap(),
        None,
        "the last month archived drops the table"
    );
    assert!(legacy_due().await.is_empty());
    assert_eq!(digest(&pool, "true").await.0, 0);
    assert_eq!(reports_digest(&pool, "acme").await, reports_repriced);
    let listed = months::partitions(&pool).await.unwrap();
    for month in &held {
        assert!(
            listed.iter().any(
                |p| p.state == "archived" && p.month.as_deref() == Some(&month.to_string()[..])
            ),
            "{month} listed archived"
        );
        archive::verify(&pool, dir.path(), *month).await.unwrap();
    }
    assert!(
        archive::archived_in(&pool, Some(held[1].start()), Some(held[1].end()))
            .await
            .unwrap()
            .is_some()
    );

    // Every month restores as it was.
    for month in &held {
        archive::restore(&pool, dir.path(), *month).await.unwrap();
    }
    assert_eq!(digest(&pool, "true").await, before);
    assert_eq!(reports_digest(&pool, "acme").await, reports_repriced);
    assert_rollups_exact(&pool).await;
}
