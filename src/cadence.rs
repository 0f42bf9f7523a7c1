//! How often a probe runs, parsed once with the config: a fixed interval
//! or a cron expression. The config holds the parsed [`CronExpr`], so the
//! validator reports a bad expression and the scheduler never parses again.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a cron expression is unusable (the validator reports this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The expression does not parse.
    #[error("invalid cron expression {expr:?}: {message}")]
    InvalidCron {
        /// The expression as written.
        expr: String,
        /// What the parser said, plus a hint.
        message: String,
    },
    /// The expression parses but has no future fire time (e.g. a past year).
    #[error("cron expression {0:?} never fires after now")]
    NeverFires(String),
}

/// Parse a cron expression in the `cron` crate's syntax.
///
/// The crate wants 6 or 7 space-separated fields: `sec min hour
/// day-of-month month day-of-week [year]`, or `@hourly`-style shorthands.
/// A classic 5-field crontab line is refused rather than guessed at, because
/// the crate numbers days of the week 1-7 from Sunday while crontab numbers
/// them 0-6: silently adding a seconds field would shift numeric weekdays.
pub fn parse_cron(expr: &str) -> Result<cron::Schedule, ScheduleError> {
    let fields = expr.split_whitespace().count();
    let invalid = |message: String| ScheduleError::InvalidCron {
        expr: expr.to_string(),
        message,
    };
    if fields == 5 && !expr.trim_start().starts_with('@') {
        return Err(invalid(format!(
            "5 fields, but the seconds field comes first (6 or 7 fields: sec min hour day-of-month month day-of-week [year]); \
             e.g. `0 {}`; days of the week are 1-7 from Sunday, so prefer names (MON-FRI)",
            expr.trim()
        )));
    }
    let schedule = cron::Schedule::from_str(expr).map_err(|e| {
        invalid(format!(
            "{e} (6 or 7 fields: sec min hour day-of-month month day-of-week [year])"
        ))
    })?;
    if schedule.upcoming(Utc).next().is_none() {
        return Err(ScheduleError::NeverFires(expr.to_string()));
    }
    Ok(schedule)
}

/// A cron expression as written, parsed once when the config is read.
/// It reads as the text it was written as (`Deref<Target = str>`); a bad
/// one is kept with its error so the validator can name the field.
#[derive(Clone)]
pub struct CronExpr {
    text: String,
    parsed: Result<Box<cron::Schedule>, ScheduleError>,
}

impl CronExpr {
    /// Parse `text`.
    pub fn new(text: impl Into<String>) -> CronExpr {
        let text = text.into();
        let parsed = parse_cron(&text).map(Box::new);
        CronExpr { text, parsed }
    }

    /// The parsed schedule, or why the expression is unusable.
    pub fn schedule(&self) -> Result<&cron::Schedule, &ScheduleError> {
        self.parsed.as_deref()
    }
}

impl Deref for CronExpr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl PartialEq for CronExpr {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl From<&str> for CronExpr {
    fn from(text: &str) -> Self {
        CronExpr::new(text)
    }
}

impl Serialize for CronExpr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for CronExpr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(CronExpr::new)
    }
}

/// How often a probe runs.
#[derive(Debug, Clone)]
pub enum Cadence {
    /// A run every `interval`, the first at start-up.
    Interval(Duration),
    /// A run at every fire time of the cron expression (UTC).
    Cron(Box<cron::Schedule>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_field_cron_is_refused_with_a_hint() {
        let e = parse_cron("*/5 * * * *").unwrap_err().to_string();
        assert!(e.contains("seconds field comes first"), "{e}");
        assert!(e.contains("`0 */5 * * * *`"), "{e}");
    }

    #[test]
    fn six_and_seven_fields_and_shorthands_parse() {
        parse_cron("0 */5 * * * *").unwrap();
        parse_cron("0 0 9 * * MON-FRI 2099").unwrap();
        parse_cron("@hourly").unwrap();
        assert!(matches!(
            parse_cron("0 0 0 1 1 * 2001"),
            Err(ScheduleError::NeverFires(_))
        ));
        assert!(matches!(
            parse_cron("0 61 * * * *"),
            Err(ScheduleError::InvalidCron { .. })
        ));
    }

    #[test]
    fn the_config_keeps_the_text_and_the_parse() {
        let ok = CronExpr::new("0 */5 * * * *");
        assert_eq!(&*ok, "0 */5 * * * *");
        assert!(ok.schedule().is_ok());
        let bad = CronExpr::new("*/5 * * * *");
        assert!(matches!(
            bad.schedule(),
            Err(ScheduleError::InvalidCron { .. })
        ));
    }
}
