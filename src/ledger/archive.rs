//! Archived ledger months: one month's partition written to Parquet (zstd),
//! read back and verified, and only then detached and dropped; and the way
//! back (`restore`), which re-creates the partition from the archive and
//! attaches it again, row for row.
//!
//! An archive is a directory `<archive_dir>/usage_ledger/month=YYYY-MM/`
//! (Hive-style, so DuckDB, ClickHouse or pyarrow read the whole ledger as
//! one dataset) holding `part-NNNNN.parquet` files and `manifest.json`: the
//! row count, the exact cost sum per currency (decimal strings), the unpriced
//! rows, and each file's rows, bytes and SHA-256. Every column of the table
//! is kept under its own name; `cost` is `decimal(38, 16)` (exact, never a
//! float), times are microsecond UTC timestamps.
//!
//! A month of the legacy partition of an upgraded ledger is archived the
//! same way but stays `pending` (its rows served) until every legacy month
//! is; the last one's archive re-checks them all and drops the table.
//!
//! Owns the files and the `ledger_archives` table. Never deletes ledger
//! rows (a month leaves by `DETACH` + `DROP`), never touches the rollups
//! (kept forever: reports of archived months come from them), and never
//! drops a month whose archive does not match it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, Decimal128Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::months::Month;

/// Rows per Arrow batch (and per INSERT on restore).
const BATCH_ROWS: usize = 65_536;
/// Rows per Parquet file: a month of 8M rows is a handful of files.
const FILE_ROWS: usize = 2_097_152;
/// `cost` in the archive: `numeric(28, 16)` fits with room to spare.
const COST_PRECISION: u8 = 38;
const COST_SCALE: i8 = 16;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("archive file: {0}")]
    Io(#[from] std::io::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("manifest: {0}")]
    Manifest(#[from] serde_json::Error),
    #[error("{0}")]
    Refused(String),
    /// The archive and the database (or the manifest) disagree.
    #[error("verification failed for {month}: {detail}")]
    Mismatch { month: Month, detail: String },
}

fn refused(reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Refused(reason.into())
}

/// How a column is stored in PostgreSQL and in Parquet.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    I64,
    I32,
    Bool,
    Text,
    Cost,
    Time,
}

/// Every column of `usage_ledger`, in the table's order, with its kind and
/// whether it may be null.
const COLUMNS: &[(&str, Kind, bool)] = &[
    ("id", Kind::I64, false),
    ("request_id", Kind::Text, false),
    ("response_id", Kind::Text, true),
    ("tenant_id", Kind::Text, false),
    ("api_key_id", Kind::Text, false),
    ("endpoint", Kind::Text, false),
    ("model", Kind::Text, true),
    ("upstream", Kind::Text, true),
    ("upstream_model", Kind::Text, true),
    ("stream", Kind::Bool, false),
    ("status", Kind::Text, false),
    ("usage_source", Kind::Text, false),
    ("input_tokens", Kind::I64, false),
    ("cached_tokens", Kind::I64, false),
    ("output_tokens", Kind::I64, false),
    ("reasoning_tokens", Kind::I64, false),
    ("total_tokens", Kind::I64, false),
    ("service_tier", Kind::Text, true),
    ("price_id", Kind::I64, true),
    ("cost", Kind::Cost, true),
    ("unpriced_reason", Kind::Text, true),
    ("currency", Kind::Text, false),
    ("http_status", Kind::I32, true),
    ("error_code", Kind::Text, true),
    ("attempts", Kind::I32, false),
    ("fallback_from", Kind::Text, true),
    ("end_user", Kind::Text, true),
    ("client_disconnected", Kind::Bool, false),
    ("mcp_calls", Kind::I32, false),
    ("started_at", Kind::Time, false),
    ("first_byte_at", Kind::Time, true),
    ("finished_at", Kind::Time, false),
    ("recorded_at", Kind::Time, false),
    ("anomaly", Kind::Text, true),
    ("dropped_tools", Kind::Text, true),
    ("client_request_id", Kind::Text, true),
];

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(
        COLUMNS
            .iter()
            .map(|(name, kind, nullable)| {
                let data_type = match kind {
                    Kind::I64 => DataType::Int64,
                    Kind::I32 => DataType::Int32,
                    Kind::Bool => DataType::Boolean,
                    Kind::Text => DataType::Utf8,
                    Kind::Cost => DataType::Decimal128(COST_PRECISION, COST_SCALE),
                    Kind::Time => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                };
                Field::new(*name, data_type, *nullable)
            })
            .collect::<Vec<_>>(),
    ))
}

