//! `tollgate-bench-reports --ledger`: the ledger at scale (issue 19) over a
//! ledger loaded across monthly partitions: month reports cold (first touch
//! of each month) and warm, a records page deep into a month, the
//! dashboard's first load, bytes per row, the writer before (migration 0017,
//! one table) and after (monthly partitions) in one run, and archiving,
//! verifying and dropping the oldest month while a writer keeps writing.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::DateTime;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use tollgate::ledger::months::{self, Month};
use tollgate::ledger::spool::Spool;
use tollgate::ledger::{archive, spawn_writer, Batching};

use super::{ms, writer_rows, Cli, Server, Who, ADMIN_TOKEN, END};

fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

async fn once(server: &Server, bearer: &str, path: &str) -> Result<Duration> {
    let began = Instant::now();
    server.get(bearer, path).await?;
    Ok(began.elapsed())
}

/// Cold: the first request for each month; warm: `runs` more on the last.
async fn cold_and_warm(
    server: &Server,
    runs: usize,
    bearer: &str,
    months: &[Month],
    path: impl Fn(Month) -> String,
) -> Result<(Duration, Duration, Duration)> {
    let mut cold = Vec::new();
    for month in months {
        cold.push(once(server, bearer, &path(*month)).await?);
    }
    let last = path(*months.last().unwrap_or(&Month::of(chrono::Utc::now())));
    let mut warm = Vec::new();
    for _ in 0..runs {
        warm.push(once(server, bearer, &last).await?);
    }
    Ok((
        quantile(&cold, 0.95),
        quantile(&warm, 0.5),
        quantile(&warm, 0.95),
    ))
}

pub(super) async fn run(
    cli: &Cli,
    base: &PgConnectOptions,
    pool: &PgPool,
    server: &Server,
    who: &Who<'_>,
    start: i64,
    load_line: &str,
) -> Result<String> {
    let first = Month::of(DateTime::from_timestamp(start, 0).unwrap_or_default());
    let last = Month::of(DateTime::from_timestamp(END - 1, 0).unwrap_or_default());
    let mut months_list = Vec::new();
    let mut m = first;
    while m <= last {
        months_list.push(m);
        m = m.plus(1);
    }
    let mut md = String::new();
    let _ = writeln!(md, "{load_line}\n");
    let parts = months::partitions(pool).await?;
    let (rows, bytes) = parts
        .iter()
        .filter(|p| p.state == "live" && p.rows > 0)
        .fold((0i64, 0i64), |(r, b), p| (r + p.rows, b + p.bytes));
    let live = parts
        .iter()
        .filter(|p| p.state == "live" && p.rows > 0)
        .count();
    let _ = writeln!(
        md,
        "{rows} rows in {live} monthly partitions: {:.1} GB table + indexes, {} bytes per row \
         (`pg_total_relation_size` summed over the partitions)\n",
        bytes as f64 / 1e9,
        bytes / rows.max(1)
    );
    eprintln!(
        "{rows} rows, {live} partitions, {} bytes/row",
        bytes / rows.max(1)
    );
    let tenant_month = |m: Month| {
        format!(
            "/v1/usage?start_time={}&end_time={}&bucket_width=1d&group_by=model&limit=31",
            m.start().timestamp(),
            m.end().timestamp()
        )
    };
    let admin_month = |m: Month| {
        format!(
            "/admin/usage?start_time={}&end_time={}&bucket_width=1d&group_by=model,api_key_id&limit=31",
            m.start().timestamp(),
            m.end().timestamp()
        )
    };
    let deep_records = |m: Month| {
        format!(
            "/v1/usage/records?api_key_ids={}&start_time={}&end_time={}&limit=100",
            who.key_id,
            m.start().timestamp(),
            m.start().timestamp() + 15 * 86_400
        )
    };
    let _ = writeln!(
        md,
        "| query (over HTTP, request to body) | cold p95 ms (first touch of each of {} months) | warm p50 ms | warm p95 ms ({} runs) |\n|---|---|---|---|",
        months_list.len(),
        cli.runs
    );
    for (label, bearer, path) in [
        (
            format!(
                "tenant {} month, 1d, group_by=model (`/v1/usage`)",
                who.tenant
            ),
            who.key,
            &tenant_month as &dyn Fn(Month) -> String,
        ),
        (
            "admin month, 1d, group_by=model,api_key_id (`/admin/usage`)".to_owned(),
            ADMIN_TOKEN,
            &admin_month,
        ),
        (
            format!(
                "records page of key {} at mid-month (`/v1/usage/records`)",
                who.key_id
            ),
            who.key,
            &deep_records,
        ),
    ] {
        let (cold, warm50, warm95) =
            cold_and_warm(server, cli.runs, bearer, &months_list, path).await?;
        eprintln!(
            "{label}: cold p95 {} warm p50 {} p95 {}",
            ms(cold),
            ms(warm50),
            ms(warm95)
        );
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {} |",
            ms(cold),
            ms(warm50),
            ms(warm95)
        );
    }
    let dashboard = dashboard_first_load(server, cli.runs).await?;
    let _ = writeln!(
        md,
        "| dashboard first load (admin, 30 days: usage by model, key, status, tenant in parallel, then 50 records) | {} | {} | {} |\n",
        ms(dashboard.0),
        ms(dashboard.1),
        ms(dashboard.2)
    );

    let writers = writer_before_after(base, pool).await?;
    let _ = writeln!(md, "{writers}\n");
    eprintln!("{writers}");

    let archived = archive_oldest(pool, first).await?;
    let _ = writeln!(md, "{archived}");
    eprintln!("{archived}");
    Ok(md)
}

