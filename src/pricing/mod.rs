//! Prices: the versioned table in PostgreSQL, the in-memory [`PriceBook`]
//! the request path reads, and the exact cost formula.
//!
//! Versions are only ever inserted. The price of a request is the version of
//! its model in force at the request's start, captured once as an
//! `Arc<PriceVersion>` so a change that lands mid-stream cannot touch it.
//! Money is `rust_decimal` end to end; no float ever carries a rate.
//!
//! Every insert announces itself on [`NOTIFY_CHANNEL`] in the same
//! transaction, so every replica's [`crate::notify`] listener reloads its book as
//! soon as the change is committed (and not before).

pub mod cost;
pub mod litellm;
pub mod reprice;
pub mod sheet;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

pub use sheet::{FieldError, PriceSheet};

/// The PostgreSQL channel price changes are announced on; the payload is the
/// model that changed (or `*` for an import), for logs only: listeners always
/// reload the whole table.
pub const NOTIFY_CHANNEL: &str = "tollgate_prices";

/// The four rates that have their own columns; every other rate lives in
/// `variant_rates`.
const BASE_FIELDS: [&str; 4] = [
    "input_cost_per_token",
    "cache_read_input_token_cost",
    "output_cost_per_token",
    "output_cost_per_reasoning_token",
];

/// One version of one model's price.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceVersion {
    pub id: i64,
    pub model: String,
    pub effective_from: DateTime<Utc>,
    /// `None` for a retirement: the model has no price from `effective_from` on.
    pub sheet: Option<PriceSheet>,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

impl PriceVersion {
    /// The JSON shape of the admin API: LiteLLM field names, decimal strings.
    pub fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        map.insert("id".into(), self.id.into());
        map.insert("model".into(), self.model.clone().into());
        map.insert(
            "effective_from".into(),
            self.effective_from.to_rfc3339().into(),
        );
        map.insert("retired".into(), self.sheet.is_none().into());
        if let Some(sheet) = &self.sheet {
            for (field, value) in sheet.to_fields() {
                map.insert(field.clone(), sheet::field_json(&field, value));
            }
        }
        map.insert("currency".into(), self.currency.clone().into());
        map.insert("created_at".into(), self.created_at.to_rfc3339().into());
        map.insert("created_by".into(), self.created_by.clone().into());
        serde_json::Value::Object(map)
    }
}

#[derive(sqlx::FromRow)]
struct PriceRow {
    id: i64,
    model: String,
    effective_from: DateTime<Utc>,
    retired: bool,
    input_cost_per_token: Option<Decimal>,
    cache_read_input_token_cost: Option<Decimal>,
    output_cost_per_token: Option<Decimal>,
    output_cost_per_reasoning_token: Option<Decimal>,
    variant_rates: sqlx::types::Json<BTreeMap<String, Decimal>>,
    currency: String,
    created_at: DateTime<Utc>,
    created_by: String,
}

impl PriceRow {
    fn into_version(self) -> Result<PriceVersion, FieldError> {
        let sheet = if self.retired {
            None
        } else {
            let mut fields = self.variant_rates.0;
            for (name, value) in BASE_FIELDS.iter().zip([
                self.input_cost_per_token,
                self.cache_read_input_token_cost,
                self.output_cost_per_token,
                self.output_cost_per_reasoning_token,
            ]) {
                if let Some(value) = value {
                    fields.insert((*name).to_owned(), value);
                }
            }
            Some(PriceSheet::from_fields(&fields, Some(&self.currency))?)
        };
        Ok(PriceVersion {
            id: self.id,
            model: self.model,
            effective_from: self.effective_from,
            sheet,
            currency: self.currency,
            created_at: self.created_at,
            created_by: self.created_by,
        })
    }
}

const SELECT_VERSIONS: &str = "SELECT id, model, effective_from, retired, input_cost_per_token, \
    cache_read_input_token_cost, output_cost_per_token, output_cost_per_reasoning_token, \
    variant_rates, currency, created_at, created_by FROM model_prices";