fn column_list() -> String {
    COLUMNS
        .iter()
        .map(|(name, _, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One column of a batch, as read from either side.
enum Values {
    I64(Vec<Option<i64>>),
    I32(Vec<Option<i32>>),
    Bool(Vec<Option<bool>>),
    Text(Vec<Option<String>>),
    Cost(Vec<Option<Decimal>>),
    Time(Vec<Option<DateTime<Utc>>>),
}

impl Values {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::I64 => Self::I64(Vec::new()),
            Kind::I32 => Self::I32(Vec::new()),
            Kind::Bool => Self::Bool(Vec::new()),
            Kind::Text => Self::Text(Vec::new()),
            Kind::Cost => Self::Cost(Vec::new()),
            Kind::Time => Self::Time(Vec::new()),
        }
    }

    fn push(&mut self, row: &PgRow, i: usize) -> Result<(), sqlx::Error> {
        match self {
            Self::I64(v) => v.push(row.try_get(i)?),
            Self::I32(v) => v.push(row.try_get(i)?),
            Self::Bool(v) => v.push(row.try_get(i)?),
            Self::Text(v) => v.push(row.try_get(i)?),
            Self::Cost(v) => v.push(row.try_get(i)?),
            Self::Time(v) => v.push(row.try_get(i)?),
        }
        Ok(())
    }

    fn into_arrow(self) -> Result<ArrayRef, ArchiveError> {
        Ok(match self {
            Self::I64(v) => Arc::new(Int64Array::from(v)),
            Self::I32(v) => Arc::new(Int32Array::from(v)),
            Self::Bool(v) => Arc::new(BooleanArray::from(v)),
            Self::Text(v) => Arc::new(StringArray::from(v)),
            Self::Cost(v) => {
                let mantissas = v
                    .into_iter()
                    .map(|d| d.map(to_mantissa).transpose())
                    .collect::<Result<Vec<_>, _>>()?;
                Arc::new(
                    Decimal128Array::from(mantissas)
                        .with_precision_and_scale(COST_PRECISION, COST_SCALE)?,
                )
            }
            Self::Time(v) => Arc::new(
                TimestampMicrosecondArray::from(
                    v.into_iter()
                        .map(|t| t.map(|t| t.timestamp_micros()))
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
        })
    }

    fn from_arrow(kind: Kind, array: &dyn Array) -> Result<Self, ArchiveError> {
        fn cast<T: 'static>(array: &dyn Array) -> Result<&T, ArchiveError> {
            array
                .as_any()
                .downcast_ref::<T>()
                .ok_or_else(|| refused("an archive column has an unexpected type"))
        }
        Ok(match kind {
            Kind::I64 => Self::I64(cast::<Int64Array>(array)?.iter().collect()),
            Kind::I32 => Self::I32(cast::<Int32Array>(array)?.iter().collect()),
            Kind::Bool => Self::Bool(cast::<BooleanArray>(array)?.iter().collect()),
            Kind::Text => Self::Text(
                cast::<StringArray>(array)?
                    .iter()
                    .map(|s| s.map(str::to_owned))
                    .collect(),
            ),
            Kind::Cost => Self::Cost(
                cast::<Decimal128Array>(array)?
                    .iter()
                    .map(|m| m.map(from_mantissa).transpose())
                    .collect::<Result<_, _>>()?,
            ),
            Kind::Time => Self::Time(
                cast::<TimestampMicrosecondArray>(array)?
                    .iter()
                    .map(|t| t.map(|t| DateTime::from_timestamp_micros(t).unwrap_or_default()))
                    .collect(),
            ),
        })
    }
}

fn to_mantissa(mut cost: Decimal) -> Result<i128, ArchiveError> {
    if cost.scale() > COST_SCALE as u32 {
        return Err(refused(format!("cost {cost} has more than 16 decimals")));
    }
    cost.rescale(COST_SCALE as u32);
    Ok(cost.mantissa())
}

fn from_mantissa(mantissa: i128) -> Result<Decimal, ArchiveError> {
    Decimal::try_from_i128_with_scale(mantissa, COST_SCALE as u32)
        .map_err(|e| refused(format!("cost out of range: {e}")))
}

/// What `manifest.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub month: String,
    pub table: String,
    pub rows: i64,
    /// Exact sum of `cost` per currency (priced rows), decimal strings.
    pub cost_sum: BTreeMap<String, String>,
    pub unpriced_rows: i64,
    pub compression: String,
    pub files: Vec<ArchiveFile>,
    pub columns: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchiveFile {
    pub path: String,
    pub rows: i64,
    pub bytes: u64,
    pub sha256: String,
}

/// Counts and sums, compared between the database and an archive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub rows: i64,
    pub unpriced_rows: i64,
    /// Exact sums, normalized (no trailing zeros).
    pub cost_sum: BTreeMap<String, Decimal>,
}

impl Totals {
    fn add(&mut self, currency: &str, cost: Option<Decimal>) {
        self.rows += 1;
        match cost {
            Some(cost) => *self.cost_sum.entry(currency.to_owned()).or_default() += cost,
            None => self.unpriced_rows += 1,
        }
    }

    fn normalized(mut self) -> Self {
        self.cost_sum = self
            .cost_sum
            .into_iter()
            .map(|(c, d)| (c, d.normalize()))
            .collect();
        self
    }

    fn of_manifest(manifest: &Manifest) -> Result<Self, ArchiveError> {
        let cost_sum = manifest
            .cost_sum
            .iter()
            .map(|(c, d)| {
                d.parse::<Decimal>()
                    .map(|d| (c.clone(), d.normalize()))
                    .map_err(|e| refused(format!("manifest cost_sum {c}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            rows: manifest.rows,
            unpriced_rows: manifest.unpriced_rows,
            cost_sum,
        })
    }
}

/// `<archive_dir>/usage_ledger/month=YYYY-MM`.
pub fn month_dir(archive_dir: &Path, month: Month) -> PathBuf {
    archive_dir
        .join("usage_ledger")
        .join(format!("month={month}"))
}

/// Writes `month`'s partition to its archive directory (replacing an
/// earlier, unfinished one) and returns the manifest. The partition stays.
pub async fn write(
    pool: &PgPool,
    archive_dir: &Path,
    month: Month,
) -> Result<Manifest, ArchiveError> {
    let Some(source) = rows_of(pool, month).await? else {
        return Err(refused(format!(
            "{month} has no partition ({})",
            month.partition()
        )));
    };
    let table = source.table.clone();
    let final_dir = month_dir(archive_dir, month);
    let work_dir = final_dir.with_extension("partial");
    if work_dir.exists() {
        std::fs::remove_dir_all(&work_dir)?;
    }
    std::fs::create_dir_all(&work_dir)?;
    let schema = schema();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_row_count(Some(BATCH_ROWS * 4))
        .build();
    let sql = format!(
        "SELECT {} FROM {} ORDER BY id",
        column_list(),
        source.from()
    );
    let mut stream = sqlx::query(&sql).fetch(pool);
    let mut totals = Totals::default();
    let mut files = Vec::new();
    let mut writer: Option<(ArrowWriter<File>, String, i64)> = None;
    let mut columns: Vec<Values> = COLUMNS.iter().map(|c| Values::new(c.1)).collect();
    let mut in_batch = 0;
    loop {
        let row = stream.try_next().await?;
        if let Some(row) = &row {
            for (i, column) in columns.iter_mut().enumerate() {
                column.push(row, i)?;
            }
            totals.add(row.try_get::<&str, _>("currency")?, row.try_get("cost")?);
            in_batch += 1;
        }
        if in_batch == BATCH_ROWS || (row.is_none() && in_batch > 0) {
            let full = std::mem::replace(
                &mut columns,
                COLUMNS.iter().map(|c| Values::new(c.1)).collect(),
            );
            let arrays = full
                .into_iter()
                .map(Values::into_arrow)
                .collect::<Result<Vec<_>, _>>()?;
            let batch = RecordBatch::try_new(schema.clone(), arrays)?;
            if writer.is_none() {
                let name = format!("part-{:05}.parquet", files.len());
                let file = File::create(work_dir.join(&name))?;
                writer = Some((
                    ArrowWriter::try_new(file, schema.clone(), Some(props.clone()))?,
                    name,
                    0,
                ));
            }
            if let Some((w, _, rows)) = writer.as_mut() {
                w.write(&batch)?;
                *rows += in_batch as i64;
            }
            in_batch = 0;
            if writer
                .as_ref()
                .is_some_and(|(_, _, rows)| *rows as usize >= FILE_ROWS)
            {
                if let Some(done) = writer.take() {
                    files.push(finish_file(&work_dir, done)?);
                }
            }
        }
        if row.is_none() {
            break;
        }
    }
    if let Some(done) = writer.take() {
        files.push(finish_file(&work_dir, done)?);
    }
    let totals = totals.normalized();
    let manifest = Manifest {
        format: "tollgate.ledger.archive/1".into(),
        month: month.to_string(),
        table,
        rows: totals.rows,
        cost_sum: totals
            .cost_sum
            .iter()
            .map(|(c, d)| (c.clone(), d.to_string()))
            .collect(),
        unpriced_rows: totals.unpriced_rows,
        compression: "zstd".into(),
        files,
        columns: COLUMNS.iter().map(|c| c.0.to_owned()).collect(),
        created_at: Utc::now(),
    };
    std::fs::write(
        work_dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    sync_dir(&work_dir)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    std::fs::rename(&work_dir, &final_dir)?;
    Ok(manifest)
}

fn finish_file(
    dir: &Path,
    (writer, name, rows): (ArrowWriter<File>, String, i64),
) -> Result<ArchiveFile, ArchiveError> {
    let file = writer.into_inner()?;
    file.sync_all()?;
    let path = dir.join(&name);
    let (sha256, bytes) = checksum(&path)?;
    Ok(ArchiveFile {
        path: name,
        rows,
        bytes,
        sha256,
    })
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn checksum(path: &Path) -> Result<(String, u64), ArchiveError> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        hasher.update(&buffer[..n]);
    }
    Ok((hex::encode(hasher.finalize()), bytes))
}

pub fn read_manifest(archive_dir: &Path, month: Month) -> Result<Manifest, ArchiveError> {
    let path = month_dir(archive_dir, month).join("manifest.json");
    let text = std::fs::read(&path)
        .map_err(|e| refused(format!("no archive for {month} at {}: {e}", path.display())))?;
    Ok(serde_json::from_slice(&text)?)
}

/// Reads every file of the archive back (checksums first), calling `each`
/// with every batch's columns, and returns what the files hold.
fn read_back(
    archive_dir: &Path,
    month: Month,
    manifest: &Manifest,
    mut each: impl FnMut(Vec<Values>) -> Result<(), ArchiveError>,
) -> Result<Totals, ArchiveError> {
    let dir = month_dir(archive_dir, month);
    let mut totals = Totals::default();
    for file in &manifest.files {
        let path = dir.join(&file.path);
        let (sha256, bytes) = checksum(&path)?;
        if sha256 != file.sha256 || bytes != file.bytes {
            return Err(ArchiveError::Mismatch {
                month,
                detail: format!("{} does not match its checksum", file.path),
            });
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path)?)?
            .with_batch_size(BATCH_ROWS)
            .build()?;
        let mut rows = 0i64;
        for batch in reader {
            let batch = batch?;
            let values = COLUMNS
                .iter()
                .enumerate()
                .map(|(i, (_, kind, _))| Values::from_arrow(*kind, batch.column(i).as_ref()))
                .collect::<Result<Vec<_>, _>>()?;
            let (Values::Text(currency), Values::Cost(cost)) = (&values[21], &values[19]) else {
                return Err(refused("archive columns out of order"));
            };
            for (currency, cost) in currency.iter().zip(cost) {
                totals.add(currency.as_deref().unwrap_or(""), *cost);
            }
            rows += batch.num_rows() as i64;
            each(values)?;
        }
        if rows != file.rows {
            return Err(ArchiveError::Mismatch {
                month,
                detail: format!(
                    "{} holds {rows} rows, its manifest says {}",
                    file.path, file.rows
                ),
            });
        }
    }
    Ok(totals.normalized())
}

/// The month's counts and sums in the database: from its rows while they
/// are there (its partition, or its range of the legacy partition), else
/// from the daily rollup (kept forever).
pub async fn database_totals(pool: &PgPool, month: Month) -> Result<Totals, ArchiveError> {
    let rows: Vec<(String, i64, i64, Option<Decimal>)> =
        if let Some(source) = rows_of(pool, month).await? {
            sqlx::query_as(&format!(
                "SELECT currency, count(*), count(*) FILTER (WHERE cost IS NULL), sum(cost)
             FROM {} GROUP BY currency",
                source.from()
            ))
            .fetch_all(pool)
            .await?
        } else {
            sqlx::query_as(
                "SELECT currency, sum(requests)::bigint, sum(unpriced_requests)::bigint, sum(cost)
             FROM usage_rollup_daily_fleet WHERE bucket >= $1 AND bucket < $2 GROUP BY currency",
            )
            .bind(month.start())
            .bind(month.end())
            .fetch_all(pool)
            .await?
        };
    let mut totals = Totals::default();
    for (currency, count, unpriced, cost) in rows {
        totals.rows += count;
        totals.unpriced_rows += unpriced;
        if count > unpriced {
            *totals.cost_sum.entry(currency).or_default() += cost.unwrap_or_default();
        }
    }
    Ok(totals.normalized())
}

/// Reads the archive back and compares it with its manifest and with the
/// database (the partition, or the rollups once it is dropped).
pub async fn verify(
    pool: &PgPool,
    archive_dir: &Path,
    month: Month,
) -> Result<Manifest, ArchiveError> {
    let manifest = read_manifest(archive_dir, month)?;
    let dir = archive_dir.to_owned();
    let copy = manifest.clone();
    let read = tokio::task::spawn_blocking(move || read_back(&dir, month, &copy, |_| Ok(())))
        .await
        .map_err(|e| refused(format!("verification stopped: {e}")))??;
    let listed = Totals::of_manifest(&manifest)?;
    if read != listed {
        return Err(ArchiveError::Mismatch {
            month,
            detail: format!("files hold {read:?}, manifest says {listed:?}"),
        });
    }
    let database = database_totals(pool, month).await?;
    if database != listed {
        return Err(ArchiveError::Mismatch {
            month,
            detail: format!("database holds {database:?}, archive {listed:?}"),
        });
    }
    Ok(manifest)
}

async fn partition_exists(pool: &PgPool, month: Month) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(month.partition())
        .fetch_one(pool)
        .await
}

/// The legacy partition of an upgraded ledger: every row before its bound.
const LEGACY: &str = "usage_ledger_legacy";

/// Where a month's rows are in the database.
struct MonthRows {
    table: String,
    /// `[start, end)` of `table` (the legacy partition holds many months).
    range: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

impl MonthRows {
    /// `table`, or `table WHERE <range>`: what follows `FROM`.
    fn from(&self) -> String {
        match self.range {
            None => self.table.clone(),
            Some((start, end)) => format!(
                "{} WHERE started_at >= '{}' AND started_at < '{}'",
                self.table,
                start.to_rfc3339(),
                end.to_rfc3339()
            ),
        }
    }
}

/// `month`'s own partition, or its range of the legacy partition; `None`
/// once its rows have left the database.
async fn rows_of(pool: &PgPool, month: Month) -> Result<Option<MonthRows>, sqlx::Error> {
    if partition_exists(pool, month).await? {
        return Ok(Some(MonthRows {
            table: month.partition(),
            range: None,
        }));
    }
    Ok(match super::months::legacy_end(pool).await? {
        Some(end) if month.end() <= end => Some(MonthRows {
            table: LEGACY.to_owned(),
            range: Some((month.start(), month.end())),
        }),
        _ => None,
    })
}

/// Archives `month`, verifies the archive against the partition, then
/// detaches and drops the partition, re-checking under its lock that no row
/// changed since the archive was written. Only months before the current one.
pub async fn archive_and_drop(
    pool: &PgPool,
    archive_dir: &Path,
    month: Month,
) -> Result<Manifest, ArchiveError> {
    if month >= Month::of(Utc::now()) {
        return Err(refused(format!(
            "{month} is not over yet; only past months are archived"
        )));
    }
    let started = std::time::Instant::now();
    write(pool, archive_dir, month).await?;
    let manifest = verify(pool, archive_dir, month).await?;
    let location = month_dir(archive_dir, month).display().to_string();
    if !partition_exists(pool, month).await? {
        return archive_legacy_month(pool, month, manifest, &location).await;
    }
    // Waited for up to a minute while something else holds the month (a
    // compaction of its indexes, a long report).
    let mut tx = super::months::begin_locked(
        pool,
        &format!("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE", month.partition()),
        50,
    )
    .await?;
    let rows: (i64, Option<Decimal>) = sqlx::query_as(&format!(
        "SELECT count(*), sum(cost) FROM {}",
        month.partition()
    ))
    .fetch_one(&mut *tx)
    .await?;
    let listed = Totals::of_manifest(&manifest)?;
    let listed_cost: Decimal = listed.cost_sum.values().copied().sum();
    if rows.0 != listed.rows || rows.1.unwrap_or_default().normalize() != listed_cost.normalize() {
        return Err(ArchiveError::Mismatch {
            month,
            detail: "rows changed while the archive was written; run it again".into(),
        });
    }
    sqlx::query(&format!(
        "ALTER TABLE usage_ledger DETACH PARTITION {}",
        month.partition()
    ))
    .execute(&mut *tx)
    .await?;
    record(&mut tx, month, "archived", &location, &manifest).await?;
    tx.commit().await?;
    drop_detached(pool).await?;
    tracing::info!(%month, rows = manifest.rows, secs = started.elapsed().as_secs_f64(),
        location, "ledger month archived, verified and dropped");
    Ok(manifest)
}

/// Drops the tables an archive detached: a month recorded `archived`
/// whose table is still there but no longer a partition, and a detached
/// legacy table. Their rows are in verified archives; they are dropped
/// after the transaction that detached them, because the files of a month
/// (gigabytes) are unlinked at commit while its locks are still held,
/// and `DETACH` locks the parent every writer inserts through (934 ms of
/// stalled writes for an 8.2M-row month measured when both were one
/// transaction). Run again by every archive and every `ledger.months`
/// step, so a drop interrupted by a crash is finished later.
pub async fn drop_detached(pool: &PgPool) -> Result<(), sqlx::Error> {
    let leftovers: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c
         WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace
           AND NOT c.relispartition
           AND (c.relname = 'usage_ledger_legacy'
                OR c.relname IN (SELECT 'usage_ledger_' || to_char(month, 'YYYY_MM')
                                 FROM ledger_archives WHERE state = 'archived'))",
    )
    .fetch_all(pool)
    .await?;
    for table in leftovers {
        sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
            .execute(pool)
            .await?;
        tracing::info!(%table, "detached ledger table dropped after its archive");
    }
    Ok(())
}

/// `month`'s archive in `ledger_archives`, in `state`.
async fn record(
    conn: &mut sqlx::PgConnection,
    month: Month,
    state: &str,
    location: &str,
    manifest: &Manifest,
) -> Result<(), ArchiveError> {
    sqlx::query(
        "INSERT INTO ledger_archives (month, state, location, manifest)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (month) DO UPDATE SET state = EXCLUDED.state, location = EXCLUDED.location,
             manifest = EXCLUDED.manifest, archived_at = clock_timestamp(), restored_at = NULL",
    )
    .bind(month.first_day())
    .bind(state)
    .bind(location)
    .bind(serde_json::to_value(manifest)?)
    .execute(conn)
    .await?;
    Ok(())
}

/// A month of the legacy partition, archived and verified: recorded
/// `pending` (its rows stay, served as before); once every month the legacy
/// partition holds rows of is pending, the whole table is re-checked
/// against their manifests under its lock, detached and dropped, and the
/// months become `archived` in the same transaction. A month whose rows
/// changed since its archive loses its pending record (archived again on
/// the next step).
async fn archive_legacy_month(
    pool: &PgPool,
    month: Month,
    manifest: Manifest,
    location: &str,
) -> Result<Manifest, ArchiveError> {
    let mut conn = pool.acquire().await?;
    record(&mut conn, month, "pending", location, &manifest).await?;
    drop(conn);
    let held = super::months::legacy_months(pool).await?;
    let pending: Vec<(chrono::NaiveDate, serde_json::Value)> =
        sqlx::query_as("SELECT month, manifest FROM ledger_archives WHERE state = 'pending'")
            .fetch_all(pool)
            .await?;
    if !held
        .iter()
        .all(|m| pending.iter().any(|(day, _)| *day == m.first_day()))
    {
        tracing::info!(%month, rows = manifest.rows, "legacy ledger month archived; its rows stay until every legacy month is");
        return Ok(manifest);
    }
    let mut tx = super::months::begin_locked(
        pool,
        &format!("LOCK TABLE {LEGACY} IN ACCESS EXCLUSIVE MODE"),
        50,
    )
    .await?;
    let in_table: Vec<(chrono::NaiveDate, String, i64, i64, Option<Decimal>)> =
        sqlx::query_as(&format!(
            "SELECT date_trunc('month', started_at AT TIME ZONE 'UTC')::date, currency,
                    count(*), count(*) FILTER (WHERE cost IS NULL), sum(cost)
             FROM {LEGACY} GROUP BY 1, 2"
        ))
        .fetch_all(&mut *tx)
        .await?;
    let mut changed = Vec::new();
    for (day, listed) in &pending {
        let listed: Manifest = serde_json::from_value(listed.clone())?;
        let mut totals = Totals::default();
        for (_, currency, count, unpriced, cost) in in_table.iter().filter(|r| r.0 == *day) {
            totals.rows += count;
            totals.unpriced_rows += unpriced;
            if count > unpriced {
                *totals.cost_sum.entry(currency.clone()).or_default() += cost.unwrap_or_default();
            }
        }
        if totals.normalized() != Totals::of_manifest(&listed)? {
            changed.push(*day);
        }
    }
    let unlisted = in_table
        .iter()
        .any(|r| !pending.iter().any(|(day, _)| *day == r.0));
    if !changed.is_empty() || unlisted {
        drop(tx);
        sqlx::query("DELETE FROM ledger_archives WHERE state = 'pending' AND month = ANY($1)")
            .bind(&changed)
            .execute(pool)
            .await?;
        return Err(ArchiveError::Mismatch {
            month,
            detail: format!(
                "legacy rows changed since their archive (months {changed:?}{}); they are archived again",
                if unlisted { ", and rows of a month with no archive" } else { "" }
            ),
        });
    }
    sqlx::query(&format!(
        "ALTER TABLE usage_ledger DETACH PARTITION {LEGACY}"
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE ledger_archives SET state = 'archived', archived_at = clock_timestamp()
         WHERE state = 'pending'",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    drop_detached(pool).await?;
    tracing::info!(
        months = pending.len(),
        "legacy ledger partition archived, verified and dropped"
    );
    Ok(manifest)
}

/// Re-creates `month`'s partition from its archive (every column as it was,
/// ids included) and attaches it again. The rollups already count these
/// rows (they were never taken out), so the rows are loaded into the table
/// before it is attached: the parent's triggers do not run for them.
pub async fn restore(
    pool: &PgPool,
    archive_dir: &Path,
    month: Month,
) -> Result<Manifest, ArchiveError> {
    // A table left by an interrupted archive or restore is not the month.
    drop_detached(pool).await?;
    if rows_of(pool, month).await?.is_some() {
        return Err(refused(format!("{month} is in the database already")));
    }
    let manifest = read_manifest(archive_dir, month)?;
    let table = month.partition();
    sqlx::query(&format!(
        "CREATE TABLE {table} (LIKE usage_ledger INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    ))
    .execute(pool)
    .await?;
    let loaded = load(pool, archive_dir, month, &manifest).await;
    if let Err(err) = loaded {
        let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
            .execute(pool)
            .await;
        return Err(err);
    }
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE usage_ledger IN SHARE UPDATE EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    sqlx::query("LOCK TABLE usage_ledger_default IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    // Rows of the month that arrived after it was dropped waited here.
    let range = "started_at >= $1 AND started_at < $2";
    sqlx::query(&format!(
        "INSERT INTO {table} SELECT * FROM usage_ledger_default WHERE {range}"
    ))
    .bind(month.start())
    .bind(month.end())
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!("DELETE FROM usage_ledger_default WHERE {range}"))
        .bind(month.start())
        .bind(month.end())
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "ALTER TABLE usage_ledger ATTACH PARTITION {table} FOR VALUES FROM ('{}') TO ('{}')",
        month.start().to_rfc3339(),
        month.end().to_rfc3339()
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE ledger_archives SET state = 'restored', restored_at = clock_timestamp()
         WHERE month = $1",
    )
    .bind(month.first_day())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(%month, rows = manifest.rows, "ledger month restored from its archive");
    Ok(manifest)
}

/// Reads the archive (verifying checksums and totals) into `month`'s
/// not-yet-attached table.
async fn load(
    pool: &PgPool,
    archive_dir: &Path,
    month: Month,
    manifest: &Manifest,
) -> Result<(), ArchiveError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Values>>(2);
    let dir = archive_dir.to_owned();
    let copy = manifest.clone();
    let reader = tokio::task::spawn_blocking(move || {
        read_back(&dir, month, &copy, |values| {
            tx.blocking_send(values)
                .map_err(|_| refused("restore stopped"))
        })
    });
    let sql = insert_sql(&month.partition());
    while let Some(values) = rx.recv().await {
        let mut query = sqlx::query(&sql);
        for column in values {
            query = match column {
                Values::I64(v) => query.bind(v),
                Values::I32(v) => query.bind(v),
                Values::Bool(v) => query.bind(v),
                Values::Text(v) => query.bind(v),
                Values::Cost(v) => query.bind(v),
                Values::Time(v) => query.bind(v),
            };
        }
        query.execute(pool).await?;
    }
    let read = reader
        .await
        .map_err(|e| refused(format!("restore stopped: {e}")))??;
    if read != Totals::of_manifest(manifest)? {
        return Err(ArchiveError::Mismatch {
            month,
            detail: format!("files hold {read:?}, the manifest disagrees"),
        });
    }
    Ok(())
}

fn insert_sql(table: &str) -> String {
    let arrays = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (_, kind, _))| {
            let ty = match kind {
                Kind::I64 => "int8",
                Kind::I32 => "int4",
                Kind::Bool => "bool",
                Kind::Text => "text",
                Kind::Cost => "numeric",
                Kind::Time => "timestamptz",
            };
            format!("${}::{ty}[]", i + 1)
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {table} ({}) SELECT * FROM UNNEST({arrays})",
        column_list()
    )
}

/// The archived month `[from, to)` reaches into, if any: records and CSV
/// answer `ledger_archived` for it instead of a short page.
pub async fn archived_in(
    pool: &PgPool,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<Option<(Month, String)>, sqlx::Error> {
    let found: Option<(chrono::NaiveDate, String)> = sqlx::query_as(
        "SELECT month, location FROM ledger_archives
         WHERE state = 'archived'
           AND ($1::timestamptz IS NULL OR (month + interval '1 month')::timestamp AT TIME ZONE 'UTC' > $1)
           AND ($2::timestamptz IS NULL OR month::timestamp AT TIME ZONE 'UTC' < $2)
         ORDER BY month DESC LIMIT 1",
    )
    .bind(from)
    .bind(to)
    .fetch_optional(pool)
    .await?;
    Ok(found.and_then(|(day, location)| Month::from_first_day(day).map(|m| (m, location))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn costs_keep_every_digit_through_decimal128() {
        for text in [
            "0.0000000000000001",
            "123456789012.3456789012345678",
            "-5",
            "0",
        ] {
            let cost: Decimal = text.parse().expect("decimal");
            let back = from_mantissa(to_mantissa(cost).expect("fits")).expect("back");
            assert_eq!(back.normalize(), cost.normalize(), "{text}");
        }
        assert!(to_mantissa("0.00000000000000001".parse().expect("decimal")).is_err());
    }

    #[test]
    fn the_columns_match_the_insert() {
        let sql = insert_sql("usage_ledger_2026_11");
        assert!(sql.contains("$36::text[]"));
        assert_eq!(COLUMNS[19].0, "cost");
        assert_eq!(COLUMNS[21].0, "currency");
    }
}