/// The admin dashboard's overview requests, as the page sends them.
async fn dashboard_first_load(
    server: &Server,
    runs: usize,
) -> Result<(Duration, Duration, Duration)> {
    let range = format!(
        "start_time={}&end_time={END}&bucket_width=1d&limit=31",
        END - 30 * 86_400
    );
    let paths: Vec<String> = ["model", "api_key_id", "status", "tenant"]
        .iter()
        .map(|g| format!("/admin/usage?{range}&group_by={g}"))
        .collect();
    let load = || async {
        let began = Instant::now();
        let (a, b, c, d) = tokio::join!(
            server.get(ADMIN_TOKEN, &paths[0]),
            server.get(ADMIN_TOKEN, &paths[1]),
            server.get(ADMIN_TOKEN, &paths[2]),
            server.get(ADMIN_TOKEN, &paths[3]),
        );
        a?;
        b?;
        c?;
        d?;
        server
            .get(ADMIN_TOKEN, "/admin/usage/records?limit=50")
            .await?;
        Ok::<_, anyhow::Error>(began.elapsed())
    };
    let cold = load().await?;
    let mut warm = Vec::new();
    for _ in 0..runs {
        warm.push(load().await?);
    }
    Ok((cold, quantile(&warm, 0.5), quantile(&warm, 0.95)))
}

/// Bytes per row by part as loaded, then every closed partition's indexes
/// compacted as the `ledger.months` job does, and the bytes again. Runs
/// before the gateway starts (its own job would compact beside the reports
/// being timed).
pub(super) async fn bytes_and_compaction(pool: &PgPool) -> Result<String> {
    let rows: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(requests), 0)::bigint FROM usage_rollup_daily_fleet",
    )
    .fetch_one(pool)
    .await?;
    let (during, before, after_during, secs): (i64, Option<i64>, Option<i64>, Option<f64>) =
        sqlx::query_as(
            "SELECT count(*), sum(bytes_before)::bigint, sum(bytes_after)::bigint, sum(seconds)
             FROM ledger_compactions",
        )
        .fetch_one(pool)
        .await?;
    let loaded = bytes_by_part(pool).await?;
    let began = Instant::now();
    let compacted = compact_all(pool).await?;
    let took = began.elapsed();
    let after = bytes_by_part(pool).await?;
    eprintln!(
        "compacted {compacted} partitions in {:.0} s",
        took.as_secs_f64()
    );
    let per_row = |b: Option<i64>| b.unwrap_or(0) as f64 / rows.max(1) as f64;
    Ok(format!(
        "Compacted while the load ran (as the job does once a month is two days over): \
         {during} partitions, their indexes {:.1} → {:.1} bytes per row of the ledger, \
         {:.0} s of `REINDEX TABLE CONCURRENTLY`. Bytes per row by part after the load, \
         and after compacting the {compacted} closed partitions left ({:.0} s):\n\n{}",
        per_row(before),
        per_row(after_during),
        secs.unwrap_or(0.0),
        took.as_secs_f64(),
        bytes_table(
            &[
                ("after the load", &loaded),
                ("all closed compacted", &after)
            ],
            rows
        )
    ))
}

