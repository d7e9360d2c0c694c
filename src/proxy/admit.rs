//! The checks on a body that need the tenant or the database: the
//! per-tenant MCP allowlist and the ownership of the ids it refers to
//! (`previous_response_id`, `conversation`). Run on the facts
//! `proxy::validate` extracted, for the request and for every fallback
//! candidate alike, before anything is sent.
//!
//! Another tenant's id answers exactly like an unknown one (CONTRACT §3).

use crate::error::ApiError;
use crate::ledger::owners::{owner_of, Owner};
use crate::limits::estimate::Carried;
use crate::proxy::validate::BodyFacts;
use crate::state::AppState;

/// What admission decides for one body: the upstream its state lives on,
/// and what the body carries over from it (spend control bounds it).
#[derive(Debug, Clone, Default)]
pub struct Admitted {
    /// A follow-up goes where its previous response is.
    pub pinned: Option<String>,
    pub carried: Carried,
}

/// Admits `facts` for `tenant`. `prefix` names the fallback whose body this
/// is (`turing_options.fallbacks[0]`), empty for the request itself.
pub async fn admit(
    state: &AppState,
    tenant: &str,
    facts: &BodyFacts,
    prefix: &str,
) -> Result<Admitted, ApiError> {
    let param = |name: &str| {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        }
    };
    if let Some(allowed) = state.config.mcp_allowed_hosts.get(tenant) {
        if let Some(server) = facts.mcp_servers.iter().find(|s| {
            !allowed
                .iter()
                .any(|host| host.eq_ignore_ascii_case(&s.host))
        }) {
            return Err(ApiError::invalid_value(
                param(&format!("tools[{}].server_url", server.index)),
                format!(
                    "The MCP server host '{}' is not allowed for this key.",
                    server.host
                ),
            )
            .with_code("mcp_server_not_allowed"));
        }
    }
    if let Some(id) = &facts.conversation {
        match conversation_owner(state, id).await? {
            Some(owner) if owner.tenant == tenant => {}
            _ => {
                return Err(
                    ApiError::not_found(format!("Conversation with id '{id}' not found."))
                        .with_param(param("conversation")),
                )
            }
        }
    }
    let mut carried = match facts.conversation {
        Some(_) => Carried::Unknown("conversation"),
        None => Carried::Nothing,
    };
    let pinned = match &facts.previous_response_id {
        None => None,
        Some(previous) => match owner_of(state.ledger.recent(), &state.pool, previous).await? {
            Some(owner) if owner.tenant == tenant => {
                if carried == Carried::Nothing {
                    carried = owner
                        .context_tokens
                        .map_or(Carried::Unknown("previous_response_id"), Carried::Tokens);
                }
                owner.upstream
            }
            _ => {
                return Err(ApiError::not_found(format!(
                    "Previous response with id '{previous}' not found."
                ))
                .with_code("previous_response_not_found")
                .with_param(param("previous_response_id")))
            }
        },
    };
    Ok(Admitted { pinned, carried })
}

/// The tenant that created conversation `id` through Tollgate (the
/// conversations endpoints record it; `proxy::conversations`).
async fn conversation_owner(state: &AppState, id: &str) -> Result<Option<Owner>, ApiError> {
    Ok(super::conversations::conversation_owner(&state.pool, id).await?)
}
