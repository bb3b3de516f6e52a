//! Freeze-window schedules: whether a window is on at an instant, and until when.
//!
//! A one-off window covers `[starts_at, ends_at)`. A weekly window is written in local wall-clock
//! time (`"Fri 18:00-Mon 08:00"`, or `{"days": ["sat", "sun"], "start": "00:00", "end": "24:00"}`)
//! and read in the window's IANA time zone, so it follows daylight-saving changes. A local time
//! the clock skips is taken as the moment the clock jumps past it; a local time the clock shows
//! twice starts a window at its first showing and ends one at its last: a freeze is never
//! dropped or cut short by a clock change.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDateTime, NaiveTime, Offset, TimeZone, Utc,
    Weekday,
};
use chrono_tz::Tz;
use serde_json::Value;

/// Why a stored window could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(String);

/// Part of the week in local wall-clock time, from a weekday and time to a later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeeklySpan {
    /// The day it starts.
    pub start_day: Weekday,
    /// The local time it starts.
    pub start: NaiveTime,
    /// The day it ends (the same day a week later when it is `start_day` and `end <= start`).
    pub end_day: Weekday,
    /// The local time it ends (exclusive).
    pub end: NaiveTime,
}

impl WeeklySpan {
    /// Whole days from the start day to the end day.
    fn days(&self) -> i64 {
        let days = (i64::from(self.end_day.num_days_from_monday())
            - i64::from(self.start_day.num_days_from_monday()))
        .rem_euclid(7);
        if days == 0 && self.end <= self.start {
            7
        } else {
            days
        }
    }
}

impl fmt::Display for WeeklySpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}-{} {}",
            self.start_day,
            self.start.format("%H:%M"),
            self.end_day,
            self.end.format("%H:%M")
        )
    }
}

/// When a freeze window is on.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// `[starts_at, ends_at)`.
    OneOff {
        /// Start.
        starts_at: DateTime<Utc>,
        /// End (exclusive).
        ends_at: DateTime<Utc>,
    },
    /// The same parts of every week, in local time.
    Weekly {
        /// The parts of the week.
        spans: Vec<WeeklySpan>,
        /// The zone the times are read in.
        time_zone: Tz,
    },
}

impl Schedule {
    /// Reads a window as the `freeze_windows` table stores it.
    pub fn from_stored(
        kind: &str,
        starts_at: Option<DateTime<Utc>>,
        ends_at: Option<DateTime<Utc>>,
        weekly: Option<&Value>,
        time_zone: &str,
    ) -> Result<Self, ScheduleError> {
        match kind {
            "one_off" => match (starts_at, ends_at) {
                (Some(starts_at), Some(ends_at)) => Ok(Schedule::OneOff { starts_at, ends_at }),
                _ => Err(ScheduleError(
                    "a one-off window needs a start and an end".into(),
                )),
            },
            "weekly" => {
                let time_zone = Tz::from_str(time_zone).map_err(|_| {
                    ScheduleError(format!("`{time_zone}` is not an IANA time zone"))
                })?;
                let weekly = weekly
                    .ok_or_else(|| ScheduleError("a weekly window needs its times".into()))?;
                Ok(Schedule::Weekly {
                    spans: parse_weekly(weekly)?,
                    time_zone,
                })
            }
            other => Err(ScheduleError(format!(
                "`{other}` is not a kind of freeze window"
            ))),
        }
    }

    /// The end of the occurrence that is on at `now`, or `None` when the window is off.
    pub fn on_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::OneOff { starts_at, ends_at } => {
                (*starts_at <= now && now < *ends_at).then_some(*ends_at)
            }
            Schedule::Weekly { spans, time_zone } => {
                let today = now.with_timezone(time_zone).date_naive();
                let mut until: Option<DateTime<Utc>> = None;
                for span in spans {
                    let back = (i64::from(today.weekday().num_days_from_monday())
                        - i64::from(span.start_day.num_days_from_monday()))
                    .rem_euclid(7);
                    // The latest start on or before today, and the one a week before (a span
                    // can last almost a week); a day either side absorbs offset changes.
                    for back in [back - 7, back, back + 7] {
                        let start_date = today - Duration::days(back);
                        let starts =
                            resolve(time_zone, start_date.and_time(span.start), Showing::First);
                        let ends = resolve(
                            time_zone,
                            (start_date + Duration::days(span.days())).and_time(span.end),
                            Showing::Last,
                        );
                        if starts <= now && now < ends {
                            until = Some(until.map_or(ends, |until| until.max(ends)));
                        }
                    }
                }
                until
            }
        }
    }
}

