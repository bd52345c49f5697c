//! Cron schedules for task timers (`[[timers]] cron = "0 3 * * *"`): the classic five fields,
//! evaluated in UTC.
//!
//! The fields are `minute hour day-of-month month day-of-week`, separated by blanks. Each is a
//! comma list of items; an item is `*`, a value `5`, a range `1-5`, or a step over either,
//! `*/15`, `10-50/10`, or `5/20` (from 5 to the field's end). Months may be written `jan`…`dec`
//! and days of the week `sun`…`sat`, in any case; day of week 0 and 7 are both Sunday.
//!
//! Day of month and day of week combine as in classic (Vixie) cron: when both are restricted
//! (neither starts with `*`), a day matches if **either** matches (`0 0 1 * mon` is "the 1st of
//! each month and every Monday"); otherwise a day must match both.
//!
//! Schedules are evaluated in UTC: there is no time zone, so no daylight-saving gaps or repeats.
//! A schedule that can never fire (`0 0 30 feb *`) is refused.

use std::str::FromStr;

/// A parsed cron schedule: the set of matching minutes of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    /// Bit n set: minute n matches.
    minutes: u64,
    hours: u64,
    /// Bits 1..=31.
    days: u64,
    /// Bits 1..=12.
    months: u64,
    /// Bits 0..=6, Sunday = 0.
    weekdays: u64,
    /// Both day fields are restricted, so a day matches if either does.
    either_day: bool,
}

/// Why a cron expression is not acceptable; each names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    #[error("expected 5 fields (minute hour day-of-month month day-of-week), got {0}")]
    FieldCount(usize),
    #[error("{field} has an empty item (two commas in a row, or a trailing comma)")]
    EmptyItem { field: &'static str },
    #[error("{field} {text:?} is not {expected}")]
    NotAValue {
        field: &'static str,
        text: String,
        expected: &'static str,
    },
    #[error("{field} {value} is out of range {min}-{max}")]
    OutOfRange {
        field: &'static str,
        value: u32,
        min: u32,
        max: u32,
    },
    #[error("{field} range {from}-{to} goes backwards")]
    Backwards {
        field: &'static str,
        from: u32,
        to: u32,
    },
    #[error("{field} step {text:?} is not a whole number of at least 1")]
    BadStep { field: &'static str, text: String },
    #[error("it never fires: none of its months has any of its days of the month")]
    Never,
}

/// One of the five fields: its name in errors, its range and its value names.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// What `*` covers (day of week: 0-6, though 7 is accepted for Sunday).
    star_max: u32,
    /// Names of the values from `min` on, e.g. `jan` = 1.
    names: &'static [&'static str],
    /// How a value is described when it is neither a number nor a name.
    expected: &'static str,
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    star_max: 59,
    names: &[],
    expected: "a number",
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    star_max: 23,
    names: &[],
    expected: "a number",
};
const DAY_OF_MONTH: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    star_max: 31,
    names: &[],
    expected: "a number",
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    star_max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
    expected: "a number or a month name (jan-dec)",
};
const DAY_OF_WEEK: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    star_max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    expected: "a number or a day name (sun-sat)",
};

const MINUTES_PER_DAY: i64 = 24 * 60;
const MS_PER_MINUTE: i64 = 60_000;
/// Days in 400 Gregorian years: the calendar (dates and weekdays) repeats after that, so a
/// schedule with no match within it never matches.
const DAYS_PER_400_YEARS: i64 = 146_097;

impl FromStr for CronSchedule {
    type Err = CronError;

    fn from_str(text: &str) -> Result<CronSchedule, CronError> {
        CronSchedule::parse(text)
    }
}