/// The ledger's bytes on disk by part, summed over its partitions: the
/// table (heap, TOAST, maps) and each index under its parent's name.
async fn bytes_by_part(pool: &PgPool) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT 'table', coalesce(sum(pg_table_size(h.inhrelid)), 0)::bigint
         FROM pg_inherits h WHERE h.inhparent = 'usage_ledger'::regclass
         UNION ALL
         SELECT coalesce(pc.relname, ci.relname)::text, sum(pg_relation_size(ci.oid))::bigint
         FROM pg_inherits h
         JOIN pg_index i ON i.indrelid = h.inhrelid
         JOIN pg_class ci ON ci.oid = i.indexrelid
         LEFT JOIN pg_inherits hi ON hi.inhrelid = ci.oid
         LEFT JOIN pg_class pc ON pc.oid = hi.inhparent
         WHERE h.inhparent = 'usage_ledger'::regclass
         GROUP BY 1 ORDER BY 2 DESC",
    )
    .fetch_all(pool)
    .await?)
}

/// Every closed partition's indexes compacted, as the `ledger.months` job
/// does one per step (the gateway's own job may take some of them: this
/// waits until none is left); returns how many.
async fn compact_all(pool: &PgPool) -> Result<usize> {
    use tollgate::ledger::indexes;
    let waiting = indexes::due(pool, chrono::Utc::now()).await?;
    while indexes::due(pool, chrono::Utc::now()).await? > 0 {
        let (compacted, _) = indexes::compact_next(pool, chrono::Utc::now()).await?;
        if compacted.is_none() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(waiting)
}

/// A Markdown table of bytes per row: one row per part (table, each
/// index), one column per measurement, and the sum.
fn bytes_table(columns: &[(&str, &[(String, i64)])], rows: i64) -> String {
    let per_row = |b: i64| format!("{:.1}", b as f64 / rows.max(1) as f64);
    let mut names: Vec<String> = Vec::new();
    for (_, parts) in columns {
        for (name, _) in parts.iter() {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    let mut out = format!(
        "| bytes per row | {} |\n|---|{}\n",
        columns.iter().map(|c| c.0).collect::<Vec<_>>().join(" | "),
        "---|".repeat(columns.len())
    );
    for name in names.iter().map(String::as_str).chain(["all"]) {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, parts)| {
                if name == "all" {
                    return per_row(parts.iter().map(|p| p.1).sum());
                }
                parts
                    .iter()
                    .find(|p| p.0 == name)
                    .map_or("-".to_owned(), |p| per_row(p.1))
            })
            .collect();
        let shown = name.strip_prefix("usage_ledger_").unwrap_or(name);
        let _ = writeln!(out, "| {shown} | {} |", cells.join(" | "));
    }
    out
}

/// The row before and after migration 0020 (leaner indexes) and after the
/// closed months' compaction: the same 2,000,000 generated rows over two
/// months, loaded into a fresh database at 0019 and one at the head.
pub(super) async fn lean_before_after(base: &PgConnectOptions) -> Result<String> {
    const ROWS: u64 = 2_000_000;
    let start = END - 61 * 86_400;
    let mut admin = base.clone().database("postgres").connect().await?;
    let mut measured: Vec<(&str, Vec<(String, i64)>)> = Vec::new();
    for (label, upto) in [("0019", 19), ("0020", i64::MAX)] {
        let name = format!("tollgate_bench_lean_{label}_{}", std::process::id());
        let pool = fresh_database(&mut admin, base, &name, upto).await?;
        months::create_range(
            &pool,
            Month::of(DateTime::from_timestamp(start, 0).unwrap_or_default()),
            Month::of(DateTime::from_timestamp(END, 0).unwrap_or_default()),
        )
        .await?;
        let keys = super::create_keys(&pool).await?;
        load_sql(&pool, &keys, ROWS, start, 2, false).await?;
        sqlx::query("VACUUM ANALYZE usage_ledger")
            .execute(&pool)
            .await?;
        measured.push((
            if upto == 19 { "0019" } else { "0020" },
            bytes_by_part(&pool).await?,
        ));
        if upto != 19 {
            compact_all(&pool).await?;
            measured.push(("0020, closed months compacted", bytes_by_part(&pool).await?));
        }
        pool.close().await;
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
    }
    let _ = admin.close().await;
    let columns: Vec<(&str, &[(String, i64)])> =
        measured.iter().map(|(l, p)| (*l, p.as_slice())).collect();
    Ok(format!(
        "The row before and after migration 0020 (leaner indexes), the same {ROWS} generated rows \
         over two months loaded into a fresh database at each:\n\n{}",
        bytes_table(&columns, ROWS as i64)
    ))
}

/// A new database `name` (ours: letters, digits, underscores) with the
/// migrations up to `version`.
async fn fresh_database(
    admin: &mut sqlx::PgConnection,
    base: &PgConnectOptions,
    name: &str,
    version: i64,
) -> Result<PgPool> {
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut *admin)
        .await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(base.clone().database(name))
        .await?;
    migrate_to(&pool, version).await?;
    Ok(pool)
}

