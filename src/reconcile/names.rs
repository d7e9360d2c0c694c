//! How the provider's names become Tollgate's: a served (dated) model
//! (`gpt-5.5-2026-01-01`) and a cost line item (`gpt-5.5-2026-01-01, cached
//! input`) map to a Tollgate model by their model part; an upstream key is
//! recognised in a project's key list by its redacted value. Pure.

use std::collections::HashMap;

/// The model without a trailing `-YYYY-MM-DD`.
pub fn undated(model: &str) -> &str {
    let b = model.as_bytes();
    if b.len() > 11 {
        let tail = &b[b.len() - 11..];
        let dated = tail.iter().enumerate().all(|(i, c)| match i {
            0 | 5 | 8 => *c == b'-',
            _ => c.is_ascii_digit(),
        });
        if dated {
            return &model[..model.len() - 11];
        }
    }
    model
}

/// The model part of a cost line item: what comes before the first `", "`
/// (`"gpt-5.5-2026-01-01, cached input"` → `"gpt-5.5-2026-01-01"`).
pub fn line_item_model(line_item: &str) -> &str {
    line_item
        .split_once(", ")
        .map_or(line_item, |(model, _)| model)
        .trim()
}

/// Provider model names to Tollgate's.
#[derive(Debug, Clone, Default)]
pub struct ModelNames {
    /// Undated provider name → Tollgate model (`[reconcile.models]`, then
    /// the deployments of routes to OpenAI upstreams).
    aliases: HashMap<String, String>,
}

impl ModelNames {
    pub fn new(aliases: HashMap<String, String>) -> Self {
        Self { aliases }
    }

    /// The Tollgate model a provider's model name stands for: its undated
    /// form, through the aliases.
    pub fn tollgate_model(&self, provider_model: &str) -> String {
        let base = undated(provider_model.trim());
        self.aliases
            .get(base)
            .cloned()
            .unwrap_or_else(|| base.to_owned())
    }
}

/// Whether the provider's redacted form of a key (`sk-abc...wxyz`,
/// `sk-proj-ab****wxyz`) can be `secret`: its visible start and end match,
/// and together they show enough of it to tell keys apart.
pub fn redacted_matches(redacted: &str, secret: &str) -> bool {
    let is_mask = |c: char| c == '.' || c == '*' || c == '…';
    let Some(start) = redacted.find(is_mask) else {
        return false;
    };
    let Some(last) = redacted.rfind(is_mask) else {
        return false;
    };
    let mask_len = redacted[last..].chars().next().map_or(1, char::len_utf8);
    let prefix = &redacted[..start];
    let suffix = &redacted[last + mask_len..];
    suffix.len() >= 4
        && prefix.len() + suffix.len() < secret.len()
        && secret.starts_with(prefix)
        && secret.ends_with(suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_names_lose_their_date() {
        assert_eq!(undated("gpt-5.5-2026-01-01"), "gpt-5.5");
        assert_eq!(undated("gpt-5.4-mini-2025-08-07"), "gpt-5.4-mini");
        assert_eq!(undated("gpt-5.5"), "gpt-5.5");
        assert_eq!(undated("2026-01-01"), "2026-01-01");
        assert_eq!(undated("gpt-5-2025-08-0x"), "gpt-5-2025-08-0x");
    }

    #[test]
    fn line_items_map_by_their_model_part() {
        assert_eq!(
            line_item_model("gpt-5.5-2026-01-01, cached input"),
            "gpt-5.5-2026-01-01"
        );
        assert_eq!(
            line_item_model("gpt-5.5-2026-01-01, input"),
            "gpt-5.5-2026-01-01"
        );
        assert_eq!(line_item_model("Web search"), "Web search");
        let names = ModelNames::new(HashMap::from([("gpt-55-prod".into(), "gpt-5.5".into())]));
        assert_eq!(
            names.tollgate_model(line_item_model("gpt-5.5-2026-01-01, output")),
            "gpt-5.5"
        );
        assert_eq!(names.tollgate_model("gpt-55-prod-2026-02-02"), "gpt-5.5");
    }

    #[test]
    fn redacted_values_match_only_their_key() {
        let secret = "sk-proj-abcdefghijklmnopqrstuvwxyz0123";
        assert!(redacted_matches("sk-pro...0123", secret));
        assert!(redacted_matches("sk-proj-ab****************0123", secret));
        assert!(!redacted_matches("sk-pro...0124", secret));
        assert!(!redacted_matches("sk-abc...0123", secret));
        // Too little shown to tell keys apart.
        assert!(!redacted_matches("sk-...123", secret));
        assert!(!redacted_matches(
            "sk-proj-abcdefghijklmnopqrstuvwxyz0123",
            secret
        ));
    }
}
