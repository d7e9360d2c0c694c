//! Query parameters of the report endpoints: parsed strictly, every error a
//! 400 naming the parameter.

use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};

use crate::error::ApiError;
use crate::ledger::RequestStatus;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;

/// Values one filter parameter may list (repeated and comma-separated
/// together).
pub const MAX_FILTER_VALUES: usize = 100;
/// Longest filter value, in characters.
pub const MAX_FILTER_CHARS: usize = 256;

/// How `/usage/records` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordsFormat {
    /// One page of JSON, keyset-paginated.
    Json,
    /// Every matching row as streamed CSV.
    Csv,
}

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
        let micros: i64 = micros.parse().ok()?;
        let id: i64 = id.parse().ok()?;
        // Only what this API can have issued: a time PostgreSQL stores and
        // a row id (positive), so no cursor reaches SQL out of range.
        if !(0..=MAX_TIME.saturating_mul(1_000_000) + 999_999).contains(&micros) || id < 1 {
            return None;
        }
        Some(Self {
            started_at: DateTime::from_timestamp_micros(micros)?,
            id,
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
    pub format: RecordsFormat,
}

/// Unix seconds or RFC 3339.
pub fn parse_time(param: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    let parsed = match value.parse::<i64>() {
        Ok(seconds) => Utc.timestamp_opt(seconds, 0).single(),
        Err(_) => DateTime::parse_from_rfc3339(value)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
    };
    let time = parsed.ok_or_else(|| {
        ApiError::invalid_value(
            param,
            format!("'{param}' must be unix seconds or an RFC 3339 timestamp."),
        )
    })?;
    if !(0..=MAX_TIME).contains(&time.timestamp()) {
        return Err(ApiError::invalid_value(
            param,
            format!("'{param}' must lie between 1970 and 9999."),
        ));
    }
    Ok(time)
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
            format: RecordsFormat::Json,
        };
        let mut limit_given = false;
        for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
            // `models[]=a` is how some clients spell repeated parameters.
            let key = key.trim_end_matches("[]");
            match key {
                "start_time" => query.start_time = parse_time("start_time", &value)?,
                "end_time" => query.end_time = parse_time("end_time", &value)?,
                "models" => extend("models", &mut query.models, &value)?,
                "api_key_ids" => extend("api_key_ids", &mut query.api_key_ids, &value)?,
                "statuses" => query.statuses.extend(statuses(&value)?),
                "tenants" if admin => extend("tenants", &mut query.tenants, &value)?,
                "limit" => {
                    limit_given = true;
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
                "format" => {
                    query.format = match &*value {
                        "json" => RecordsFormat::Json,
                        "csv" => RecordsFormat::Csv,
                        _ => {
                            return Err(ApiError::invalid_value(
                                "format",
                                "'format' must be 'json' or 'csv'.",
                            ))
                        }
                    }
                }
                other => return Err(unknown_parameter(other)),
            }
        }
        if query.end_time <= query.start_time {
            return Err(ApiError::invalid_value(
                "end_time",
                "'end_time' must be after 'start_time'.",
            ));
        }
        // A CSV export is every row of the filter, streamed; a silently
        // ignored page size would truncate nothing and surprise the caller.
        if query.format == RecordsFormat::Csv && limit_given {
            return Err(ApiError::invalid_value(
                "limit",
                "'limit' does not apply to format=csv, which exports every matching row; \
                 narrow it with start_time/end_time or resume with 'after'.",
            ));
        }
        Ok(query)
    }
}

/// A comma-separated and/or repeated list parameter's values.
fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The values of a list parameter, each checked where it enters: no NUL or
/// other control character (PostgreSQL text cannot hold NUL), at most
/// [`MAX_FILTER_CHARS`] characters.
fn checked_list(param: &str, value: &str) -> Result<Vec<String>, ApiError> {
    let values = list(value);
    if values.len() > MAX_FILTER_VALUES {
        return Err(too_many_values(param));
    }
    for value in &values {
        if value.chars().any(char::is_control) {
            return Err(ApiError::invalid_value(
                param,
                format!("'{param}' values must not contain control characters (NUL included)."),
            ));
        }
        if value.chars().count() > MAX_FILTER_CHARS {
            return Err(ApiError::invalid_value(
                param,
                format!("'{param}' values must be at most {MAX_FILTER_CHARS} characters."),
            ));
        }
    }
    Ok(values)
}