/// The migrations up to `version`.
async fn migrate_to(pool: &PgPool, version: i64) -> Result<()> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.migrations = std::borrow::Cow::Owned(
        migrator
            .migrations
            .iter()
            .filter(|m| m.version <= version)
            .cloned()
            .collect(),
    );
    migrator.run(pool).await?;
    Ok(())
}

/// The batching writer into a one-table ledger (migrations up to 0017) and
/// into a partitioned one (all migrations), both fresh databases, the same
/// rows, alternating; and bytes per row of each at that size.
async fn writer_before_after(base: &PgConnectOptions, _loaded: &PgPool) -> Result<String> {
    const N: usize = 50_000;
    let mut admin = base.clone().database("postgres").connect().await?;
    let mut pools = Vec::new();
    for (suffix, upto) in [("flat", 17), ("months", i64::MAX)] {
        let name = format!("tollgate_bench_ledger_{suffix}_{}", std::process::id());
        let pool = fresh_database(&mut admin, base, &name, upto).await?;
        if upto == i64::MAX {
            months::create_range(
                &pool,
                Month::of(DateTime::from_timestamp(END, 0).unwrap_or_default()),
                Month::of(DateTime::from_timestamp(END + 3 * 86_400, 0).unwrap_or_default()),
            )
            .await?;
        }
        pools.push((suffix, name, pool));
    }
    let mut rates = [Vec::new(), Vec::new()];
    for round in 0..2 {
        for (i, (_, _, pool)) in pools.iter().enumerate() {
            let spool_dir = tempfile::tempdir()?;
            let (handle, writer) = spawn_writer(
                pool.clone(),
                Spool::open(spool_dir.path())?,
                Batching::immediate(1_000),
            );
            let rows = writer_rows(N, round == 1);
            let began = Instant::now();
            for row in rows {
                handle.record(row);
            }
            handle.flush().await;
            let took = began.elapsed();
            handle.close();
            writer.await?;
            rates[i].push(N as f64 / took.as_secs_f64());
        }
    }
    let mut line = String::new();
    for (i, (suffix, name, pool)) in pools.into_iter().enumerate() {
        let bytes: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
             WHERE c.relkind = 'r' AND c.relname LIKE 'usage_ledger%'",
        )
        .fetch_one(&pool)
        .await?;
        let _ = writeln!(
            line,
            "writer into {}: {N} rows in 1000-row batches, two rounds: {:.0} and {:.0} rows/s; {} bytes per row (table + indexes at {} rows)",
            if suffix == "flat" { "one table (migrations to 0017)" } else { "monthly partitions (0018)" },
            rates[i][0],
            rates[i][1],
            bytes / (2 * N as i64),
            2 * N
        );
        pool.close().await;
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
    }
    let _ = admin.close().await;
    Ok(line.trim_end().to_owned())
}