impl CronSchedule {
    /// Parses a five-field cron expression.
    pub fn parse(text: &str) -> Result<CronSchedule, CronError> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(CronError::FieldCount(fields.len()));
        };
        let weekdays = parse_field(weekday, &DAY_OF_WEEK)?;
        let schedule = CronSchedule {
            minutes: parse_field(minute, &MINUTE)?,
            hours: parse_field(hour, &HOUR)?,
            days: parse_field(day, &DAY_OF_MONTH)?,
            months: parse_field(month, &MONTH)?,
            // 7 is Sunday too.
            weekdays: (weekdays | weekdays >> 7) & 0x7f,
            either_day: !day.starts_with('*') && !weekday.starts_with('*'),
        };
        if schedule.next_after(0).is_none() {
            return Err(CronError::Never);
        }
        Ok(schedule)
    }

    /// The start (Unix ms) of the first matching minute that begins strictly after `after_ms`;
    /// `None` only for a schedule that never fires.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let mut minute = after_ms.div_euclid(MS_PER_MINUTE) + 1;
        let last_day = minute.div_euclid(MINUTES_PER_DAY) + DAYS_PER_400_YEARS;
        loop {
            let day = minute.div_euclid(MINUTES_PER_DAY);
            if day > last_day {
                return None;
            }
            let (year, month, day_of_month) = civil_from_days(day);
            let of_day = minute.rem_euclid(MINUTES_PER_DAY);
            let (hour, minute_of_hour) = (of_day / 60, of_day % 60);
            if !has(self.months, month) {
                let (year, month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                minute = days_from_civil(year, month, 1) * MINUTES_PER_DAY;
            } else if !self.day_matches(day_of_month, weekday(day)) {
                minute = (day + 1) * MINUTES_PER_DAY;
            } else if !has(self.hours, hour) {
                minute = day * MINUTES_PER_DAY + (hour + 1) * 60;
            } else if !has(self.minutes, minute_of_hour) {
                minute += 1;
            } else {
                return Some(minute * MS_PER_MINUTE);
            }
        }
    }

    /// Whether the minute holding `unix_ms` matches.
    pub fn matches(&self, unix_ms: i64) -> bool {
        let start = unix_ms.div_euclid(MS_PER_MINUTE) * MS_PER_MINUTE;
        self.next_after(start - 1) == Some(start)
    }

    fn day_matches(&self, day_of_month: u32, weekday: u32) -> bool {
        let (by_date, by_weekday) = (has(self.days, day_of_month), has(self.weekdays, weekday));
        if self.either_day {
            by_date || by_weekday
        } else {
            by_date && by_weekday
        }
    }
}

fn has(set: u64, value: impl TryInto<u32>) -> bool {
    value
        .try_into()
        .ok()
        .and_then(|v| 1u64.checked_shl(v))
        .is_some_and(|bit| set & bit != 0)
}

/// The set of values one field's text selects, as a bit set.
fn parse_field(text: &str, field: &Field) -> Result<u64, CronError> {
    let mut set = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(CronError::EmptyItem { field: field.name });
        }
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => (base, Some(parse_step(step, field)?)),
            None => (item, None),
        };
        let (from, to) = match (base, base.split_once('-')) {
            ("*", _) => (field.min, field.star_max),
            (_, Some((from, to))) => {
                let (from, to) = (parse_value(from, field)?, parse_value(to, field)?);
                if from > to {
                    return Err(CronError::Backwards {
                        field: field.name,
                        from,
                        to,
                    });
                }
                (from, to)
            }
            // `5/20` runs from 5 to the field's end.
            (_, None) => {
                let value = parse_value(base, field)?;
                (value, if step.is_some() { field.max } else { value })
            }
        };
        for value in (from..=to).step_by(step.unwrap_or(1)) {
            set |= 1 << value;
        }
    }
    Ok(set)
}

fn parse_step(text: &str, field: &Field) -> Result<usize, CronError> {
    match parse_number(text) {
        Some(step) if step >= 1 => Ok(step as usize),
        _ => Err(CronError::BadStep {
            field: field.name,
            text: text.to_owned(),
        }),
    }
}

fn parse_value(text: &str, field: &Field) -> Result<u32, CronError> {
    let named = field
        .names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(text))
        .map(|index| field.min + index as u32);
    let value = named
        .or_else(|| parse_number(text))
        .ok_or_else(|| CronError::NotAValue {
            field: field.name,
            text: text.to_owned(),
            expected: field.expected,
        })?;
    if (field.min..=field.max).contains(&value) {
        Ok(value)
    } else {
        Err(CronError::OutOfRange {
            field: field.name,
            value,
            min: field.min,
            max: field.max,
        })
    }
}