/// Adds the values of one occurrence of a list parameter to `into`, bounded
/// over every occurrence.
fn extend(param: &str, into: &mut Vec<String>, value: &str) -> Result<(), ApiError> {
    into.extend(checked_list(param, value)?);
    if into.len() > MAX_FILTER_VALUES {
        return Err(too_many_values(param));
    }
    Ok(())
}

fn too_many_values(param: &str) -> ApiError {
    ApiError::invalid_value(
        param,
        format!("'{param}' may list at most {MAX_FILTER_VALUES} values."),
    )
}

fn statuses(value: &str) -> Result<Vec<String>, ApiError> {
    let statuses = checked_list("statuses", value)?;
    if let Some(unknown) = statuses
        .iter()
        .find(|s| !RequestStatus::ALL.contains(&s.as_str()))
    {
        // Checked above: printable and short, so it may be echoed.
        return Err(ApiError::invalid_value(
            "statuses",
            format!("Unknown status '{unknown}'."),
        ));
    }
    Ok(statuses)
}

fn unknown_parameter(name: &str) -> ApiError {
    ApiError::invalid_request(format!("Unknown parameter: '{name}'."))
        .with_code("unknown_parameter")
        .with_param(name.to_owned())
}

/// `bucket_width` of `/usage`: UTC-aligned buckets of a fixed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketWidth {
    Minute,
    Hour,
    Day,
}

impl BucketWidth {
    pub fn seconds(self) -> i64 {
        match self {
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "1m",
            Self::Hour => "1h",
            Self::Day => "1d",
        }
    }

    /// Buckets per page, as OpenAI's Usage API.
    pub fn default_limit(self) -> usize {
        match self {
            Self::Minute => 60,
            Self::Hour => 24,
            Self::Day => 7,
        }
    }

    pub fn max_limit(self) -> usize {
        match self {
            Self::Minute => 1_440,
            Self::Hour => 168,
            Self::Day => 31,
        }
    }

    /// The longest range one query may page through: 31 days of minutes, a
    /// leap year of hours, ten years of days. `start_time=0` with minutes
    /// would otherwise be 29 million buckets of paging.
    pub fn max_range_seconds(self) -> i64 {
        match self {
            Self::Minute => 31 * 86_400,
            Self::Hour => 366 * 86_400,
            Self::Day => 3_660 * 86_400,
        }
    }

    /// The start of the bucket holding `t` (unix seconds).
    pub fn floor(self, t: i64) -> i64 {
        t - t.rem_euclid(self.seconds())
    }
}

/// A `group_by` field of `/usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupBy {
    Tenant,
    ApiKeyId,
    Model,
    ServiceTier,
    Status,
    EndUser,
}

impl GroupBy {
    const ALL: [Self; 6] = [
        Self::Tenant,
        Self::ApiKeyId,
        Self::Model,
        Self::ServiceTier,
        Self::Status,
        Self::EndUser,
    ];

    /// The parameter value and the result field.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::ApiKeyId => "api_key_id",
            Self::Model => "model",
            Self::ServiceTier => "service_tier",
            Self::Status => "status",
            Self::EndUser => "end_user",
        }
    }

    /// The column in the ledger and the rollups.
    pub fn column(self) -> &'static str {
        match self {
            Self::Tenant => "tenant_id",
            other => other.name(),
        }
    }
}

