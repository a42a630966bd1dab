//! The billing period a run produces batches for.

use chrono::{Datelike, NaiveDate};

/// A half-open date range `[start, end)` with a label used in batch ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Period {
    pub label: String,
    pub start: NaiveDate,
    pub end: NaiveDate,
}

/// Why a period's text is not a period.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error(
        "`{0}` is not a period: write a month as `YYYY-MM` (e.g. 2026-10) or a range as `YYYY-MM-DD..YYYY-MM-DD` (end exclusive)"
    )]
    Malformed(String),
    #[error("period `{0}` is empty: its end must come after its start")]
    Empty(String),
}

impl Period {
    /// `2026-10` (a calendar month) or `2026-10-01..2026-10-16` (end exclusive).
    pub fn parse(text: &str) -> Result<Period, PeriodError> {
        let t = text.trim();
        let bad = || PeriodError::Malformed(t.to_string());
        if let Some((a, b)) = t.split_once("..") {
            let start = NaiveDate::parse_from_str(a.trim(), "%Y-%m-%d").map_err(|_| bad())?;
            let end = NaiveDate::parse_from_str(b.trim(), "%Y-%m-%d").map_err(|_| bad())?;
            if end <= start {
                return Err(PeriodError::Empty(t.to_string()));
            }
            return Ok(Period {
                label: format!("{start}_{end}"),
                start,
                end,
            });
        }
        let start = NaiveDate::parse_from_str(&format!("{t}-01"), "%Y-%m-%d").map_err(|_| bad())?;
        if t.len() != 7 {
            return Err(bad());
        }
        let (y, m) = if start.month() == 12 {
            (start.year() + 1, 1)
        } else {
            (start.year(), start.month() + 1)
        };
        let end = NaiveDate::from_ymd_opt(y, m, 1).ok_or_else(bad)?;
        Ok(Period {
            label: t.to_string(),
            start,
            end,
        })
    }

    /// The current calendar month: a stand-in period for checks and explain, which plan
    /// streams without running them.
    pub fn current_month() -> Period {
        let today = chrono::Utc::now().date_naive();
        let label = format!("{:04}-{:02}", today.year(), today.month());
        Period::parse(&label).unwrap_or(Period {
            label,
            start: today,
            end: today.succ_opt().unwrap_or(today),
        })
    }

    /// Days since 1970-01-01, as Arrow's Date32 counts them.
    pub fn start_days(&self) -> i32 {
        days(self.start)
    }
    pub fn end_days(&self) -> i32 {
        days(self.end)
    }
}

fn days(d: NaiveDate) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    (d - epoch).num_days() as i32
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{} .. {})", self.label, self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_ranges() {
        let p = Period::parse("2026-10").unwrap();
        assert_eq!(
            (p.start.to_string(), p.end.to_string()),
            ("2026-10-01".into(), "2026-11-01".into())
        );
        let dec = Period::parse("2026-12").unwrap();
        assert_eq!(dec.end.to_string(), "2027-01-01");
        let r = Period::parse("2026-10-01..2026-10-16").unwrap();
        assert_eq!(r.label, "2026-10-01_2026-10-16");
        assert_eq!(Period::parse("1970-01").unwrap().start_days(), 0);
        for bad in [
            "2026-13",
            "2026",
            "2026-10-5",
            "october",
            "2026-10-16..2026-10-01",
            "2026-1",
        ] {
            assert!(Period::parse(bad).is_err(), "{bad} should not parse");
        }
    }
}
