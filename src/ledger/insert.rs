//! The ledger's one batch INSERT: every row of a batch in a single
//! `INSERT … SELECT FROM UNNEST(…)`, deduplicated by `ON CONFLICT DO
//! NOTHING` on the ledger's unique key — `(request_id, started_at)` on the
//! monthly partitioned table (a request's row is built once: a replay
//! carries the same id and time), `request_id` on a ledger not yet upgraded
//! (no conflict target is named, so the same statement serves both while a
//! replica upgrades the database) — then settled with spend control.
//!
//! Sits below the writer and the quarantine, which both call it; it never
//! decides what to do with a refused batch (that is [`super::quarantine`]).

use sqlx::PgPool;

use super::LedgerRow;

/// One statement for any batch size; `ON CONFLICT` makes replays harmless.
pub(crate) async fn insert_rows(pool: &PgPool, rows: &[LedgerRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    // Columns borrow from the rows: cloning every row's strings for the
    // binds was a dozen allocations per row.
    macro_rules! column {
        ($field:ident) => {
            rows.iter().map(|r| r.$field).collect::<Vec<_>>()
        };
    }
    macro_rules! text {
        ($field:ident) => {
            rows.iter()
                .map(|r| r.$field.as_str())
                .collect::<Vec<&str>>()
        };
    }
    macro_rules! optional_text {
        ($field:ident) => {
            rows.iter()
                .map(|r| r.$field.as_deref())
                .collect::<Vec<Option<&str>>>()
        };
    }
    sqlx::query(
        "INSERT INTO usage_ledger (request_id, response_id, tenant_id, api_key_id, endpoint, model,
            upstream, upstream_model, stream, status, usage_source, input_tokens, cached_tokens,
            output_tokens, reasoning_tokens, total_tokens, service_tier, price_id, cost,
            unpriced_reason, currency, http_status, error_code, attempts, fallback_from, end_user,
            client_disconnected, mcp_calls, started_at, first_byte_at, finished_at, anomaly,
            dropped_tools, client_request_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
            $6::text[], $7::text[], $8::text[], $9::bool[], $10::text[], $11::text[], $12::int8[],
            $13::int8[], $14::int8[], $15::int8[], $16::int8[], $17::text[], $18::int8[],
            $19::numeric[], $20::text[], $21::text[], $22::int4[], $23::text[], $24::int4[],
            $25::text[], $26::text[], $27::bool[], $28::int4[], $29::timestamptz[],
            $30::timestamptz[], $31::timestamptz[], $32::text[], $33::text[], $34::text[])
         ON CONFLICT DO NOTHING",
    )
    .bind(text!(request_id))
    .bind(optional_text!(response_id))
    .bind(text!(tenant))
    .bind(text!(api_key_id))
    .bind(text!(endpoint))
    .bind(optional_text!(model))
    .bind(optional_text!(upstream))
    .bind(optional_text!(upstream_model))
    .bind(column!(stream))
    .bind(text!(status))
    .bind(text!(usage_source))
    .bind(column!(input_tokens))
    .bind(column!(cached_tokens))
    .bind(column!(output_tokens))
    .bind(column!(reasoning_tokens))
    .bind(column!(total_tokens))
    .bind(optional_text!(service_tier))
    .bind(column!(price_id))
    .bind(column!(cost))
    .bind(optional_text!(unpriced_reason))
    .bind(text!(currency))
    .bind(column!(http_status))
    .bind(optional_text!(error_code))
    .bind(column!(attempts))
    .bind(optional_text!(fallback_from))
    .bind(optional_text!(end_user))
    .bind(column!(client_disconnected))
    .bind(column!(mcp_calls))
    .bind(column!(started_at))
    .bind(column!(first_byte_at))
    .bind(column!(finished_at))
    .bind(optional_text!(anomaly))
    .bind(optional_text!(dropped_tools))
    .bind(optional_text!(client_request_id))
    .execute(pool)
    .await?;
    // Only now is the rows' spend visible to admission: release what the
    // requests reserved (spend control; a no-op without limits).
    crate::limits::settle_stored(rows);
    Ok(())
}
