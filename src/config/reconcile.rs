//! `[reconcile]`: where the provider's organization API is, the admin key
//! (`TOLLGATE_OPENAI_ADMIN_KEY`, never logged), how often and how far back
//! it is fetched, when a day counts as closed, the tolerances of the
//! comparison, and how provider names map to Tollgate's.

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde::Deserialize;

use super::{ConfigError, Env, Secret};
use crate::reconcile::report::{GroupBy, Settings, Tolerance};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// The organization API's base URL (`/organization/...` is appended).
    pub url: String,
    /// An OpenAI admin key; `env:NAME` allowed, `TOLLGATE_OPENAI_ADMIN_KEY`
    /// overrides. Empty: reconciliation is off.
    pub admin_key: Secret,
    /// The scheduled fetch's interval.
    pub every_secs: u64,
    /// Days (today included) every scheduled fetch covers: the provider
    /// revises recent days, so they are fetched again until they are older.
    pub refetch_days: u32,
    /// A day is `pending` until every source was fetched at least this long
    /// after the day's end (UTC midnight).
    pub settle_hours: u64,
    /// A line's cost matches when |ledger − provider| is at most the larger
    /// of `cost_tolerance` (USD) and `cost_tolerance_ratio` × the provider's
    /// cost. Tokens and requests must be equal.
    pub cost_tolerance: Decimal,
    pub cost_tolerance_ratio: Decimal,
    /// A closed day also needs the sum of its hourly buckets to equal its
    /// daily bucket (the provider finished aggregating it).
    pub require_hourly_agreement: bool,
    /// Upstream name → the provider's `api_key_id` of that upstream's key.
    /// Upstreams not listed are discovered through the Projects API.
    pub api_key_ids: HashMap<String, String>,
    /// Upstream name → the project its key belongs to (discovery fills it
    /// in for discovered keys).
    pub project_ids: HashMap<String, String>,
    /// More projects whose whole usage is Tollgate's to account for.
    pub extra_project_ids: Vec<String>,
    /// Provider model (without its date) → Tollgate model, for names the
    /// date rule and the routes do not map.
    pub models: HashMap<String, String>,
    /// Where drift alerts go (signed with `[alerts] signing_secret`).
    pub alert_webhook_url: Option<String>,
    /// The lines drift alerts are raised for (`model`, `upstream_key`,
    /// `project_id`, `service_tier`).
    pub alert_group_by: Vec<String>,
    /// Hourly buckets per Usage API page (1-168).
    pub hourly_page_buckets: u32,
    /// One HTTP request to the organization API at most.
    pub request_timeout_secs: u64,
    /// The largest page body read.
    pub max_page_bytes: usize,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            url: "https://api.openai.com/v1".into(),
            admin_key: Secret::default(),
            every_secs: 3_600,
            refetch_days: 3,
            settle_hours: 24,
            cost_tolerance: Decimal::new(1, 2),
            cost_tolerance_ratio: Decimal::new(1, 3),
            require_hourly_agreement: true,
            api_key_ids: HashMap::new(),
            project_ids: HashMap::new(),
            extra_project_ids: Vec::new(),
            models: HashMap::new(),
            alert_webhook_url: None,
            alert_group_by: vec!["model".into()],
            hourly_page_buckets: 24,
            request_timeout_secs: 60,
            max_page_bytes: 64 << 20,
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: format!("reconcile.{field}"),
        message: message.into(),
    }
}

impl ReconcileConfig {
    /// Reconciliation runs only with an admin key.
    pub fn enabled(&self) -> bool {
        !self.admin_key.is_empty()
    }

