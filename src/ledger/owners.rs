//! Who created a response id, and on which upstream.
//!
//! Every response a tenant creates through Tollgate ends up in its ledger row
//! (`response_id`, `tenant_id`, `upstream`), so the ledger is the record of
//! ownership. Rows reach the database a few milliseconds after the response
//! ends; the in-memory [`RecentResponses`] covers that gap so a follow-up sent
//! the moment a stream finishes still finds its owner.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use sqlx::PgPool;

/// The tenant and upstream that hold a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub tenant: String,
    pub upstream: Option<String>,
    /// What a follow-up carries over from it: its recorded input + output
    /// tokens (its whole context), `None` when its usage is not known
    /// (still running, cut, or not reported). Spend control bounds hidden
    /// input with it.
    pub context_tokens: Option<i64>,
}

impl Owner {
    /// The owner a stored or recorded row says, with its context when its
    /// usage is what the upstream reported (or recovered).
    pub fn of_row(
        tenant: String,
        upstream: Option<String>,
        status: &str,
        usage_source: &str,
        input_tokens: i64,
        output_tokens: i64,
    ) -> Self {
        let known = status != "queued" && matches!(usage_source, "reported" | "recovered");
        Self {
            tenant,
            upstream,
            context_tokens: known.then(|| input_tokens.saturating_add(output_tokens)),
        }
    }
}

/// Endpoints whose rows create a response another request may refer to.
pub const CREATING_ENDPOINTS: [&str; 2] = ["responses.create", "responses.compact"];

const REMEMBERED: usize = 100_000;

#[derive(Default)]
pub struct RecentResponses {
    inner: Mutex<(HashMap<String, Owner>, VecDeque<String>)>,
}

impl RecentResponses {
    pub fn remember(&self, response_id: &str, owner: Owner) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *guard;
        if map.insert(response_id.to_owned(), owner).is_none() {
            order.push_back(response_id.to_owned());
            if order.len() > REMEMBERED {
                if let Some(oldest) = order.pop_front() {
                    map.remove(&oldest);
                }
            }
        }
    }

    fn get(&self, response_id: &str) -> Option<Owner> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.0.get(response_id).cloned()
    }
}

/// The owner of `response_id`, from memory or the ledger.
pub async fn owner_of(
    recent: &RecentResponses,
    pool: &PgPool,
    response_id: &str,
) -> Result<Option<Owner>, sqlx::Error> {
    if let Some(owner) = recent.get(response_id) {
        return Ok(Some(owner));
    }
    let row: Option<(String, Option<String>, String, String, i64, i64)> = sqlx::query_as(
        "SELECT tenant_id, upstream, status, usage_source, input_tokens, output_tokens
         FROM usage_ledger
         WHERE response_id = $1 AND endpoint = ANY($2) ORDER BY started_at LIMIT 1",
    )
    .bind(response_id)
    .bind(&CREATING_ENDPOINTS[..])
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map(|(tenant, upstream, status, source, input, output)| {
            Owner::of_row(tenant, upstream, &status, &source, input, output)
        }),
    )
}