impl Schedule {
    /// The next `limit` occurrences that end after `from`, in order (one that is on at `from`
    /// first), each as `[start, end)`; overlapping weekly spans are merged. Looks a year ahead.
    pub fn occurrences(
        &self,
        from: DateTime<Utc>,
        limit: usize,
    ) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        match self {
            Schedule::OneOff { starts_at, ends_at } => {
                if *ends_at > from && limit > 0 {
                    vec![(*starts_at, *ends_at)]
                } else {
                    Vec::new()
                }
            }
            Schedule::Weekly { spans, time_zone } => {
                let first = from.with_timezone(time_zone).date_naive() - Duration::days(8);
                let mut found = Vec::new();
                for offset in 0..(366 + 8) {
                    let date = first + Duration::days(offset);
                    for span in spans.iter().filter(|span| span.start_day == date.weekday()) {
                        let starts = resolve(time_zone, date.and_time(span.start), Showing::First);
                        let ends = resolve(
                            time_zone,
                            (date + Duration::days(span.days())).and_time(span.end),
                            Showing::Last,
                        );
                        if ends > from {
                            found.push((starts, ends));
                        }
                    }
                    // Enough once more starts are known than asked for and the week is covered.
                    if found.len() > limit + spans.len() && offset > 14 {
                        break;
                    }
                }
                found.sort();
                let mut merged: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
                for (starts, ends) in found {
                    match merged.last_mut() {
                        Some(last) if starts <= last.1 => last.1 = last.1.max(ends),
                        _ => merged.push((starts, ends)),
                    }
                }
                merged.truncate(limit);
                merged
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::OneOff { starts_at, ends_at } => write!(
                f,
                "{} to {}",
                starts_at.format("%Y-%m-%d %H:%M UTC"),
                ends_at.format("%Y-%m-%d %H:%M UTC")
            ),
            Schedule::Weekly { spans, time_zone } => {
                let spans: Vec<String> = spans.iter().map(ToString::to_string).collect();
                write!(f, "weekly {} ({time_zone})", spans.join(", "))
            }
        }
    }
}

/// Which showing of a local time the clock shows twice.
#[derive(Clone, Copy)]
enum Showing {
    First,
    Last,
}

/// The instant a local wall-clock time names in `zone`.
fn resolve(zone: &Tz, local: NaiveDateTime, showing: Showing) -> DateTime<Utc> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(at) => at.with_timezone(&Utc),
        LocalResult::Ambiguous(first, last) => match showing {
            Showing::First => first.with_timezone(&Utc),
            Showing::Last => last.with_timezone(&Utc),
        },
        LocalResult::None => {
            // Skipped by the clock: the first minute after it that exists is when the clock
            // jumped past it (gaps last an hour, at most a day).
            let mut later = local;
            for _ in 0..(2 * 24 * 60) {
                later += Duration::minutes(1);
                if let Some(at) = zone.from_local_datetime(&later).earliest() {
                    return at.with_timezone(&Utc);
                }
            }
            // Not reached with the zone database; read it with the offset of the day before.
            let offset = zone
                .offset_from_utc_datetime(&(local - Duration::days(1)))
                .fix();
            Utc.from_utc_datetime(&(local - Duration::seconds(offset.local_minus_utc().into())))
        }
    }
}