    /// `TOLLGATE_OPENAI_ADMIN_KEY` over the file, then `env:` references.
    pub fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        if let Some(key) = env.var("TOLLGATE_OPENAI_ADMIN_KEY") {
            self.admin_key = Secret::new(key);
        }
        self.admin_key = super::resolve_secret(&self.admin_key, "reconcile.admin_key", env)?;
        Ok(())
    }

    pub fn validate(&self, can_sign: bool) -> Result<(), ConfigError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(invalid(
                "url",
                format!("`{}` is not an http(s) URL", self.url),
            ));
        }
        if self.every_secs == 0 {
            return Err(invalid("every_secs", "must be at least 1"));
        }
        if !(1..=92).contains(&self.refetch_days) {
            return Err(invalid("refetch_days", "must be 1-92"));
        }
        if self.settle_hours >= u64::from(self.refetch_days) * 24 {
            return Err(invalid(
                "settle_hours",
                "must be less than refetch_days × 24, or no day would ever close",
            ));
        }
        if self.cost_tolerance.is_sign_negative() {
            return Err(invalid("cost_tolerance", "must not be negative"));
        }
        if self.cost_tolerance_ratio.is_sign_negative() || self.cost_tolerance_ratio > Decimal::ONE
        {
            return Err(invalid("cost_tolerance_ratio", "must be 0-1"));
        }
        if !(1..=168).contains(&self.hourly_page_buckets) {
            return Err(invalid("hourly_page_buckets", "must be 1-168"));
        }
        if !(1..=600).contains(&self.request_timeout_secs) {
            return Err(invalid("request_timeout_secs", "must be 1-600"));
        }
        if self.max_page_bytes < 1024 {
            return Err(invalid("max_page_bytes", "must be at least 1024"));
        }
        if let Err(bad) = GroupBy::parse_all(&self.alert_group_by) {
            return Err(invalid("alert_group_by", bad));
        }
        if let Some(url) = &self.alert_webhook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
                return Err(invalid(
                    "alert_webhook_url",
                    "must be an http(s) URL of at most 2,048 characters",
                ));
            }
            if !can_sign {
                return Err(invalid(
                    "alert_webhook_url",
                    "drift alerts are signed: set [alerts] signing_secret (TOLLGATE_ALERTS_SECRET)",
                ));
            }
        }
        Ok(())
    }
}

impl ReconcileConfig {
    /// How the comparison judges, as this section configures it.
    pub fn settings(&self) -> Settings {
        Settings {
            settle_hours: self.settle_hours,
            require_hourly_agreement: self.require_hourly_agreement,
            tolerance: Tolerance {
                cost: self.cost_tolerance,
                cost_ratio: self.cost_tolerance_ratio,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn field(err: ConfigError) -> String {
        match err {
            ConfigError::Invalid { field, .. } => field,
            other => other.to_string(),
        }
    }

    #[test]
    fn the_admin_key_comes_from_the_environment_and_turns_it_on() {
        let mut config = ReconcileConfig::default();
        assert!(!config.enabled());
        let env = HashMap::from([(
            "TOLLGATE_OPENAI_ADMIN_KEY".to_owned(),
            "sk-admin-x".to_owned(),
        )]);
        config.apply_env(&env).unwrap();
        assert!(config.enabled());
        assert_eq!(format!("{:?}", config.admin_key), "Secret(***)");
        let mut config = ReconcileConfig {
            admin_key: Secret::new("env:MY_ADMIN_KEY"),
            ..ReconcileConfig::default()
        };
        let env = HashMap::from([("MY_ADMIN_KEY".to_owned(), "sk-admin-y".to_owned())]);
        config.apply_env(&env).unwrap();
        assert_eq!(config.admin_key.expose(), "sk-admin-y");
    }

    #[test]
    fn bad_settings_name_their_field() {
        let ok = ReconcileConfig::default();
        ok.validate(false).unwrap();
        for (bad, name) in [
            (
                ReconcileConfig {
                    settle_hours: 72,
                    ..ok.clone()
                },
                "reconcile.settle_hours",
            ),
            (
                ReconcileConfig {
                    refetch_days: 0,
                    ..ok.clone()
                },
                "reconcile.refetch_days",
            ),
            (
                ReconcileConfig {
                    url: "ftp://x".into(),
                    ..ok.clone()
                },
                "reconcile.url",
            ),
            (
                ReconcileConfig {
                    cost_tolerance: Decimal::NEGATIVE_ONE,
                    ..ok.clone()
                },
                "reconcile.cost_tolerance",
            ),
            (
                ReconcileConfig {
                    alert_group_by: vec!["tenant".into()],
                    ..ok.clone()
                },
                "reconcile.alert_group_by",
            ),
            (
                ReconcileConfig {
                    hourly_page_buckets: 169,
                    ..ok.clone()
                },
                "reconcile.hourly_page_buckets",
            ),
        ] {
            assert_eq!(field(bad.validate(true).unwrap_err()), name);
        }
        let unsigned = ReconcileConfig {
            alert_webhook_url: Some("https://hooks.example/x".into()),
            ..ok.clone()
        };
        assert_eq!(
            field(unsigned.validate(false).unwrap_err()),
            "reconcile.alert_webhook_url"
        );
        unsigned.validate(true).unwrap();
    }
}
