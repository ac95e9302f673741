//! Envoy's `RateLimitUnit`, the YAML `unit`: one table gives each unit its name, its length and its
//! number in Envoy's protobuf enum, and every conversion reads that table.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Envoy's `RateLimitUnit`, also the YAML `unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

const DAY: u64 = 86_400;

/// `(unit, name, seconds, Envoy's enum number)`. As envoyproxy/ratelimit counts them, a month is
/// 30 days and a year 365; Envoy numbers WEEK after YEAR.
const TABLE: [(Unit, &str, u64, i32); 7] = [
    (Unit::Second, "second", 1, 1),
    (Unit::Minute, "minute", 60, 2),
    (Unit::Hour, "hour", 3_600, 3),
    (Unit::Day, "day", DAY, 4),
    (Unit::Week, "week", 7 * DAY, 7),
    (Unit::Month, "month", 30 * DAY, 5),
    (Unit::Year, "year", 365 * DAY, 6),
];

impl Unit {
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    fn row(self) -> (Unit, &'static str, u64, i32) {
        // The table lists every unit in declaration order.
        TABLE[self as usize]
    }

    /// The lower-case name, as written in YAML.
    pub fn as_str(self) -> &'static str {
        self.row().1
    }

    pub fn duration(self) -> Duration {
        Duration::from_secs(self.row().2)
    }

    /// The value of Envoy's `RateLimitResponse.RateLimit.Unit` enum.
    pub fn envoy_number(self) -> i32 {
        self.row().3
    }

    /// The unit of an Envoy enum value; `None` for `UNKNOWN` (0) or a number this build does not know.
    pub fn from_envoy_number(n: i32) -> Option<Unit> {
        TABLE.iter().find(|r| r.3 == n).map(|r| r.0)
    }

    /// The unit whose length is exactly `window`, if any.
    pub fn of_window(window: Duration) -> Option<Unit> {
        TABLE
            .iter()
            .find(|r| Duration::from_secs(r.2) == window)
            .map(|r| r.0)
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown unit name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown unit `{0}` (expected second, minute, hour, day, week, month or year)")]
pub struct UnknownUnit(pub String);

impl FromStr for Unit {
    type Err = UnknownUnit;

    /// Case-insensitive, as envoyproxy/ratelimit upper-cases the unit before its enum lookup.
    fn from_str(s: &str) -> Result<Unit, UnknownUnit> {
        let name = s.trim();
        TABLE
            .iter()
            .find(|r| r.1.eq_ignore_ascii_case(name))
            .map(|r| r.0)
            .ok_or_else(|| UnknownUnit(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_follows_the_enum_and_round_trips() {
        for (i, unit) in Unit::ALL.into_iter().enumerate() {
            assert_eq!(TABLE[i].0, unit);
            assert_eq!(unit.as_str().parse::<Unit>(), Ok(unit));
            assert_eq!(Unit::from_envoy_number(unit.envoy_number()), Some(unit));
            assert_eq!(Unit::of_window(unit.duration()), Some(unit));
        }
        assert_eq!(Unit::from_envoy_number(0), None);
        assert_eq!(Unit::from_envoy_number(8), None);
    }

    #[test]
    fn names_ignore_case_and_lengths_are_the_peers() {
        assert_eq!("SECOND".parse::<Unit>(), Ok(Unit::Second));
        assert_eq!("Week".parse::<Unit>(), Ok(Unit::Week));
        assert!("fortnight".parse::<Unit>().is_err());
        assert!("UNKNOWN".parse::<Unit>().is_err());
        assert_eq!(Unit::Month.duration(), Duration::from_secs(30 * 86_400));
        assert_eq!(Unit::Year.duration(), Duration::from_secs(365 * 86_400));
        assert_eq!(Unit::Week.envoy_number(), 7);
    }
}
