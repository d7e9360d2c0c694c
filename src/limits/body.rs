//! The `PUT /admin/limits/...` body (CONTRACT §8), parsed strictly: amounts
//! are decimal strings, counts non-negative integers, unknown fields and
//! wrong types are 422 naming the field. Pure; nothing is stored here.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::budget::{Mode, Period};
use super::store::{BudgetSetting, Settings};
use crate::error::ApiError;

/// Largest amount NUMERIC(28,16) holds: 12 integer digits.
const MAX_AMOUNT_DIGITS: u32 = 12;
const MAX_SCALE: u32 = 16;

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
            "alerts" => {
                return Err(ApiError::unprocessable(
                    "alerts",
                    "Budget alerts are not available in this version.",
                ))
            }
            other => return Err(unknown(other)),
        }
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