/// Reads the `weekly` column: `"Fri 18:00-Mon 08:00"`, a list of such spans, or
/// `{"days": ["mon", ...], "start": "HH:MM", "end": "HH:MM"}` (each day from `start` to `end`,
/// past midnight into the next day when `end` is not after `start`; `"24:00"` is midnight).
pub fn parse_weekly(value: &Value) -> Result<Vec<WeeklySpan>, ScheduleError> {
    match value {
        Value::String(text) => Ok(vec![parse_span(text)?]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(text) => parse_span(text),
                other => Err(ScheduleError(format!("`{other}` is not a weekly span"))),
            })
            .collect(),
        Value::Object(fields) => {
            let text = |name: &str| {
                fields
                    .get(name)
                    .and_then(Value::as_str)
                    .ok_or_else(|| ScheduleError(format!("a weekly window needs `{name}`")))
            };
            let (start, start_is_midnight_after) = parse_time(text("start")?)?;
            let (end, end_is_midnight_after) = parse_time(text("end")?)?;
            if start_is_midnight_after {
                return Err(ScheduleError(
                    "a weekly window cannot start at 24:00".into(),
                ));
            }
            let days = fields
                .get("days")
                .and_then(Value::as_array)
                .filter(|days| !days.is_empty())
                .ok_or_else(|| ScheduleError("a weekly window needs `days`".into()))?;
            days.iter()
                .map(|day| {
                    let day = day
                        .as_str()
                        .ok_or_else(|| ScheduleError(format!("`{day}` is not a weekday")))
                        .and_then(parse_day)?;
                    let next_day = end_is_midnight_after || end <= start;
                    if !end_is_midnight_after && end == start {
                        return Err(ScheduleError(
                            "a weekly window must end after it starts".into(),
                        ));
                    }
                    Ok(WeeklySpan {
                        start_day: day,
                        start,
                        end_day: if next_day { day.succ() } else { day },
                        end,
                    })
                })
                .collect()
        }
        other => Err(ScheduleError(format!(
            "`{other}` is not a weekly schedule (try \"Fri 18:00-Mon 08:00\")"
        ))),
    }
}

/// `"Fri 18:00-Mon 08:00"`.
fn parse_span(text: &str) -> Result<WeeklySpan, ScheduleError> {
    let bad = || {
        ScheduleError(format!(
            "`{text}` is not a weekly span like \"Fri 18:00-Mon 08:00\""
        ))
    };
    let (from, to) = text.split_once(['-', '–']).ok_or_else(bad)?;
    let point = |part: &str| -> Result<(Weekday, NaiveTime, bool), ScheduleError> {
        let (day, time) = part
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(bad)?;
        let (time, midnight_after) = parse_time(time.trim())?;
        Ok((parse_day(day)?, time, midnight_after))
    };
    let (start_day, start, start_is_midnight_after) = point(from)?;
    let (end_day, end, end_is_midnight_after) = point(to)?;
    if start_is_midnight_after {
        return Err(bad());
    }
    let end_day = if end_is_midnight_after {
        end_day.succ()
    } else {
        end_day
    };
    if start_day == end_day && start == end {
        return Err(ScheduleError(format!(
            "`{text}` ends when it starts; a weekly window must end after it starts"
        )));
    }
    Ok(WeeklySpan {
        start_day,
        start,
        end_day,
        end,
    })
}

/// `HH:MM`; `24:00` is midnight at the end of the day (the flag says so).
fn parse_time(text: &str) -> Result<(NaiveTime, bool), ScheduleError> {
    if text == "24:00" {
        return Ok((NaiveTime::MIN, true));
    }
    NaiveTime::parse_from_str(text, "%H:%M")
        .map(|time| (time, false))
        .map_err(|_| ScheduleError(format!("`{text}` is not a time like 18:00")))
}

