//! The `PUT /admin/limits/...` body (CONTRACT §8), parsed strictly: amounts
//! and alert thresholds are decimal strings, counts non-negative integers,
//! webhook URLs http(s) URLs; unknown fields and wrong types are 422 naming
//! the field. Pure; nothing is stored here.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::budget::{Mode, Period};
use super::store::{AlertSetting, BudgetSetting, Settings};
use crate::error::ApiError;

/// Largest amount NUMERIC(28,16) holds: 12 integer digits.
const MAX_AMOUNT_DIGITS: u32 = 12;
const MAX_SCALE: u32 = 16;
/// Alert thresholds: at most this many, each in (0, 10] with at most 6
/// fractional digits (the column is NUMERIC(8,6)).
pub const MAX_THRESHOLDS: usize = 10;
const MAX_THRESHOLD: Decimal = Decimal::TEN;
const MAX_THRESHOLD_SCALE: u32 = 6;
/// Longest webhook URL.
pub const MAX_WEBHOOK_URL: usize = 2048;

pub fn parse(bytes: &[u8]) -> Result<Settings, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(ApiError::invalid_json)?;
    let Value::Object(top) = value else {
        return Err(ApiError::unprocessable(
            "body",
            "The body must be a JSON object.",
        ));
    };
    let mut settings = Settings::default();
    for (name, value) in &top {
        match name.as_str() {
            "budget" => settings.budget = budget(value)?,
            "rate" => rate(value, &mut settings)?,
            "alerts" => settings.alerts = alerts(value)?,
            other => return Err(unknown(other)),
        }
    }
    if settings.alerts.is_some() && settings.budget.is_none() {
        return Err(ApiError::unprocessable(
            "alerts",
            "`alerts` needs a `budget` in the same body: thresholds are fractions of its amount.",
        ));
    }
    Ok(settings)
}

fn unknown(path: &str) -> ApiError {
    ApiError::unprocessable(path, format!("Unknown field `{path}`."))
}

fn object<'a>(value: &'a Value, path: &str) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::Object(map) => Ok(Some(map)),
        _ => Err(ApiError::unprocessable(
            path,
            format!("`{path}` must be an object."),
        )),
    }
}

fn budget(value: &Value) -> Result<Option<BudgetSetting>, ApiError> {
    let Some(map) = object(value, "budget")? else {
        return Ok(None);
    };
    let mut amount = None;
    let mut period = Period::Month;
    let mut mode = Mode::Hard;
    for (name, value) in map {
        match name.as_str() {
            "amount" => amount = Some(parse_amount(value, "budget.amount")?),
            "period" => {
                period = value.as_str().and_then(Period::parse).ok_or_else(|| {
                    ApiError::unprocessable(
                        "budget.period",
                        "`budget.period` must be one of day, week, month, total.",
                    )
                })?;
            }
            "mode" => {
                mode = value.as_str().and_then(Mode::parse).ok_or_else(|| {
                    ApiError::unprocessable("budget.mode", "`budget.mode` must be hard or soft.")
                })?;
            }
            other => return Err(unknown(&format!("budget.{other}"))),
        }
    }
    let amount = amount
        .ok_or_else(|| ApiError::unprocessable("budget.amount", "`budget.amount` is required."))?;
    Ok(Some(BudgetSetting {
        amount,
        period,
        mode,
    }))
}

/// A decimal string, never a JSON number (a float could not say what it meant).
fn parse_amount(value: &Value, path: &str) -> Result<Decimal, ApiError> {
    let bad = |why: &str| ApiError::unprocessable(path, format!("`{path}` {why}"));
    let Value::String(text) = value else {
        return Err(bad("must be a decimal string such as \"50.00\"."));
    };
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
        && text.matches('.').count() <= 1;
    let amount = Decimal::from_str(text)
        .ok()
        .filter(|_| plain)
        .ok_or_else(|| bad("must be a decimal string such as \"50.00\"."))?;
    if amount.is_sign_negative() && !amount.is_zero() {
        return Err(bad("must not be negative."));
    }
    if amount.scale() > MAX_SCALE || amount.trunc().to_string().len() > MAX_AMOUNT_DIGITS as usize {
        return Err(bad(
            "is out of range (at most 12 integer and 16 fractional digits).",
        ));
    }
    Ok(amount.abs().normalize())
}

