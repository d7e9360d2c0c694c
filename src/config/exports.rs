//! `[exports.<sink>]` (CONTRACT §13): where each billing sink is, its
//! credential (`env:NAME` allowed; never logged, never shown in status), and
//! how much is sent at once. A sink without a section is off.

use serde::Deserialize;

use super::{ConfigError, Env, Secret};

/// The sinks Tollgate speaks, in a fixed order (status, jobs, metrics).
pub const SINKS: [&str; 4] = ["openmeter", "lago", "stripe", "webhook"];

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportsConfig {
    pub openmeter: Option<SinkConfig>,
    pub lago: Option<SinkConfig>,
    pub stripe: Option<SinkConfig>,
    pub webhook: Option<SinkConfig>,
}

/// One sink. `code` is Lago's billable metric code; `event_name` and
/// `value` are Stripe's meter event name and the integer it sums.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    pub url: String,
    pub api_key: Secret,
    pub code: Option<String>,
    pub event_name: Option<String>,
    pub value: Option<String>,
    /// CloudEvents `source` (OpenMeter and webhook).
    pub source: String,
    /// Ledger rows read per step (and events per request, up to the sink's
    /// own cap: Lago 100, Stripe 1).
    pub batch_size: usize,
    /// One HTTP request to the sink at most.
    pub request_timeout_secs: u64,
    /// The wait after a step that found nothing to send.
    pub idle_ms: u64,
    /// Stripe: requests in flight at once.
    pub concurrency: usize,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            api_key: Secret::default(),
            code: None,
            event_name: None,
            value: None,
            source: "tollgate".into(),
            batch_size: 500,
            request_timeout_secs: 30,
            idle_ms: 1_000,
            concurrency: 8,
        }
    }
}

/// What Stripe's `payload[value]` carries.
pub const STRIPE_VALUES: [&str; 4] = [
    "total_tokens",
    "input_tokens",
    "output_tokens",
    "cost_micros",
];

fn invalid(sink: &str, field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: format!("exports.{sink}.{field}"),
        message: message.into(),
    }
}

impl ExportsConfig {
    /// The configured sinks, by name.
    pub fn sinks(&self) -> Vec<(&'static str, &SinkConfig)> {
        [
            ("openmeter", &self.openmeter),
            ("lago", &self.lago),
            ("stripe", &self.stripe),
            ("webhook", &self.webhook),
        ]
        .into_iter()
        .filter_map(|(name, c)| c.as_ref().map(|c| (name, c)))
        .collect()
    }

    pub fn sink(&self, name: &str) -> Option<&SinkConfig> {
        self.sinks()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c)
    }

    /// Resolves `env:NAME` credentials.
    pub fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        for (name, sink) in [
            ("openmeter", &mut self.openmeter),
            ("lago", &mut self.lago),
            ("stripe", &mut self.stripe),
            ("webhook", &mut self.webhook),
        ] {
            if let Some(sink) = sink {
                sink.api_key =
                    super::resolve_secret(&sink.api_key, &format!("exports.{name}.api_key"), env)?;
            }
        }
        Ok(())
    }

    /// `can_sign`: the alerts signing secret is set (the webhook needs it).
    pub fn validate(&self, can_sign: bool) -> Result<(), ConfigError> {
        for (name, sink) in self.sinks() {
            sink.validate(name)?;
        }
        if let Some(stripe) = &self.stripe {
            let event = stripe.event_name.as_deref().unwrap_or("");
            if event.is_empty() || event.len() > 100 {
                return Err(invalid(
                    "stripe",
                    "event_name",
                    "required, at most 100 characters",
                ));
            }
            let value = stripe.value.as_deref().unwrap_or("total_tokens");
            if !STRIPE_VALUES.contains(&value) {
                return Err(invalid(
                    "stripe",
                    "value",
                    format!("`{value}` is not one of {}", STRIPE_VALUES.join(", ")),
                ));
            }
        }
        if let Some(lago) = &self.lago {
            if lago.code.as_deref().unwrap_or("").is_empty() {
                return Err(invalid(
                    "lago",
                    "code",
                    "required (the billable metric code)",
                ));
            }
        }
        if self.webhook.is_some() && !can_sign {
            return Err(invalid(
                "webhook",
                "url",
                "webhook exports are signed: set [alerts] signing_secret (TOLLGATE_ALERTS_SECRET)",
            ));
        }
        Ok(())
    }
}

impl SinkConfig {
    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://"))
            || self.url.len() > 2048
        {
            return Err(invalid(
                name,
                "url",
                "must be an http(s) URL of at most 2,048 characters",
            ));
        }
        if name != "webhook" && self.api_key.is_empty() {
            return Err(invalid(name, "api_key", "required"));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(invalid(name, "batch_size", "must be 1-10000"));
        }
        if !(1..=600).contains(&self.request_timeout_secs) {
            return Err(invalid(name, "request_timeout_secs", "must be 1-600"));
        }
        if !(10..=3_600_000).contains(&self.idle_ms) {
            return Err(invalid(name, "idle_ms", "must be 10-3600000"));
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err(invalid(name, "concurrency", "must be 1-64"));
        }
        if self.source.is_empty() || self.source.len() > 256 {
            return Err(invalid(name, "source", "must be 1-256 characters"));
        }
        Ok(())
    }

    /// The base URL without a trailing slash.
    pub fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn credentials_come_from_env_references_and_are_never_shown() {
        let mut config: ExportsConfig =
            toml::from_str("[openmeter]\nurl = \"https://om.example\"\napi_key = \"env:OM_KEY\"\n")
                .unwrap();
        let env = HashMap::from([("OM_KEY".to_owned(), "om-secret".to_owned())]);
        config.apply_env(&env).unwrap();
        let om = config.openmeter.as_ref().unwrap();
        assert_eq!(om.api_key.expose(), "om-secret");
        assert!(!format!("{config:?}").contains("om-secret"));
        config.validate(false).unwrap();
    }

    #[test]
    fn bad_settings_name_their_field() {
        let field = |text: &str, sign: bool| match toml::from_str::<ExportsConfig>(text)
            .unwrap()
            .validate(sign)
            .unwrap_err()
        {
            ConfigError::Invalid { field, .. } => field,
            other => other.to_string(),
        };
        assert_eq!(
            field("[lago]\nurl = \"http://l\"\napi_key = \"k\"\n", true),
            "exports.lago.code"
        );
        assert_eq!(
            field("[stripe]\nurl = \"http://s\"\napi_key = \"k\"\nevent_name = \"e\"\nvalue = \"cost\"\n", true),
            "exports.stripe.value"
        );
        assert_eq!(
            field("[webhook]\nurl = \"http://w\"\n", false),
            "exports.webhook.url"
        );
        assert_eq!(
            field("[openmeter]\nurl = \"ftp://o\"\napi_key = \"k\"\n", true),
            "exports.openmeter.url"
        );
    }
}
