//! `tollgate exports status|pause|resume|replay SINK --from T`: the same
//! operations as `/admin/exports`, straight on the database (so they work
//! with every gateway replica down). Output: one line per sink, or JSON.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::api::{statuses, SinkStatus};
use crate::config::exports::{ExportsConfig, SINKS};

fn known(sink: &str) -> anyhow::Result<&'static str> {
    SINKS
        .into_iter()
        .find(|s| *s == sink)
        .ok_or_else(|| anyhow::anyhow!("no sink `{sink}` (one of {})", SINKS.join(", ")))
}

/// One line per sink.
pub fn line(s: &SinkStatus) -> String {
    format!(
        "{:<10} {:<8} cursor {:<14} lag {} rows {:.1} s  sent {}  waiting_for_mapping {}  unpriced {}  refused {}  outside_window {}  changed_after_export {}{}",
        s.sink,
        if s.paused { "paused" } else if s.configured { "running" } else { "idle" },
        s.cursor.as_deref().unwrap_or("-"),
        s.lag_rows,
        s.lag_seconds,
        s.sent,
        s.waiting_for_mapping,
        s.unpriced,
        s.refused,
        s.outside_window,
        s.changed_after_export,
        s.last_error
            .as_deref()
            .map(|e| format!("  last error: {e}"))
            .unwrap_or_default(),
    )
}

pub async fn status(pool: &PgPool, config: &ExportsConfig, json: bool) -> anyhow::Result<String> {
    let data = statuses(pool, config).await?;
    if json {
        return Ok(serde_json::to_string_pretty(
            &serde_json::json!({"object": "list", "data": data}),
        )?);
    }
    if data.is_empty() {
        return Ok("no billing sink is configured or registered".into());
    }
    Ok(data.iter().map(line).collect::<Vec<_>>().join("\n"))
}

pub async fn set_paused(pool: &PgPool, sink: &str, paused: bool) -> anyhow::Result<String> {
    let sink = known(sink)?;
    crate::jobs::set_paused(pool, &super::job_name(sink), paused).await?;
    Ok(format!(
        "{sink}: {}",
        if paused {
            "paused on every replica"
        } else {
            "resumed"
        }
    ))
}

/// `from`: unix seconds or RFC 3339.
pub async fn replay(pool: &PgPool, sink: &str, from: &str) -> anyhow::Result<String> {
    let sink = known(sink)?;
    let from: DateTime<Utc> = crate::reports::params::parse_time("--from", from)
        .map_err(|_| anyhow::anyhow!("--from: `{from}` is not unix seconds or an RFC 3339 time"))?;
    let queued = super::outbox::replay(pool, sink, from).await?;
    Ok(format!(
        "{sink}: {queued} ledger rows from {} queued again (the sink deduplicates what it holds)",
        from.to_rfc3339()
    ))
}