pub async fn load_versions(pool: &PgPool) -> Result<Vec<PriceVersion>, sqlx::Error> {
    let rows: Vec<PriceRow> = sqlx::query_as(&format!(
        "{SELECT_VERSIONS} ORDER BY model, effective_from, id"
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let id = row.id;
            row.into_version()
                .map_err(|err| tracing::error!(price_id = id, error = %err, "unusable price row skipped"))
                .ok()
        })
        .collect())
}

pub async fn model_history(pool: &PgPool, model: &str) -> Result<Vec<PriceVersion>, sqlx::Error> {
    let rows: Vec<PriceRow> = sqlx::query_as(&format!(
        "{SELECT_VERSIONS} WHERE model = $1 ORDER BY effective_from, id"
    ))
    .bind(model)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| row.into_version().ok())
        .collect())
}

/// Inserts a new version (`sheet: None` retires the model) and announces it
/// on [`NOTIFY_CHANNEL`]; both commit together, so no replica hears of a
/// version it cannot read yet, and none misses one that committed.
pub async fn insert_version(
    pool: &PgPool,
    model: &str,
    sheet: Option<&PriceSheet>,
    effective_from: DateTime<Utc>,
    created_by: &str,
) -> Result<PriceVersion, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let version = insert_version_in(&mut tx, model, sheet, effective_from, created_by).await?;
    announce(&mut tx, model).await?;
    tx.commit().await?;
    Ok(version)
}

async fn insert_version_in(
    conn: &mut PgConnection,
    model: &str,
    sheet: Option<&PriceSheet>,
    effective_from: DateTime<Utc>,
    created_by: &str,
) -> Result<PriceVersion, sqlx::Error> {
    let mut fields = sheet.map(PriceSheet::to_fields).unwrap_or_default();
    let base: Vec<Option<Decimal>> = BASE_FIELDS.iter().map(|f| fields.remove(*f)).collect();
    let currency = sheet.map_or("usd", |s| s.currency());
    let row: PriceRow = sqlx::query_as(
        "INSERT INTO model_prices (model, effective_from, retired, input_cost_per_token,
            cache_read_input_token_cost, output_cost_per_token, output_cost_per_reasoning_token,
            variant_rates, currency, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         RETURNING id, model, effective_from, retired, input_cost_per_token,
            cache_read_input_token_cost, output_cost_per_token, output_cost_per_reasoning_token,
            variant_rates, currency, created_at, created_by",
    )
    .bind(model)
    .bind(effective_from)
    .bind(sheet.is_none())
    .bind(base[0])
    .bind(base[1])
    .bind(base[2])
    .bind(base[3])
    .bind(sqlx::types::Json(&fields))
    .bind(currency)
    .bind(created_by)
    .fetch_one(&mut *conn)
    .await?;
    row.into_version()
        .map_err(|err| sqlx::Error::Decode(Box::new(err)))
}

