//! Schedules: when `groupsync serve` runs a job. A schedule is a cron pattern (5 fields, or 6
//! with seconds first) read in the job's IANA time zone, so "0 3 * * *" in "Europe/Paris" is
//! 03:00 Paris time in winter and in summer. Across daylight-saving changes it follows croner
//! (vixie-cron behaviour): a time skipped by the spring change runs right after the gap, and a
//! time repeated by the autumn change runs once. An optional run window ("22:00-06:00", local
//! time, may cross midnight) delays a due run until the window opens.
//!
//! Pure: no clock, no I/O. The daemon asks "when is this job next due after its last run?".

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use std::str::FromStr;

/// Default schedule of a job that names none: daily at 03:00 in its time zone.
pub const DEFAULT_SCHEDULE: &str = "0 3 * * *";

/// A daily run window in local time: `[start, end)`, crossing midnight when `end <= start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl Window {
    /// Parses "HH:MM-HH:MM".
    pub fn parse(s: &str) -> Result<Window, String> {
        let err =
            || format!("window {s:?} is not of the form \"HH:MM-HH:MM\" (e.g. \"22:00-06:00\")");
        let (a, b) = s.split_once('-').ok_or_else(err)?;
        let t = |x: &str| NaiveTime::parse_from_str(x.trim(), "%H:%M").map_err(|_| err());
        let w = Window {
            start: t(a)?,
            end: t(b)?,
        };
        if w.start == w.end {
            return Err(format!("window {s:?} is empty: start and end are equal"));
        }
        Ok(w)
    }

    /// True if a local time is inside the window.
    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.start < self.end {
            t >= self.start && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

/// A job's schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub pattern: String,
    cron: Cron,
    pub tz: Tz,
    pub window: Option<Window>,
}

impl Schedule {
    /// Builds a schedule; errors are sentences naming the bad part.
    pub fn new(
        pattern: Option<&str>,
        tz: Option<&str>,
        window: Option<&str>,
    ) -> Result<Schedule, String> {
        let pattern = pattern.unwrap_or(DEFAULT_SCHEDULE).trim().to_string();
        let n = pattern.split_whitespace().count();
        if n != 5 && n != 6 {
            return Err(format!(
                "schedule {pattern:?} has {n} fields; cron needs 5 (minute hour day month weekday) or 6 (with seconds first)"
            ));
        }
        let cron = Cron::from_str(&pattern)
            .map_err(|e| format!("schedule {pattern:?} is not a valid cron pattern: {e}"))?;
        let tz_name = tz.unwrap_or("UTC");
        let tz = Tz::from_str(tz_name).map_err(|_| format!("timezone {tz_name:?} is not an IANA time zone name such as \"Europe/Paris\" or \"UTC\""))?;
        let window = window.map(Window::parse).transpose()?;
        Ok(Schedule {
            pattern,
            cron,
            tz,
            window,
        })
    }

    /// The first cron time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// When a run due at `due` may start: `due` itself inside the window (or without one), else
    /// the next time the window opens.
    pub fn start_at(&self, due: DateTime<Utc>) -> DateTime<Utc> {
        let Some(w) = self.window else { return due };
        let local = due.with_timezone(&self.tz);
        if w.contains(local.time()) {
            return due;
        }
        let mut date = local.date_naive();
        for _ in 0..3 {
            let naive = date.and_time(w.start);
            // A window opening in a daylight-saving gap opens when the gap ends.
            let open = self
                .tz
                .from_local_datetime(&naive)
                .earliest()
                .or_else(|| {
                    self.tz
                        .from_local_datetime(&(naive + Duration::hours(1)))
                        .earliest()
                })
                .map(|t| t.with_timezone(&Utc));
            if let Some(open) = open
                && open > due
            {
                return open;
            }
            date = date.succ_opt().unwrap_or(date);
        }
        due
    }