/// Archives, verifies and drops `month` while a writer inserts a row at a
/// time into the current month; reports the time and the longest write.
async fn archive_oldest(pool: &PgPool, month: Month) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pool, stop) = (pool.clone(), stop.clone());
        tokio::spawn(async move {
            let template = writer_rows(1_000, true);
            let (mut written, mut longest) = (0usize, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let mut row = template[written % template.len()].clone();
                row.request_id = format!("bench_archive_{written}");
                row.started_at = chrono::Utc::now();
                let began = Instant::now();
                tollgate::ledger::quarantine::insert_isolating(&pool, &[row]).await?;
                longest = longest.max(began.elapsed());
                written += 1;
            }
            Ok::<_, sqlx::Error>((written, longest))
        })
    };
    let began = Instant::now();
    let manifest = archive::archive_and_drop(pool, dir.path(), month).await?;
    let took = began.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (written, longest) = writer.await??;
    let bytes: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    sqlx::query("DELETE FROM usage_ledger WHERE request_id LIKE 'bench_archive_%'")
        .execute(pool)
        .await?;
    Ok(format!(
        "archive + verify + drop of {month} ({} rows): {:.1} s, {} Parquet file(s) of {:.1} MB in all \
         ({:.1} bytes per row); meanwhile a writer stored {written} rows one per statement \
         ({:.0} rows/s), longest write {} ms",
        manifest.rows,
        took.as_secs_f64(),
        manifest.files.len(),
        bytes as f64 / 1e6,
        bytes as f64 / manifest.rows.max(1) as f64,
        written as f64 / took.as_secs_f64(),
        ms(longest)
    ))
}