/// `pg_notify` inside the caller's transaction: PostgreSQL delivers it at
/// commit and drops it on rollback.
async fn announce(conn: &mut PgConnection, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(NOTIFY_CHANNEL)
        .bind(payload)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Imports sheets, skipping models whose version in force now is identical,
/// so importing the same file twice creates no new versions. All versions
/// go in one transaction (a file is imported whole or not at all) with one
/// announcement. Returns the models that got a new version.
pub async fn import_sheets(
    pool: &PgPool,
    sheets: &[litellm::ImportedModel],
    created_by: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let book = PriceBook::from_versions(load_versions(pool).await?);
    let now = Utc::now();
    let mut changed = Vec::new();
    let mut tx = pool.begin().await?;
    for litellm::ImportedModel { model, sheet, .. } in sheets {
        let unchanged = book
            .lookup(model, now)
            .and_then(|v| v.sheet.as_ref().map(|s| s == sheet))
            .unwrap_or(false);
        if !unchanged {
            insert_version_in(&mut tx, model, Some(sheet), now, created_by).await?;
            changed.push(model.clone());
        }
    }
    if !changed.is_empty() {
        announce(&mut tx, "*").await?;
    }
    tx.commit().await?;
    Ok(changed)
}

/// Every model's versions, oldest first; swapped whole on reload.
#[derive(Debug, Default)]
pub struct PriceTable {
    by_model: HashMap<String, Vec<Arc<PriceVersion>>>,
}

impl PriceTable {
    pub fn from_versions(versions: Vec<PriceVersion>) -> Self {
        let mut by_model: HashMap<String, Vec<Arc<PriceVersion>>> = HashMap::new();
        for version in versions {
            by_model
                .entry(version.model.clone())
                .or_default()
                .push(Arc::new(version));
        }
        for versions in by_model.values_mut() {
            versions.sort_by_key(|v| (v.effective_from, v.id));
        }
        Self { by_model }
    }

    /// The version in force for `model` at `at`; `None` when there is none or
    /// the one in force is a retirement.
    pub fn lookup(&self, model: &str, at: DateTime<Utc>) -> Option<Arc<PriceVersion>> {
        let version = self.in_force(model, at)?;
        version.sheet.is_some().then(|| version.clone())
    }

    /// The version in force for `model` at `at`, retirements included. Of
    /// versions with the same `effective_from` the newest (highest id) wins,
    /// so an admin can correct a version by backdating a new one to its time.
    pub fn in_force(&self, model: &str, at: DateTime<Utc>) -> Option<&Arc<PriceVersion>> {
        let versions = self.by_model.get(model)?;
        let in_force = versions.partition_point(|v| v.effective_from <= at);
        versions.get(in_force.checked_sub(1)?)
    }

    /// Whether `model` has a version that takes effect after `at`.
    pub fn has_version_after(&self, model: &str, at: DateTime<Utc>) -> bool {
        self.by_model
            .get(model)
            .and_then(|versions| versions.last())
            .is_some_and(|last| last.effective_from > at)
    }

    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.by_model.keys().map(String::as_str)
    }
}

/// The request path's view of prices: a lock-free snapshot, reloaded whole.
pub struct PriceBook {
    table: ArcSwap<PriceTable>,
    /// Serialises reloads (the request path never takes it). Without it a
    /// slow reload that read the table before a change could store its stale
    /// snapshot after a faster one that read it after, undoing the change
    /// until the next reload.
    reloading: tokio::sync::Mutex<()>,
}

impl PriceBook {
    pub fn from_versions(versions: Vec<PriceVersion>) -> Self {
        Self {
            table: ArcSwap::from_pointee(PriceTable::from_versions(versions)),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    pub async fn load(pool: &PgPool) -> Result<Self, sqlx::Error> {
        Ok(Self::from_versions(load_versions(pool).await?))
    }

    pub async fn reload(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let _one_at_a_time = self.reloading.lock().await;
        let versions = load_versions(pool).await?;
        self.table
            .store(Arc::new(PriceTable::from_versions(versions)));
        Ok(())
    }

    pub fn lookup(&self, model: &str, at: DateTime<Utc>) -> Option<Arc<PriceVersion>> {
        self.table.load().lookup(model, at)
    }

    pub fn snapshot(&self) -> Arc<PriceTable> {
        self.table.load_full()
    }
}

/// What `GET /admin/prices` lists: the version in force now, per model.
#[derive(Debug, Serialize)]
pub struct CurrentPrices {
    pub object: &'static str,
    pub data: Vec<serde_json::Value>,
}

pub fn current_prices(table: &PriceTable, now: DateTime<Utc>) -> CurrentPrices {
    let mut models: Vec<&str> = table.models().collect();
    models.sort_unstable();
    CurrentPrices {
        object: "list",
        data: models
            .into_iter()
            .filter_map(|m| table.lookup(m, now))
            .map(|v| v.to_json())
            .collect(),
    }
}