    /// When a job whose last run started at `last` may next start. A job that never ran is due
    /// now; a run missed in the past (the daemon was down) is due now, once. Either waits for
    /// the window.
    pub fn due(&self, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> DateTime<Utc> {
        let next = match last {
            None => now,
            Some(last) => match self.next_after(last) {
                Some(n) => n,
                None => return DateTime::<Utc>::MAX_UTC,
            },
        };
        self.start_at(next.max(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn daily_in_a_zone_follows_local_time_across_dst() {
        let s = Schedule::new(Some("0 3 * * *"), Some("Europe/Paris"), None).unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-10T12:00:00Z")).unwrap(),
            utc("2026-01-11T02:00:00Z")
        );
        assert_eq!(
            s.next_after(utc("2026-07-10T12:00:00Z")).unwrap(),
            utc("2026-07-11T01:00:00Z")
        );
    }

    #[test]
    fn spring_gap_runs_after_the_gap_and_autumn_overlap_runs_once() {
        let s = Schedule::new(Some("30 2 * * *"), Some("Europe/Berlin"), None).unwrap();
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
        let spring = s.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(
            spring,
            utc("2026-03-29T01:00:00Z"),
            "03:00 CEST, right after the gap"
        );
        // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        let first = s.next_after(utc("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(first, utc("2026-10-25T00:30:00Z"));
        let next = s.next_after(first).unwrap();
        assert_eq!(
            next,
            utc("2026-10-26T01:30:00Z"),
            "not again at 01:30Z the same night"
        );
    }

    #[test]
    fn windows_delay_a_run_until_they_open() {
        let s = Schedule::new(Some("0 12 * * *"), Some("UTC"), Some("22:00-06:00")).unwrap();
        assert_eq!(
            s.start_at(utc("2026-05-01T12:00:00Z")),
            utc("2026-05-01T22:00:00Z")
        );
        assert_eq!(
            s.start_at(utc("2026-05-01T23:00:00Z")),
            utc("2026-05-01T23:00:00Z")
        );
        assert_eq!(
            s.start_at(utc("2026-05-02T05:59:00Z")),
            utc("2026-05-02T05:59:00Z")
        );
        let day = Schedule::new(None, Some("UTC"), Some("09:00-17:00")).unwrap();
        assert_eq!(
            day.start_at(utc("2026-05-01T18:00:00Z")),
            utc("2026-05-02T09:00:00Z")
        );
    }

    #[test]
    fn a_missed_run_is_due_now_once_and_waits_for_its_window() {
        let s = Schedule::new(Some("0 3 * * *"), Some("UTC"), None).unwrap();
        let now = utc("2026-05-10T10:00:00Z");
        assert_eq!(s.due(Some(utc("2026-05-05T03:00:00Z")), now), now);
        assert_eq!(s.due(None, now), now);
        assert_eq!(s.due(Some(now), now), utc("2026-05-11T03:00:00Z"));
        let w = Schedule::new(Some("0 12 * * *"), Some("UTC"), Some("22:00-06:00")).unwrap();
        assert_eq!(
            w.due(Some(utc("2026-05-05T12:00:00Z")), now),
            utc("2026-05-10T22:00:00Z")
        );
    }

    #[test]
    fn bad_input_is_named() {
        assert!(
            Schedule::new(Some("* * *"), None, None)
                .unwrap_err()
                .contains("3 fields")
        );
        assert!(
            Schedule::new(Some("61 * * * *"), None, None)
                .unwrap_err()
                .contains("not a valid cron")
        );
        assert!(
            Schedule::new(None, Some("Mars/Olympus"), None)
                .unwrap_err()
                .contains("Mars/Olympus")
        );
        assert!(
            Schedule::new(None, None, Some("9-5"))
                .unwrap_err()
                .contains("HH:MM-HH:MM")
        );
        assert_eq!(
            Schedule::new(Some("0 */2 * * * *"), None, None)
                .unwrap()
                .pattern,
            "0 */2 * * * *"
        );
    }
}