fn alerts(value: &Value) -> Result<Option<AlertSetting>, ApiError> {
    let Some(map) = object(value, "alerts")? else {
        return Ok(None);
    };
    let mut thresholds = None;
    let mut webhook_url = None;
    for (name, value) in map {
        match name.as_str() {
            "thresholds" => thresholds = Some(parse_thresholds(value)?),
            "webhook_url" => webhook_url = Some(parse_webhook_url(value)?),
            other => return Err(unknown(&format!("alerts.{other}"))),
        }
    }
    let required = |field: &str| {
        ApiError::unprocessable(
            format!("alerts.{field}"),
            format!("`alerts.{field}` is required."),
        )
    };
    Ok(Some(AlertSetting {
        thresholds: thresholds.ok_or_else(|| required("thresholds"))?,
        webhook_url: webhook_url.ok_or_else(|| required("webhook_url"))?,
    }))
}

/// 1-10 decimal strings in (0, 10]; returned sorted and without duplicates.
fn parse_thresholds(value: &Value) -> Result<Vec<Decimal>, ApiError> {
    const PATH: &str = "alerts.thresholds";
    let list = match value {
        Value::Array(list) if !list.is_empty() && list.len() <= MAX_THRESHOLDS => list,
        _ => {
            return Err(ApiError::unprocessable(
                PATH,
                format!("`{PATH}` must be a list of 1 to {MAX_THRESHOLDS} decimal strings such as [\"0.5\", \"0.8\", \"1.0\"]."),
            ))
        }
    };
    let mut thresholds = Vec::with_capacity(list.len());
    for (i, value) in list.iter().enumerate() {
        let path = format!("{PATH}[{i}]");
        let threshold = parse_amount(value, &path)?;
        if threshold.is_zero()
            || threshold > MAX_THRESHOLD
            || threshold.scale() > MAX_THRESHOLD_SCALE
        {
            return Err(ApiError::unprocessable(
                &path,
                format!("`{path}` must be a fraction of the budget above 0 and at most {MAX_THRESHOLD}, with at most {MAX_THRESHOLD_SCALE} fractional digits."),
            ));
        }
        thresholds.push(threshold);
    }
    thresholds.sort();
    thresholds.dedup();
    Ok(thresholds)
}

/// An absolute http(s) URL with a host, at most [`MAX_WEBHOOK_URL`]
/// characters; kept in its parsed (normalized) form, which is what is sent to.
fn parse_webhook_url(value: &Value) -> Result<String, ApiError> {
    const PATH: &str = "alerts.webhook_url";
    let bad = || {
        ApiError::unprocessable(
            PATH,
            format!(
                "`{PATH}` must be an http or https URL of at most {MAX_WEBHOOK_URL} characters."
            ),
        )
    };
    let Value::String(text) = value else {
        return Err(bad());
    };
    if text.len() > MAX_WEBHOOK_URL || text.chars().any(char::is_control) {
        return Err(bad());
    }
    let url = reqwest::Url::parse(text).map_err(|_| bad())?;
    let http = matches!(url.scheme(), "http" | "https");
    if !http || url.host_str().is_none_or(str::is_empty) || url.as_str().len() > MAX_WEBHOOK_URL {
        return Err(bad());
    }
    Ok(url.into())
}