/// `GET /v1/usage` and `GET /admin/usage` (CONTRACT §6).
#[derive(Debug, Clone)]
pub struct UsageQuery {
    /// Unix seconds, inclusive.
    pub start_time: i64,
    /// Unix seconds, exclusive.
    pub end_time: i64,
    pub bucket_width: BucketWidth,
    /// Deduplicated, in [`GroupBy`] order (the order of result fields).
    pub group_by: Vec<GroupBy>,
    pub tenants: Vec<String>,
    pub models: Vec<String>,
    pub api_key_ids: Vec<String>,
    pub statuses: Vec<String>,
    /// Buckets per page.
    pub limit: usize,
    /// Start of this page's first bucket (from `page`), unix seconds.
    pub page: Option<i64>,
}

/// Unix seconds PostgreSQL and chrono both represent: 1970 to 9999.
const MAX_TIME: i64 = 253_402_300_799;

/// The opaque `page` cursor of `/usage`: the start of the next page's first
/// bucket.
pub fn encode_page(bucket_start: i64) -> String {
    let text = format!("b:{bucket_start}");
    format!(
        "page_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    )
}

fn decode_page(value: &str) -> Option<i64> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value.strip_prefix("page_")?)
        .ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("b:")?
        .parse()
        .ok()
}

/// Whole unix seconds: buckets and their bounds are reported in seconds, so
/// a sub-second bound could not be reported truthfully.
fn parse_seconds(param: &str, value: &str) -> Result<i64, ApiError> {
    let time = parse_time(param, value)?;
    if time.timestamp_subsec_nanos() != 0 {
        return Err(ApiError::invalid_value(
            param,
            format!("'{param}' must be a whole second."),
        ));
    }
    // parse_time keeps it within 1970..=9999.
    Ok(time.timestamp())
}

