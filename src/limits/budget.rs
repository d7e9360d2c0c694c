//! Budget periods and the budget admission rule, as pure functions of what
//! [`super::store`] read under lock. No I/O here.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
    Month,
    Total,
}

impl Period {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" => Some(Self::Day),
            "week" => Some(Self::Week),
            "month" => Some(Self::Month),
            "total" => Some(Self::Total),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Total => "total",
        }
    }

    /// The start of the period containing `now` (UTC calendar); `None` for
    /// `total`, which has no start.
    pub fn start(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = now.date_naive();
        let date = match self {
            Self::Day => today,
            Self::Week => today - Duration::days(i64::from(today.weekday().num_days_from_monday())),
            Self::Month => NaiveDate::from_ymd_opt(today.year(), today.month(), 1)?,
            Self::Total => return None,
        };
        Some(Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?))
    }

    /// When the period containing `now` ends; `None` for `total`.
    pub fn resets_at(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = self.start(now)?;
        match self {
            Self::Day => Some(start + Duration::days(1)),
            Self::Week => Some(start + Duration::days(7)),
            Self::Month => {
                let (y, m) = if start.month() == 12 {
                    (start.year() + 1, 1)
                } else {
                    (start.year(), start.month() + 1)
                };
                let date = NaiveDate::from_ymd_opt(y, m, 1)?;
                Some(Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?))
            }
            Self::Total => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Hard,
    Soft,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hard" => Some(Self::Hard),
            "soft" => Some(Self::Soft),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hard => "hard",
            Self::Soft => "soft",
        }
    }
}

/// Hard: the estimate must fit in what is left. Soft: something must be left.
pub fn admits(
    mode: Mode,
    amount: Decimal,
    spent: Decimal,
    reserved: Decimal,
    estimate: Decimal,
) -> bool {
    let committed = spent.saturating_add(reserved);
    match mode {
        Mode::Hard => committed.saturating_add(estimate) <= amount,
        Mode::Soft => committed < amount,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::str::FromStr;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn periods_are_utc_calendar_aligned() {
        let now = at("2026-12-02T23:59:59Z"); // a Wednesday
        assert_eq!(Period::Day.start(now), Some(at("2026-12-02T00:00:00Z")));
        assert_eq!(Period::Week.start(now), Some(at("2026-11-30T00:00:00Z")));
        assert_eq!(Period::Month.start(now), Some(at("2026-12-01T00:00:00Z")));
        assert_eq!(
            Period::Month.resets_at(now),
            Some(at("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            Period::Week.resets_at(now),
            Some(at("2026-12-07T00:00:00Z"))
        );
        assert_eq!(Period::Total.start(now), None);
    }

    #[test]
    fn hard_fits_the_estimate_soft_needs_room() {
        let d = |s| Decimal::from_str(s).unwrap();
        assert!(admits(Mode::Hard, d("1"), d("0.5"), d("0.25"), d("0.25")));
        assert!(!admits(
            Mode::Hard,
            d("1"),
            d("0.5"),
            d("0.25"),
            d("0.2500000001")
        ));
        assert!(admits(Mode::Soft, d("1"), d("0.5"), d("0.49"), d("100")));
        assert!(!admits(Mode::Soft, d("1"), d("0.5"), d("0.5"), d("0")));
    }
}
