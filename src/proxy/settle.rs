//! A background response is billed before it can be deleted: `DELETE
//! /v1/responses/{id}` of a response whose row is still `queued` first learns
//! its final state from the upstream (retrieve; cancel if it is still
//! running) and settles the row through `background::settle_response`, then lets the
//! delete go ahead. If the final state cannot be learnt, the delete is
//! refused (503, retryable) rather than let the bill escape.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};

use crate::background;
use crate::error::ApiError;
use crate::proxy::upstream::{encode_path_segment, Upstream};
use crate::state::AppState;
use crate::usage::ResponseSummary;

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A response object is small; a larger cancel answer is not read.
const CANCEL_BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Settles `id`'s queued row, if it has one, before it is deleted.
pub async fn before_delete(
    state: &AppState,
    upstream: &Upstream,
    id: &str,
) -> Result<(), ApiError> {
    // The create's row may still be on its way to the database.
    state.ledger.flush().await;
    if !background::is_queued(&state.pool, id).await? {
        return Ok(());
    }
    let unsettled = || {
        ApiError::service_unavailable(
            "The response's final usage could not be recorded yet; retry the delete.",
        )
    };
    let summary = match upstream.fetch_response(id, LOOKUP_TIMEOUT).await {
        Ok(Some(summary)) if is_final(&summary) => summary,
        // Still running: stop it, so its usage so far is final and billed.
        Ok(Some(_)) => cancel(upstream, id).await.ok_or_else(unsettled)?,
        // Already gone upstream: the reconciler records it as such.
        Ok(None) => return Ok(()),
        Err(()) => return Err(unsettled()),
    };
    if !is_final(&summary) {
        return Err(unsettled());
    }
    background::settle_response(state, id, summary).await?;
    Ok(())
}

fn is_final(summary: &ResponseSummary) -> bool {
    !matches!(
        summary.status.as_deref(),
        Some("queued" | "in_progress") | None
    )
}

async fn cancel(upstream: &Upstream, id: &str) -> Option<ResponseSummary> {
    let path = format!("/{}/cancel", encode_path_segment(id));
    let call = async {
        let response = upstream
            .send(http::Method::POST, &path, Bytes::new(), None)
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = Limited::new(response.into_body(), CANCEL_BODY_LIMIT)
            .collect()
            .await
            .ok()?
            .to_bytes();
        ResponseSummary::from_response_json(&body).ok()
    };
    tokio::time::timeout(LOOKUP_TIMEOUT, call)
        .await
        .ok()
        .flatten()
}