/// Digits only (no sign, no blanks), at most a few of them.
fn parse_number(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 6 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Day of the week of a day counted from 1970-01-01 (a Thursday); Sunday = 0.
fn weekday(days: i64) -> u32 {
    (days + 4).rem_euclid(7) as u32
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_400_YEARS + day_of_era - 719_468
}

/// The date (year, month 1-12, day 1-31) of a day counted from 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(DAYS_PER_400_YEARS);
    let day_of_era = days - era * DAYS_PER_400_YEARS;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400;
    (if month <= 2 { year + 1 } else { year }, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of a UTC date and time.
    fn at(year: i64, month: u32, day: u32, hour: i64, minute: i64) -> i64 {
        (days_from_civil(year, month, day) * MINUTES_PER_DAY + hour * 60 + minute) * MS_PER_MINUTE
    }

    /// A Unix ms time as `YYYY-MM-DD HH:MM`, for readable failures.
    fn show(ms: i64) -> String {
        let minute = ms.div_euclid(MS_PER_MINUTE);
        let (y, m, d) = civil_from_days(minute.div_euclid(MINUTES_PER_DAY));
        let of_day = minute.rem_euclid(MINUTES_PER_DAY);
        format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", of_day / 60, of_day % 60)
    }

    fn next(expr: &str, after: i64) -> String {
        let schedule = CronSchedule::parse(expr).unwrap();
        show(schedule.next_after(after).unwrap())
    }

    fn error(expr: &str) -> String {
        CronSchedule::parse(expr).unwrap_err().to_string()
    }

    fn values(set: u64) -> Vec<u32> {
        (0..64).filter(|v| has(set, *v)).collect()
    }

    #[test]
    fn the_calendar_conversions_agree_with_known_dates_and_each_other() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(weekday(0), 4, "1970-01-01 was a Thursday");
        assert_eq!(weekday(days_from_civil(2024, 4, 1)), 1, "a Monday");
        for day in -800_000..800_000 {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn fields_take_values_lists_ranges_steps_and_names() {
        let s = CronSchedule::parse("10-50/10,3 */6 1,15 jan-Mar,DEC mon-fri").unwrap();
        assert_eq!(values(s.minutes), [3, 10, 20, 30, 40, 50]);
        assert_eq!(values(s.hours), [0, 6, 12, 18]);
        assert_eq!(values(s.days), [1, 15]);
        assert_eq!(values(s.months), [1, 2, 3, 12]);
        assert_eq!(values(s.weekdays), [1, 2, 3, 4, 5]);
        let s = CronSchedule::parse("5/20 * * * *").unwrap();
        assert_eq!(values(s.minutes), [5, 25, 45]);
        let all = CronSchedule::parse("* * * * *").unwrap();
        assert_eq!(values(all.minutes).len(), 60);
        assert_eq!(values(all.weekdays), [0, 1, 2, 3, 4, 5, 6]);
        // Sunday is 0, 7 or `sun`; blanks around fields do not matter.
        for sunday in ["0 0 * * 0", "0 0 * * 7", " 0  0 * *\tSun "] {
            assert_eq!(values(CronSchedule::parse(sunday).unwrap().weekdays), [0]);
        }
        assert_eq!(
            values(CronSchedule::parse("0 0 * * fri-7").unwrap().weekdays),
            [0, 5, 6]
        );
        assert_eq!(
            "0 3 * * *".parse::<CronSchedule>(),
            CronSchedule::parse("0 3 * * *")
        );
    }

    #[test]
    fn invalid_expressions_are_refused_naming_the_field() {
        let cases = [
            ("61 * * * *", "minute 61 is out of range 0-59"),
            ("* 24 * * *", "hour 24 is out of range 0-23"),
            ("* * 0 * *", "day-of-month 0 is out of range 1-31"),
            ("* * * 13 *", "month 13 is out of range 1-12"),
            ("* * * * 8", "day-of-week 8 is out of range 0-7"),
            ("* * * *", "expected 5 fields"),
            ("* * * * * *", "got 6"),
            ("", "got 0"),
            ("@daily", "got 1"),
            ("1,,2 * * * *", "minute has an empty item"),
            ("1, * * * *", "minute has an empty item"),
            ("x * * * *", "minute \"x\" is not a number"),
            ("-1 * * * *", "minute \"\" is not a number"),
            ("+1 * * * *", "minute \"+1\" is not a number"),
            (
                "* * * foo *",
                "month \"foo\" is not a number or a month name (jan-dec)",
            ),
            (
                "* * * * monday",
                "day-of-week \"monday\" is not a number or a day name",
            ),
            ("* * mon * *", "day-of-month \"mon\" is not a number"),
            ("30-10 * * * *", "minute range 30-10 goes backwards"),
            ("* * * * sat-sun", "day-of-week range 6-0 goes backwards"),
            (
                "*/0 * * * *",
                "minute step \"0\" is not a whole number of at least 1",
            ),
            ("* */x * * *", "hour step \"x\""),
            ("* 1-2/ * * *", "hour step \"\""),
            ("*-5 * * * *", "minute \"*\" is not a number"),
            ("0 0 30 2 *", "it never fires"),
            ("0 0 31 apr,jun,sep,nov *", "it never fires"),
        ];
        for (expr, expected) in cases {
            let err = error(expr);
            assert!(
                err.contains(expected),
                "{expr:?}: expected {expected:?} in {err:?}"
            );
        }
    }

    #[test]
    fn the_next_fire_is_the_first_matching_minute_strictly_after() {
        let quarter = "*/15 * * * *";
        assert_eq!(
            next(quarter, at(2024, 5, 6, 10, 7) + 30_000),
            "2024-05-06 10:15"
        );
        // Exactly at a matching minute: the next one, not the same one again.
        assert_eq!(next(quarter, at(2024, 5, 6, 10, 15)), "2024-05-06 10:30");
        assert_eq!(
            next(quarter, at(2024, 5, 6, 10, 15) - 1),
            "2024-05-06 10:15"
        );
        assert_eq!(next(quarter, at(2024, 5, 6, 23, 50)), "2024-05-07 00:00");
        assert_eq!(next("0 3 * * *", at(2024, 5, 6, 3, 0)), "2024-05-07 03:00");
        assert_eq!(next("0 3 * * *", at(2024, 5, 6, 2, 59)), "2024-05-06 03:00");
    }

    #[test]
    fn the_next_fire_crosses_month_and_year_ends() {
        assert_eq!(next("0 3 * * *", at(2024, 1, 31, 5, 0)), "2024-02-01 03:00");
        assert_eq!(
            next("0 0 31 * *", at(2024, 1, 31, 0, 0)),
            "2024-03-31 00:00"
        );
        assert_eq!(
            next("0 0 31 * *", at(2024, 3, 31, 0, 0)),
            "2024-05-31 00:00"
        );
        assert_eq!(
            next("59 23 31 12 *", at(2024, 12, 31, 23, 59)),
            "2025-12-31 23:59"
        );
        assert_eq!(
            next("0 0 1 jan *", at(2024, 12, 31, 23, 59)),
            "2025-01-01 00:00"
        );
        assert_eq!(
            next("30 * * * *", at(2023, 12, 31, 23, 45)),
            "2024-01-01 00:30"
        );
        assert_eq!(
            next("0 0 30 * *", at(2023, 1, 30, 1, 0)),
            "2023-03-30 00:00"
        );
    }

    #[test]
    fn the_next_fire_knows_leap_years() {
        let leap_day = "0 12 29 2 *";
        assert_eq!(next(leap_day, at(2024, 3, 1, 0, 0)), "2028-02-29 12:00");
        assert_eq!(next(leap_day, at(2023, 6, 1, 0, 0)), "2024-02-29 12:00");
        // 2100 is not a leap year (divisible by 100), 2000 was (divisible by 400).
        assert_eq!(next(leap_day, at(2096, 3, 1, 0, 0)), "2104-02-29 12:00");
        assert_eq!(next(leap_day, at(1999, 1, 1, 0, 0)), "2000-02-29 12:00");
        // The day after the 28th of February.
        assert_eq!(next("0 0 * 3 *", at(2024, 2, 28, 0, 0)), "2024-03-01 00:00");
        assert_eq!(next("0 0 * * *", at(2024, 2, 28, 0, 0)), "2024-02-29 00:00");
        assert_eq!(next("0 0 * * *", at(2023, 2, 28, 0, 0)), "2023-03-01 00:00");
    }

    #[test]
    fn restricted_day_fields_match_either_and_a_star_one_needs_both() {
        // 2024-01-01 was a Monday.
        let first_or_monday = "0 0 1 * mon";
        assert_eq!(
            next(first_or_monday, at(2024, 1, 1, 0, 0)),
            "2024-01-08 00:00"
        );
        assert_eq!(
            next(first_or_monday, at(2024, 1, 29, 0, 0)),
            "2024-02-01 00:00"
        );
        // `*/31` starts with `*`, so it is "the 1st, if it is a Monday": April 2024.
        assert_eq!(
            next("0 0 */31 * mon", at(2024, 1, 1, 0, 0)),
            "2024-04-01 00:00"
        );
        assert_eq!(
            next("0 0 * * mon", at(2024, 1, 2, 0, 0)),
            "2024-01-08 00:00"
        );
        // Either: the 30th never comes in February, but its Mondays do.
        assert_eq!(
            next("0 0 30 2 mon", at(2024, 1, 1, 0, 0)),
            "2024-02-05 00:00"
        );
        assert_eq!(
            next("0 9 * * sat,sun", at(2024, 5, 6, 0, 0)),
            "2024-05-11 09:00"
        );
    }

    #[test]
    fn matches_tells_whether_a_minute_is_in_the_schedule() {
        let nightly = CronSchedule::parse("0 3 * * *").unwrap();
        assert!(nightly.matches(at(2024, 5, 6, 3, 0)));
        assert!(nightly.matches(at(2024, 5, 6, 3, 0) + 59_999));
        assert!(!nightly.matches(at(2024, 5, 6, 3, 1)));
        assert!(!nightly.matches(at(2024, 5, 6, 2, 59)));
        // Before 1970 too.
        assert!(nightly.matches(at(1969, 7, 20, 3, 0)));
    }
}