/// `--sql-load`: the rows generated by PostgreSQL itself (`INSERT … SELECT
/// FROM generate_series`, 250 000 rows a statement, so the rollup triggers
/// run per statement as for a COPY), on `workers` connections. Ids as the
/// gateway and OpenAI make them: `req_` and 32 hex digits, the first 12 the
/// time in milliseconds (UUIDv7), `resp_` and 48 random hex digits. The same
/// shape as the COPY generator, drawn from a hash of the row number: tenant
/// t000 ~10% of the rows, 3 keys a tenant, 8 models (a favourite per key
/// 70%), tiers default 80% / flex 8% / priority 7% / none 5%, completed
/// 93%, end users null 40% else one of 20 000, 1% unpriced. With
/// `compact_behind`, closed months are compacted as the load passes them
/// (what the `ledger.months` job does to a live ledger). The Rust
/// generator is the bottleneck in a debug build; this is not.
pub(super) async fn load_sql(
    pool: &PgPool,
    keys: &[(String, Vec<String>)],
    rows: u64,
    start: i64,
    workers: usize,
    compact_behind: bool,
) -> Result<()> {
    const CHUNK: u64 = 250_000;
    let tenants: Vec<String> = keys.iter().map(|(t, _)| t.clone()).collect();
    let key_ids: Vec<String> = keys.iter().flat_map(|(_, k)| k.iter().cloned()).collect();
    let models: Vec<String> = super::MODELS.iter().map(|m| m.0.to_owned()).collect();
    let sql = "INSERT INTO usage_ledger (request_id, response_id, tenant_id, api_key_id, endpoint,
            model, upstream, upstream_model, stream, status, usage_source, input_tokens,
            cached_tokens, output_tokens, reasoning_tokens, total_tokens, service_tier, cost,
            unpriced_reason, currency, http_status, attempts, end_user, started_at,
            first_byte_at, finished_at)
        SELECT 'req_' || lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') || substr(md5(g::text), 1, 20),
            'resp_' || md5(g::text || 'r') || substr(md5(g::text || 's'), 1, 16),
            ($3::text[])[1 + kn / 3], ($4::text[])[1 + kn],
            'responses.create', ($5::text[])[1 + mi], 'default', substr(($5::text[])[1 + mi], 8),
            g % 2 = 0,
            CASE WHEN h % 100 < 93 THEN 'completed'
                 ELSE (ARRAY['incomplete','failed','cancelled','upstream_error','rejected','interrupted'])[1 + h % 6] END,
            'reported', inp, inp / 5, outp, CASE WHEN mi % 2 = 0 THEN outp / 2 ELSE 0 END, inp + outp,
            CASE WHEN h2 % 100 < 80 THEN 'default' WHEN h2 % 100 < 88 THEN 'flex'
                 WHEN h2 % 100 < 95 THEN 'priority' END,
            CASE WHEN h3 % 100 = 0 THEN NULL
                 ELSE round((inp * 0.0000025 + outp * 0.000015) * (1 + mi) / 4, 16) END,
            CASE WHEN h3 % 100 = 0 THEN 'no_price' END, 'usd', 200, 1,
            CASE WHEN h2 % 10 < 4 THEN NULL ELSE 'user_' || (h % 20000) END,
            t, t + interval '300 ms', t + interval '2 s'
        FROM generate_series($1::bigint, $2::bigint - 1) AS g,
        LATERAL (SELECT (g * 2654435761) % 1000003 AS h, (g * 40503) % 999983 AS h2,
                        (g * 69069) % 1000033 AS h3) AS hashes,
        LATERAL (SELECT CASE WHEN g % 10 = 0 THEN (h % 3)::int ELSE 3 + (h % 297)::int END AS kn) AS key,
        LATERAL (SELECT CASE WHEN h2 % 10 < 7 THEN kn % 8 ELSE (h3 % 8)::int END AS mi,
                        100 + h % 4000 AS inp, 20 + h2 % 1500 AS outp,
                        to_timestamp($6 + g::float8 * $7 / $8) AS t) AS shape";
    let span = (END - start) as f64;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let began = Instant::now();
    let mut tasks = Vec::new();
    let compactor = compact_behind.then(|| {
        let (pool, next) = (pool.clone(), next.clone());
        let time_of = move |row: u64| {
            DateTime::from_timestamp((start as f64 + row as f64 * span / rows as f64) as i64, 0)
                .unwrap_or_default()
        };
        let lag = CHUNK * workers.max(1) as u64;
        tokio::spawn(async move {
            // Rows before the last `workers` chunks handed out are stored
            // (a worker takes a chunk only once its previous one is done):
            // the load's "now", which the job's two days of grace trail.
            while next.load(Ordering::Relaxed) < rows {
                let frontier = time_of(next.load(Ordering::Relaxed).saturating_sub(lag));
                let (done, _) = tollgate::ledger::indexes::compact_next(&pool, frontier).await?;
                if done.is_none() {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
            Ok::<_, sqlx::Error>(())
        })
    });
    for _ in 0..workers.max(1) {
        let (pool, next) = (pool.clone(), next.clone());
        let (tenants, key_ids, models) = (tenants.clone(), key_ids.clone(), models.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let lo = next.fetch_add(CHUNK, Ordering::Relaxed);
                if lo >= rows {
                    return Ok::<_, sqlx::Error>(());
                }
                let hi = (lo + CHUNK).min(rows);
                sqlx::query(sql)
                    .bind(lo as i64)
                    .bind(hi as i64)
                    .bind(&tenants)
                    .bind(&key_ids)
                    .bind(&models)
                    .bind(start as f64)
                    .bind(span)
                    .bind(rows as f64)
                    .execute(&pool)
                    .await?;
                eprint!(
                    "\rloaded up to row {hi} of {rows} ({:.0} s)",
                    began.elapsed().as_secs_f64()
                );
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    if let Some(compactor) = compactor {
        compactor.await??;
    }
    eprintln!();
    Ok(())
}
