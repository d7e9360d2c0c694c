//! Which provider usage is Tollgate's, and under which of its names.
//!
//! An OpenAI upstream's key is known to the provider as an `api_key_id` in
//! some project. Configured (`[reconcile.api_key_ids]`,
//! `[reconcile.project_ids]`) or discovered: [`discover`] lists the
//! organization's projects and their keys and takes the one key whose
//! redacted value can only be the upstream's secret (an ambiguous or absent
//! match maps nothing, and says so). The provider usage in scope is that of
//! these keys and of their projects (plus `extra_project_ids`): a project
//! that holds Tollgate's key is Tollgate's to account for, so another key
//! used there shows as `provider_only`.

use std::collections::{HashMap, HashSet};

use sqlx::PgPool;

use super::client::{FetchError, OrgClient};
use super::names::{redacted_matches, ModelNames};
use super::store;
use crate::config::{Config, UpstreamKind};

/// Tollgate's upstreams as the provider knows them.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    /// The OpenAI upstreams (the ledger side of the comparison).
    pub upstreams: Vec<String>,
    /// Provider `api_key_id` → upstream name.
    pub upstream_of_key: HashMap<String, String>,
    /// Upstream name → its key's project.
    pub project_of_upstream: HashMap<String, String>,
    /// Projects whose whole usage is in scope.
    pub projects: HashSet<String>,
    pub models: ModelNames,
}

impl Mapping {
    /// From the configuration and the keys discovered so far.
    pub async fn load(pool: &PgPool, config: &Config) -> Result<Self, sqlx::Error> {
        let discovered = store::discovered_keys(pool).await?;
        Ok(Self::build(config, &discovered))
    }

    pub fn build(config: &Config, discovered: &[(String, String, Option<String>)]) -> Self {
        let rc = &config.reconcile;
        let upstreams: Vec<String> = config
            .upstreams
            .iter()
            .filter(|u| u.kind == UpstreamKind::Openai)
            .map(|u| u.name.clone())
            .collect();
        let mut upstream_of_key = HashMap::new();
        let mut project_of_upstream = HashMap::new();
        for (upstream, key, project) in discovered {
            if upstreams.contains(upstream) && !rc.api_key_ids.contains_key(upstream) {
                upstream_of_key.insert(key.clone(), upstream.clone());
                if let Some(project) = project {
                    project_of_upstream.insert(upstream.clone(), project.clone());
                }
            }
        }
        for (upstream, key) in &rc.api_key_ids {
            upstream_of_key.insert(key.clone(), upstream.clone());
        }
        for (upstream, project) in &rc.project_ids {
            project_of_upstream.insert(upstream.clone(), project.clone());
        }
        let mut projects: HashSet<String> = project_of_upstream.values().cloned().collect();
        projects.extend(rc.extra_project_ids.iter().cloned());
        Self {
            upstreams,
            upstream_of_key,
            project_of_upstream,
            projects,
            models: ModelNames::new(model_aliases(config)),
        }
    }

    /// Whether provider usage of this key and project is Tollgate's.
    pub fn in_scope(&self, api_key_id: Option<&str>, project_id: Option<&str>) -> bool {
        api_key_id.is_some_and(|k| self.upstream_of_key.contains_key(k))
            || project_id.is_some_and(|p| self.projects.contains(p))
    }
}

/// `[reconcile.models]`, then each OpenAI deployment name that differs from
/// its public model.
fn model_aliases(config: &Config) -> HashMap<String, String> {
    let openai: HashSet<&str> = config
        .upstreams
        .iter()
        .filter(|u| u.kind == UpstreamKind::Openai)
        .map(|u| u.name.as_str())
        .collect();
    let mut aliases = HashMap::new();
    for route in &config.routes {
        for d in &route.deployments {
            if let Some(name) = &d.deployment {
                if openai.contains(d.upstream.as_str()) && name != &route.model {
                    aliases.insert(name.clone(), route.model.clone());
                }
            }
        }
    }
    aliases.extend(config.reconcile.models.clone());
    aliases
}

/// What discovery found, for people.
#[derive(Debug, Default)]
pub struct Discovery {
    pub found: Vec<(String, String)>,
    /// Upstreams whose key matched no key, or more than one.
    pub unmatched: Vec<(String, &'static str)>,
}

/// Finds the `api_key_id` of every OpenAI upstream without a configured one
/// and saves it. Runs the Projects API only when some upstream needs it.
pub async fn discover(
    pool: &PgPool,
    config: &Config,
    client: &OrgClient,
) -> Result<Discovery, DiscoverError> {
    let wanted: Vec<_> = config
        .upstreams
        .iter()
        .filter(|u| {
            u.kind == UpstreamKind::Openai && !config.reconcile.api_key_ids.contains_key(&u.name)
        })
        .collect();
    let mut report = Discovery::default();
    if wanted.is_empty() {
        return Ok(report);
    }
    let mut candidates: Vec<(String, String, String)> = Vec::new();
    for project in client.projects().await? {
        for key in client.project_keys(&project.id).await? {
            candidates.push((project.id.clone(), key.id, key.redacted_value));
        }
    }
    let mut tx = pool.begin().await?;
    for upstream in wanted {
        let matches: Vec<_> = candidates
            .iter()
            .filter(|(_, _, redacted)| redacted_matches(redacted, upstream.key.expose()))
            .collect();
        match matches.as_slice() {
            [(project, key, _)] => {
                store::save_discovered(&mut tx, &upstream.name, key, project).await?;
                report.found.push((upstream.name.clone(), key.clone()));
            }
            [] => report
                .unmatched
                .push((upstream.name.clone(), "no key matches")),
            _ => report
                .unmatched
                .push((upstream.name.clone(), "several keys match; configure it")),
        }
    }
    tx.commit().await?;
    Ok(report)
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("key discovery: {0}")]
    Fetch(#[from] FetchError),
    #[error("key discovery: database: {0}")]
    Database(#[from] sqlx::Error),
}