fn parse_day(text: &str) -> Result<Weekday, ScheduleError> {
    Weekday::from_str(text.trim())
        .map_err(|_| ScheduleError(format!("`{text}` is not a weekday like Fri")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn weekly(value: Value, zone: &str) -> Schedule {
        Schedule::from_stored("weekly", None, None, Some(&value), zone).unwrap()
    }

    #[test]
    fn a_one_off_window_covers_its_start_but_not_its_end() {
        let window = Schedule::from_stored(
            "one_off",
            Some(at("2026-12-24T00:00:00Z")),
            Some(at("2026-12-27T00:00:00Z")),
            None,
            "UTC",
        )
        .unwrap();
        assert_eq!(window.on_until(at("2026-12-23T23:59:59Z")), None);
        assert_eq!(
            window.on_until(at("2026-12-24T00:00:00Z")),
            Some(at("2026-12-27T00:00:00Z"))
        );
        assert_eq!(window.on_until(at("2026-12-27T00:00:00Z")), None);
    }

    #[test]
    fn a_weekend_freeze_in_berlin_follows_the_spring_clock_change() {
        // Summer time starts Sunday 2026-03-29 at 02:00 CET (01:00 UTC): Friday 18:00 is still
        // CET (17:00 UTC), Monday 08:00 is already CEST (06:00 UTC).
        let window = weekly(json!("Fri 18:00-Mon 08:00"), "Europe/Berlin");
        assert_eq!(window.on_until(at("2026-03-27T16:59:00Z")), None);
        let end = Some(at("2026-03-30T06:00:00Z"));
        assert_eq!(window.on_until(at("2026-03-27T17:00:00Z")), end);
        assert_eq!(window.on_until(at("2026-03-29T01:30:00Z")), end);
        assert_eq!(window.on_until(at("2026-03-30T05:59:00Z")), end);
        assert_eq!(window.on_until(at("2026-03-30T06:00:00Z")), None);
        // A week later, all in summer time.
        assert_eq!(
            window.on_until(at("2026-04-03T16:00:00Z")),
            Some(at("2026-04-06T06:00:00Z"))
        );
        assert_eq!(window.on_until(at("2026-04-03T15:59:00Z")), None);
    }

    #[test]
    fn occurrences_list_the_next_weekends_across_the_clock_change_the_current_one_first() {
        let window = weekly(json!("Fri 18:00-Mon 08:00"), "Europe/Berlin");
        let next = window.occurrences(at("2026-03-28T12:00:00Z"), 3);
        assert_eq!(
            next,
            vec![
                (at("2026-03-27T17:00:00Z"), at("2026-03-30T06:00:00Z")),
                (at("2026-04-03T16:00:00Z"), at("2026-04-06T06:00:00Z")),
                (at("2026-04-10T16:00:00Z"), at("2026-04-13T06:00:00Z")),
            ]
        );
        // Every occurrence agrees with on_until.
        for (starts, ends) in &next {
            assert_eq!(window.on_until(*starts), Some(*ends));
            assert_eq!(window.on_until(*starts - Duration::minutes(1)), None);
        }
        // Whole days that touch merge into one occurrence.
        let days = weekly(
            json!({ "days": ["mon", "tue"], "start": "00:00", "end": "24:00" }),
            "UTC",
        );
        assert_eq!(
            days.occurrences(at("2026-11-30T00:00:00Z"), 2),
            vec![
                (at("2026-11-30T00:00:00Z"), at("2026-12-02T00:00:00Z")),
                (at("2026-12-07T00:00:00Z"), at("2026-12-09T00:00:00Z")),
            ]
        );
        let one_off = Schedule::from_stored(
            "one_off",
            Some(at("2026-12-24T00:00:00Z")),
            Some(at("2026-12-27T00:00:00Z")),
            None,
            "UTC",
        )
        .unwrap();
        assert_eq!(one_off.occurrences(at("2026-12-27T00:00:00Z"), 5), vec![]);
        assert_eq!(one_off.occurrences(at("2026-12-01T00:00:00Z"), 5).len(), 1);
    }

    #[test]
    fn a_weekend_freeze_in_berlin_follows_the_autumn_clock_change() {
        // Summer time ends Sunday 2026-10-25 at 03:00 CEST (01:00 UTC).
        let window = weekly(json!("Fri 18:00-Mon 08:00"), "Europe/Berlin");
        assert_eq!(window.on_until(at("2026-10-23T15:59:00Z")), None);
        let end = Some(at("2026-10-26T07:00:00Z"));
        assert_eq!(window.on_until(at("2026-10-23T16:00:00Z")), end);
        assert_eq!(window.on_until(at("2026-10-26T06:30:00Z")), end);
        assert_eq!(window.on_until(at("2026-10-26T07:00:00Z")), None);
    }

    #[test]
    fn a_window_starting_at_a_skipped_local_time_starts_when_the_clock_jumps_past_it() {
        // 02:30 does not exist in Berlin on 2026-03-29: the clock goes from 02:00 to 03:00.
        let window = weekly(
            json!({ "days": ["sun"], "start": "02:30", "end": "04:00" }),
            "Europe/Berlin",
        );
        assert_eq!(window.on_until(at("2026-03-29T00:59:00Z")), None);
        let end = Some(at("2026-03-29T02:00:00Z"));
        assert_eq!(window.on_until(at("2026-03-29T01:00:00Z")), end);
        assert_eq!(window.on_until(at("2026-03-29T01:59:00Z")), end);
        assert_eq!(window.on_until(at("2026-03-29T02:00:00Z")), None);
        // An ordinary Sunday: 02:30 to 04:00 CEST.
        assert_eq!(
            window.on_until(at("2026-04-05T00:30:00Z")),
            Some(at("2026-04-05T02:00:00Z"))
        );
        assert_eq!(window.on_until(at("2026-04-05T00:29:00Z")), None);
    }

    #[test]
    fn a_window_at_a_repeated_local_time_covers_both_showings() {
        // 02:00-03:00 happens twice in Berlin on 2026-10-25 (00:00-01:00 and 01:00-02:00 UTC).
        let window = weekly(
            json!({ "days": ["sun"], "start": "02:15", "end": "02:45" }),
            "Europe/Berlin",
        );
        assert_eq!(window.on_until(at("2026-10-25T00:14:00Z")), None);
        let end = Some(at("2026-10-25T01:45:00Z"));
        assert_eq!(window.on_until(at("2026-10-25T00:15:00Z")), end);
        assert_eq!(window.on_until(at("2026-10-25T00:50:00Z")), end);
        assert_eq!(window.on_until(at("2026-10-25T01:20:00Z")), end);
        assert_eq!(window.on_until(at("2026-10-25T01:45:00Z")), None);
    }

    #[test]
    fn daily_spans_cross_midnight_and_24_00_ends_the_day() {
        let nights = weekly(
            json!({ "days": ["mon", "tue"], "start": "22:00", "end": "06:00" }),
            "UTC",
        );
        // 2026-12-07 is a Monday.
        assert_eq!(
            nights.on_until(at("2026-12-08T05:00:00Z")),
            Some(at("2026-12-08T06:00:00Z"))
        );
        assert_eq!(nights.on_until(at("2026-12-08T12:00:00Z")), None);
        assert_eq!(
            nights.on_until(at("2026-12-08T23:00:00Z")),
            Some(at("2026-12-09T06:00:00Z"))
        );
        assert_eq!(nights.on_until(at("2026-12-09T23:00:00Z")), None);
        let weekend = weekly(
            json!({ "days": ["Saturday", "Sunday"], "start": "00:00", "end": "24:00" }),
            "UTC",
        );
        assert_eq!(
            weekend.on_until(at("2026-12-13T23:59:00Z")),
            Some(at("2026-12-14T00:00:00Z"))
        );
        assert_eq!(weekend.on_until(at("2026-12-14T00:00:00Z")), None);
    }

    #[test]
    fn a_span_almost_a_week_long_is_on_across_the_week_boundary() {
        let window = weekly(json!(["Mon 09:00-Mon 08:00"]), "America/New_York");
        // Monday 2026-12-07 07:00 EST is 12:00 UTC: inside last week's occurrence.
        assert_eq!(
            window.on_until(at("2026-12-07T12:00:00Z")),
            Some(at("2026-12-07T13:00:00Z"))
        );
        assert_eq!(window.on_until(at("2026-12-07T13:30:00Z")), None);
        assert_eq!(
            window.on_until(at("2026-12-07T14:00:00Z")),
            Some(at("2026-12-14T13:00:00Z"))
        );
    }

    #[test]
    fn unreadable_windows_say_why() {
        for (value, zone) in [
            (json!("Fri 18:00"), "UTC"),
            (json!("Fry 18:00-Mon 08:00"), "UTC"),
            (json!("Fri 25:00-Mon 08:00"), "UTC"),
            (json!("Fri 18:00-Fri 18:00"), "UTC"),
            (
                json!({ "days": [], "start": "00:00", "end": "01:00" }),
                "UTC",
            ),
            (json!(42), "UTC"),
            (json!("Fri 18:00-Mon 08:00"), "Mars/Olympus_Mons"),
        ] {
            assert!(
                Schedule::from_stored("weekly", None, None, Some(&value), zone).is_err(),
                "{value} in {zone}"
            );
        }
    }
}