impl UsageQuery {
    /// `admin` allows `tenants` and `group_by=tenant`; `now` is the default
    /// `end_time`.
    pub fn parse(raw: &str, admin: bool, now: i64) -> Result<Self, ApiError> {
        let mut start_time = None;
        let mut end_time = None;
        let mut bucket_width = BucketWidth::Day;
        let mut group_by = Vec::new();
        let mut tenants = Vec::new();
        let mut models = Vec::new();
        let mut api_key_ids = Vec::new();
        let mut statuses_filter = Vec::new();
        let mut limit = None;
        let mut page = None;
        for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
            // `group_by[]=model` is how some clients spell repeated parameters.
            let key = key.trim_end_matches("[]");
            match key {
                "start_time" => start_time = Some(parse_seconds("start_time", &value)?),
                "end_time" => end_time = Some(parse_seconds("end_time", &value)?),
                "bucket_width" => {
                    bucket_width = match &*value {
                        "1m" => BucketWidth::Minute,
                        "1h" => BucketWidth::Hour,
                        "1d" => BucketWidth::Day,
                        _ => {
                            return Err(ApiError::invalid_value(
                                "bucket_width",
                                "'bucket_width' must be '1m', '1h' or '1d'.",
                            ))
                        }
                    }
                }
                "group_by" => {
                    for name in checked_list("group_by", &value)? {
                        let field = GroupBy::ALL
                            .into_iter()
                            .find(|g| g.name() == name)
                            .filter(|g| admin || *g != GroupBy::Tenant)
                            .ok_or_else(|| {
                                let allowed = GroupBy::ALL
                                    .into_iter()
                                    .filter(|g| admin || *g != GroupBy::Tenant)
                                    .map(GroupBy::name)
                                    .collect::<Vec<_>>()
                                    .join(", ");
                                ApiError::invalid_value(
                                    "group_by",
                                    format!(
                                        "Unknown group_by field '{name}'; expected any of: {allowed}."
                                    ),
                                )
                            })?;
                        group_by.push(field);
                    }
                }
                "models" => extend("models", &mut models, &value)?,
                "api_key_ids" => extend("api_key_ids", &mut api_key_ids, &value)?,
                "statuses" => statuses_filter.extend(statuses(&value)?),
                "tenants" if admin => extend("tenants", &mut tenants, &value)?,
                "limit" => limit = Some(value.into_owned()),
                "page" => page = Some(value.into_owned()),
                other => return Err(unknown_parameter(other)),
            }
        }
        let start_time = start_time.ok_or_else(|| ApiError::missing_parameter("start_time"))?;
        let end_time = end_time.unwrap_or(now);
        if end_time <= start_time {
            return Err(ApiError::invalid_value(
                "end_time",
                "'end_time' must be after 'start_time'.",
            ));
        }
        let width = bucket_width;
        if end_time - width.floor(start_time) > width.max_range_seconds() {
            return Err(ApiError::invalid_value(
                "end_time",
                format!(
                    "The range from 'start_time' to 'end_time' is too long for bucket_width={}: \
                     at most {} days.",
                    width.as_str(),
                    width.max_range_seconds() / 86_400
                ),
            ));
        }
        let limit = match limit {
            None => width.default_limit(),
            Some(value) => value
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=width.max_limit()).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid_value(
                        "limit",
                        format!(
                            "'limit' must be an integer from 1 to {} for bucket_width={}.",
                            width.max_limit(),
                            width.as_str()
                        ),
                    )
                })?,
        };
        let page = match page {
            None => None,
            Some(value) => {
                // A cursor must name a bucket of this very range and width.
                let first = width.floor(start_time);
                let bucket = decode_page(&value)
                    .filter(|b| *b >= first && *b < end_time && width.floor(*b) == *b)
                    .ok_or_else(|| {
                        ApiError::invalid_value("page", "'page' is not a cursor this query issued.")
                    })?;
                Some(bucket)
            }
        };
        group_by.sort_unstable();
        group_by.dedup();
        Ok(Self {
            start_time,
            end_time,
            bucket_width,
            group_by,
            tenants,
            models,
            api_key_ids,
            statuses: statuses_filter,
            limit,
            page,
        })
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

    #[test]
    fn usage_parameters_follow_openai_and_errors_name_them() {
        let now = 1_764_633_600; // 2025-12-02T00:00:00Z
        let q = UsageQuery::parse(
            "start_time=2025-12-01T00:00:00Z&group_by=model,status&group_by[]=model&models=a",
            false,
            now,
        )
        .unwrap();
        assert_eq!(q.start_time, 1_764_547_200);
        assert_eq!(q.end_time, now);
        assert_eq!(q.bucket_width, BucketWidth::Day);
        assert_eq!(q.limit, 7);
        assert_eq!(q.group_by, [GroupBy::Model, GroupBy::Status]);
        let q = UsageQuery::parse("start_time=0&end_time=60&bucket_width=1m", false, now).unwrap();
        assert_eq!((q.limit, q.bucket_width.seconds()), (60, 60));
        let q = UsageQuery::parse(
            "start_time=0&end_time=60&bucket_width=1h&limit=168",
            false,
            now,
        )
        .unwrap();
        assert_eq!(q.limit, 168);

        let param = |raw: &str, admin: bool| {
            UsageQuery::parse(raw, admin, 864_000)
                .unwrap_err()
                .param
                .unwrap_or_default()
        };
        assert_eq!(param("", false), "start_time");
        assert_eq!(param("start_time=soon", false), "start_time");
        assert_eq!(
            param("start_time=2025-12-01T00:00:00.5Z", false),
            "start_time"
        );
        assert_eq!(param("start_time=10&end_time=10", false), "end_time");
        assert_eq!(
            param("start_time=10&bucket_width=1s", false),
            "bucket_width"
        );
        assert_eq!(
            param("start_time=10&group_by=project_id", false),
            "group_by"
        );
        // Tenants are an admin dimension only.
        assert_eq!(param("start_time=10&group_by=tenant", false), "group_by");
        assert_eq!(param("start_time=10&tenants=x", false), "tenants");
        assert!(
            UsageQuery::parse("start_time=10&group_by=tenant&tenants=x", true, 864_000).is_ok()
        );
        assert_eq!(param("start_time=10&limit=32", false), "limit");
        assert_eq!(
            param("start_time=10&bucket_width=1h&limit=169", false),
            "limit"
        );
        assert_eq!(
            param("start_time=10&bucket_width=1m&limit=1441", false),
            "limit"
        );
        assert_eq!(param("start_time=10&statuses=ok", false), "statuses");
        assert_eq!(param("start_time=10&foo=1", false), "foo");
        // Too long a range for the width: 31 days of minutes is the most.
        assert_eq!(
            param("start_time=0&end_time=2678460&bucket_width=1m", false),
            "end_time"
        );
        assert!(
            UsageQuery::parse("start_time=0&end_time=2678400&bucket_width=1m", false, now).is_ok()
        );
        assert_eq!(
            param("start_time=0&end_time=31708800&bucket_width=1h", false),
            "end_time"
        );
    }

    #[test]
    fn usage_page_cursors_must_name_a_bucket_of_the_range() {
        let raw = |page: &str| format!("start_time=86400&end_time=864000&page={page}");
        let ok = UsageQuery::parse(&raw(&encode_page(2 * 86_400)), false, 0).unwrap();
        assert_eq!(ok.page, Some(2 * 86_400));
        for bad in [
            "garbage".to_owned(),
            encode_page(0),               // before the range
            encode_page(864_000),         // at the (exclusive) end
            encode_page(2 * 86_400 + 60), // not a bucket start
        ] {
            let err = UsageQuery::parse(&raw(&bad), false, 0).unwrap_err();
            assert_eq!(err.param.as_deref(), Some("page"), "{bad}");
        }
    }

    #[test]
    fn hostile_filter_values_and_cursors_are_400s_naming_the_param() {
        let records = |raw: &str| {
            RecordsQuery::parse(raw, true)
                .unwrap_err()
                .param
                .unwrap_or_default()
        };
        for param in ["models", "api_key_ids", "tenants", "statuses"] {
            assert_eq!(records(&format!("{param}=a%00b")), param);
            assert_eq!(records(&format!("{param}={}", "x".repeat(257))), param);
            let many: Vec<String> = (0..101).map(|i| format!("v{i}")).collect();
            assert_eq!(records(&format!("{param}={}", many.join(","))), param);
        }
        // 100 values over repeated parameters are the most.
        let hundred: String = (0..100).map(|i| format!("models=m{i}&")).collect();
        assert!(RecordsQuery::parse(&hundred, false).is_ok());
        assert_eq!(records(&format!("{hundred}models=one-more")), "models");
        for time in [
            "-1",
            "-62135596800",
            "9467150000000",
            "300000-01-01T00:00:00Z",
        ] {
            assert_eq!(records(&format!("start_time={time}")), "start_time");
            assert_eq!(records(&format!("end_time={time}")), "end_time");
        }
        let b64 = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        for cursor in [
            b64(&format!("{}:1", i64::MAX)),
            b64(&format!("{}:1", i64::MIN)),
            b64("-1:5"),
            b64("1764547200000000:0"),
            b64("1764547200000000:-9"),
            b64("1764547200000000:99999999999999999999"),
        ] {
            assert_eq!(records(&format!("after={cursor}")), "after", "{cursor}");
        }
        let usage = |raw: &str| {
            UsageQuery::parse(raw, true, 864_000)
                .unwrap_err()
                .param
                .unwrap_or_default()
        };
        assert_eq!(usage("start_time=10&group_by=model%00"), "group_by");
        assert_eq!(usage("start_time=10&models=a%00"), "models");
        assert_eq!(usage("start_time=-5"), "start_time");
        assert_eq!(usage("start_time=10&end_time=99999999999999"), "end_time");
        assert_eq!(usage("start_time=10&page=page_%00"), "page");
    }

    #[test]
    fn csv_records_take_no_page_size() {
        assert_eq!(
            RecordsQuery::parse("format=csv", false).unwrap().format,
            RecordsFormat::Csv
        );
        let err = RecordsQuery::parse("format=csv&limit=5", false).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("limit"));
        let err = RecordsQuery::parse("format=xml", false).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("format"));
    }
}
