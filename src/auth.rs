//! Client keys: issuing, storing, revoking and checking them.
//!
//! A key reads `sk-tg-<public id>-<secret>`. Only `SHA-256(key)` is stored;
//! the public id is the lookup handle. A presented key's hash is compared with
//! the stored one in constant time. Verified keys are cached for a short time
//! so the request path makes no database round trip; when the database is
//! unreachable a key already known keeps working from the cache.
//!
//! Nothing here ever logs or returns a key after creation.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

const KEY_PREFIX: &str = "sk-tg-";
const PUBLIC_ID_LEN: usize = 12;
const SECRET_LEN: usize = 40;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
/// How long a verified key is trusted without asking the database again; a
/// revocation made on another replica takes effect within this window.
const CACHE_TTL: Duration = Duration::from_secs(10);

/// Who is calling: the tenant and the key it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: Arc<str>,
    pub key_id: Arc<str>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct KeyInfo {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A newly created key: the only moment the secret exists outside the client.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: KeyInfo,
    pub key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("tenant must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit")]
    BadTenant,
    #[error("name must be at most 200 characters")]
    BadName,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

pub fn valid_tenant(tenant: &str) -> bool {
    let bytes = tenant.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn random_string(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The public id of a well-formed key, without touching the secret part.
fn public_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('-')?;
    (id.len() == PUBLIC_ID_LEN && secret.len() == SECRET_LEN).then_some(id)
}

pub async fn create_key(pool: &PgPool, tenant: &str, name: &str) -> Result<CreatedKey, KeyError> {
    if !valid_tenant(tenant) {
        return Err(KeyError::BadTenant);
    }
    if name.chars().count() > 200 {
        return Err(KeyError::BadName);
    }
    let id = random_string(PUBLIC_ID_LEN).to_ascii_lowercase();
    let key = format!("{KEY_PREFIX}{id}-{}", random_string(SECRET_LEN));
    let hash = hash_key(&key);
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO tenants (id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    let info: KeyInfo = sqlx::query_as(
        "INSERT INTO api_keys (id, tenant_id, name, key_hash) VALUES ($1, $2, $3, $4)
         RETURNING id, tenant_id AS tenant, name, created_at, revoked_at",
    )
    .bind(&id)
    .bind(tenant)
    .bind(name)
    .bind(&hash[..])
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(CreatedKey { info, key })
}

pub async fn list_keys(pool: &PgPool, tenant: Option<&str>) -> Result<Vec<KeyInfo>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, tenant_id AS tenant, name, created_at, revoked_at FROM api_keys
         WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY created_at, id",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
}

/// Marks a key revoked; `None` when no such key exists. Revoking twice keeps
/// the first revocation time.
pub async fn revoke_key(pool: &PgPool, id: &str) -> Result<Option<KeyInfo>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1
         RETURNING id, tenant_id AS tenant, name, created_at, revoked_at",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

#[derive(Clone)]
struct CachedKey {
    hash: [u8; 32],
    principal: Option<Principal>,
    fetched: Instant,
}

/// Checks bearer keys against the database, through a short-lived cache.
pub struct Authenticator {
    pool: PgPool,
    cache: RwLock<HashMap<String, CachedKey>>,
}

impl Authenticator {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// `Authorization` header value → the caller, or 401.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        let key = authorization
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(ApiError::invalid_api_key)?;
        let id = public_id(key).ok_or_else(ApiError::invalid_api_key)?;
        let presented = hash_key(key);

        let cached = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        let entry = match cached {
            Some(entry) if entry.fetched.elapsed() < CACHE_TTL => entry,
            stale => match self.load(id).await {
                Ok(entry) => entry,
                // Database unreachable: a key we already verified keeps working.
                Err(err) => match stale {
                    Some(entry) => {
                        tracing::warn!(error = %err, "key lookup failed; using cached key");
                        entry
                    }
                    None => return Err(ApiError::from(err)),
                },
            },
        };
        if bool::from(entry.hash.ct_eq(&presented)) {
            entry.principal.ok_or_else(ApiError::invalid_api_key)
        } else {
            Err(ApiError::invalid_api_key())
        }
    }

    async fn load(&self, id: &str) -> Result<CachedKey, sqlx::Error> {
        let row: Option<(Vec<u8>, String, Option<DateTime<Utc>>)> =
            sqlx::query_as("SELECT key_hash, tenant_id, revoked_at FROM api_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let entry = match row {
            Some((hash, tenant, revoked_at)) => CachedKey {
                hash: hash.try_into().unwrap_or([0; 32]),
                principal: revoked_at.is_none().then(|| Principal {
                    tenant: tenant.into(),
                    key_id: id.into(),
                }),
                fetched: Instant::now(),
            },
            // Unknown ids are cached too, so guessing ids cannot hammer the database.
            None => CachedKey {
                hash: [0; 32],
                principal: None,
                fetched: Instant::now(),
            },
        };
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() > 100_000 {
            cache.retain(|_, e| e.fetched.elapsed() < CACHE_TTL);
        }
        cache.insert(id.to_owned(), entry.clone());
        Ok(entry)
    }

    /// Forget a key at once (after a revocation through this replica).
    pub fn forget(&self, id: &str) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// Constant-time comparison of the admin bearer token.
pub fn admin_token_matches(expected: &str, authorization: Option<&str>) -> bool {
    let Some(presented) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
        return false;
    };
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(presented.trim().as_bytes());
    bool::from(a.ct_eq(&b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn key_shape_is_checked_before_any_lookup() {
        let id = "abcdefghijkl";
        let key = format!("sk-tg-{id}-{}", "x".repeat(SECRET_LEN));
        assert_eq!(public_id(&key), Some(id));
        assert_eq!(public_id("sk-tg-short-secret"), None);
        assert_eq!(public_id("Bearer nothing"), None);
    }

    #[test]
    fn tenants_are_restricted_to_safe_names() {
        assert!(valid_tenant("acme"));
        assert!(valid_tenant("acme-prod_2.eu"));
        assert!(!valid_tenant(""));
        assert!(!valid_tenant("-acme"));
        assert!(!valid_tenant("acme corp"));
        assert!(!valid_tenant(&"a".repeat(65)));
    }

    #[test]
    fn admin_token_comparison() {
        assert!(admin_token_matches("s3cret", Some("Bearer s3cret")));
        assert!(!admin_token_matches("s3cret", Some("Bearer s3cre")));
        assert!(!admin_token_matches("s3cret", None));
    }
}