fn rate(value: &Value, settings: &mut Settings) -> Result<(), ApiError> {
    let Some(map) = object(value, "rate")? else {
        return Ok(());
    };
    for (name, value) in map {
        let path = format!("rate.{name}");
        let slot = match name.as_str() {
            "requests_per_minute" => &mut settings.requests_per_minute,
            "tokens_per_minute" => &mut settings.tokens_per_minute,
            "concurrent_requests" => &mut settings.concurrent_requests,
            _ => return Err(unknown(&path)),
        };
        *slot = match value {
            Value::Null => None,
            Value::Number(n) => Some(n.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::unprocessable(&path, format!("`{path}` must be a non-negative integer."))
            })?),
            _ => {
                return Err(ApiError::unprocessable(
                    &path,
                    format!("`{path}` must be a non-negative integer."),
                ))
            }
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn param(body: &str) -> String {
        parse(body.as_bytes()).unwrap_err().param.unwrap()
    }

    #[test]
    fn bad_bodies_name_the_field() {
        assert_eq!(param(r#"{"budget": {"amount": 50}}"#), "budget.amount");
        assert_eq!(param(r#"{"budget": {"amount": "-1"}}"#), "budget.amount");
        assert_eq!(param(r#"{"budget": {"amount": "1e3"}}"#), "budget.amount");
        assert_eq!(
            param(r#"{"budget": {"amount": "1", "color": 1}}"#),
            "budget.color"
        );
        assert_eq!(
            param(r#"{"budget": {"amount": "1", "period": "year"}}"#),
            "budget.period"
        );
        assert_eq!(
            param(r#"{"rate": {"requests_per_minute": 1.5}}"#),
            "rate.requests_per_minute"
        );
        assert_eq!(
            param(r#"{"rate": {"requests_per_minute": -1}}"#),
            "rate.requests_per_minute"
        );
        assert_eq!(param(r#"{"rate": {"rpm": 1}}"#), "rate.rpm");
        assert_eq!(param(r#"{"extra": 1}"#), "extra");
    }

    fn alerts_param(alerts: &str) -> String {
        param(&format!(
            r#"{{"budget": {{"amount": "10"}}, "alerts": {alerts}}}"#
        ))
    }

    #[test]
    fn bad_alerts_name_the_field() {
        let url = r#""webhook_url": "https://hooks.example/t""#;
        for (alerts, field) in [
            (
                format!(r#"{{"thresholds": [0.5], {url}}}"#),
                "alerts.thresholds[0]",
            ),
            (
                format!(r#"{{"thresholds": ["0.5", "x"], {url}}}"#),
                "alerts.thresholds[1]",
            ),
            (
                format!(r#"{{"thresholds": ["0"], {url}}}"#),
                "alerts.thresholds[0]",
            ),
            (
                format!(r#"{{"thresholds": ["10.5"], {url}}}"#),
                "alerts.thresholds[0]",
            ),
            (
                format!(r#"{{"thresholds": ["-0.5"], {url}}}"#),
                "alerts.thresholds[0]",
            ),
            (
                format!(r#"{{"thresholds": ["0.1234567"], {url}}}"#),
                "alerts.thresholds[0]",
            ),
            (
                format!(r#"{{"thresholds": [], {url}}}"#),
                "alerts.thresholds",
            ),
            (
                format!(r#"{{"thresholds": "0.5", {url}}}"#),
                "alerts.thresholds",
            ),
            (
                format!(
                    r#"{{"thresholds": [{}], {url}}}"#,
                    [r#""0.5""#; 11].join(",")
                ),
                "alerts.thresholds",
            ),
            (format!(r#"{{{url}}}"#), "alerts.thresholds"),
            (
                r#"{"thresholds": ["0.5"]}"#.to_owned(),
                "alerts.webhook_url",
            ),
            (
                r#"{"thresholds": ["0.5"], "webhook_url": "ftp://x.example/"}"#.to_owned(),
                "alerts.webhook_url",
            ),
            (
                r#"{"thresholds": ["0.5"], "webhook_url": "hooks.example"}"#.to_owned(),
                "alerts.webhook_url",
            ),
            (
                r#"{"thresholds": ["0.5"], "webhook_url": 7}"#.to_owned(),
                "alerts.webhook_url",
            ),
            (
                format!(
                    r#"{{"thresholds": ["0.5"], "webhook_url": "https://h.example/{}"}}"#,
                    "a".repeat(2048)
                ),
                "alerts.webhook_url",
            ),
            (
                format!(r#"{{"thresholds": ["0.5"], {url}, "secret": "x"}}"#),
                "alerts.secret",
            ),
            (r#""on""#.to_owned(), "alerts"),
        ] {
            assert_eq!(alerts_param(&alerts), field, "{alerts}");
        }
        assert_eq!(
            param(r#"{"alerts": {"thresholds": ["0.5"], "webhook_url": "https://h.example/"}}"#),
            "alerts"
        );
    }

    #[test]
    fn alerts_parse_sorted_distinct_and_exact() {
        let s = parse(
            br#"{"budget": {"amount": "50"}, "alerts": {"thresholds": ["1.0", "0.5", "0.50", "0.8"],
                 "webhook_url": "HTTPS://Hooks.Example/tollgate"}}"#,
        )
        .unwrap();
        let a = s.alerts.unwrap();
        let shown: Vec<String> = a.thresholds.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["0.5", "0.8", "1"]);
        assert_eq!(a.webhook_url, "https://hooks.example/tollgate");
        assert!(parse(br#"{"budget": {"amount": "5"}, "alerts": null}"#)
            .unwrap()
            .alerts
            .is_none());
    }

    #[test]
    fn good_body_parses_exactly() {
        let s = parse(
            br#"{"budget": {"amount": "50.00", "period": "week", "mode": "soft"},
                 "rate": {"requests_per_minute": 600, "concurrent_requests": 20}}"#,
        )
        .unwrap();
        let b = s.budget.unwrap();
        assert_eq!(b.amount.to_string(), "50");
        assert_eq!(b.period, Period::Week);
        assert_eq!(b.mode, Mode::Soft);
        assert_eq!(s.requests_per_minute, Some(600));
        assert_eq!(s.tokens_per_minute, None);
    }
}
