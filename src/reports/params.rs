//! Query parameters of the report endpoints: parsed strictly, every error a
//! 400 naming the parameter.

use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};

use crate::error::ApiError;
use crate::ledger::RequestStatus;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;

/// Position after the last row of a page: `(started_at, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub started_at: DateTime<Utc>,
    pub id: i64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let text = format!("{}:{}", self.started_at.timestamp_micros(), self.id);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    pub fn decode(value: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value)
            .ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (micros, id) = text.split_once(':')?;
        Some(Self {
            started_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: id.parse().ok()?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct RecordsQuery {
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub tenants: Vec<String>,
    pub models: Vec<String>,
    pub api_key_ids: Vec<String>,
    pub statuses: Vec<String>,
    pub limit: usize,
    pub after: Option<Cursor>,
}

/// Unix seconds or RFC 3339.
pub fn parse_time(param: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    let parsed = match value.parse::<i64>() {
        Ok(seconds) => Utc.timestamp_opt(seconds, 0).single(),
        Err(_) => DateTime::parse_from_rfc3339(value)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
    };
    parsed.ok_or_else(|| {
        ApiError::invalid_value(
            param,
            format!("'{param}' must be unix seconds or an RFC 3339 timestamp."),
        )
    })
}

impl RecordsQuery {
    /// `admin` allows the `tenants` filter.
    pub fn parse(raw: &str, admin: bool) -> Result<Self, ApiError> {
        let mut query = Self {
            start_time: DateTime::<Utc>::UNIX_EPOCH,
            end_time: Utc::now(),
            tenants: Vec::new(),
            models: Vec::new(),
            api_key_ids: Vec::new(),
            statuses: Vec::new(),
            limit: DEFAULT_LIMIT,
            after: None,
        };
        let list = |value: &str| {
            value
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
            // `models[]=a` is how some clients spell repeated parameters.
            let key = key.trim_end_matches("[]");
            match key {
                "start_time" => query.start_time = parse_time("start_time", &value)?,
                "end_time" => query.end_time = parse_time("end_time", &value)?,
                "models" => query.models.extend(list(&value)),
                "api_key_ids" => query.api_key_ids.extend(list(&value)),
                "statuses" => {
                    for status in list(&value) {
                        if !RequestStatus::ALL.contains(&status.as_str()) {
                            return Err(ApiError::invalid_value(
                                "statuses",
                                format!("Unknown status '{status}'."),
                            ));
                        }
                        query.statuses.push(status);
                    }
                }
                "tenants" if admin => query.tenants.extend(list(&value)),
                "limit" => {
                    query.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::invalid_value(
                                "limit",
                                format!("'limit' must be an integer from 1 to {MAX_LIMIT}."),
                            )
                        })?;
                }
                "after" => {
                    query.after = Some(Cursor::decode(&value).ok_or_else(|| {
                        ApiError::invalid_value("after", "'after' is not a cursor this API issued.")
                    })?);
                }
                "format" if value == "json" => {}
                other => {
                    return Err(
                        ApiError::invalid_request(format!("Unknown parameter: '{other}'."))
                            .with_code("unknown_parameter")
                            .with_param(other.to_owned()),
                    )
                }
            }
        }
        if query.end_time <= query.start_time {
            return Err(ApiError::invalid_value(
                "end_time",
                "'end_time' must be after 'start_time'.",
            ));
        }
        Ok(query)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let cursor = Cursor {
            started_at: Utc.timestamp_micros(1_764_547_200_123_456).unwrap(),
            id: 42,
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("not-a-cursor"), None);
    }

    #[test]
    fn parameters_parse_and_errors_name_them() {
        let q = RecordsQuery::parse(
            "start_time=1764547200&end_time=2025-12-02T00:00:00Z&models=a,b&models=c&statuses=completed&limit=5",
            false,
        )
        .unwrap();
        assert_eq!(q.models, ["a", "b", "c"]);
        assert_eq!(q.limit, 5);
        let param = |raw: &str| RecordsQuery::parse(raw, false).unwrap_err().param;
        assert_eq!(param("start_time=yesterday").as_deref(), Some("start_time"));
        assert_eq!(param("limit=0").as_deref(), Some("limit"));
        assert_eq!(param("statuses=done").as_deref(), Some("statuses"));
        assert_eq!(param("after=zzz").as_deref(), Some("after"));
        assert_eq!(
            param("start_time=10&end_time=5").as_deref(),
            Some("end_time")
        );
        // A tenant cannot widen its own scope.
        assert_eq!(param("tenants=other").as_deref(), Some("tenants"));
        assert!(RecordsQuery::parse("tenants=a,b", true).is_ok());
    }
}
