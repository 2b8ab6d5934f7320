//! Time partitions: daily for `heartbeat_event` and `metric_rollup_1m`, monthly for
//! `alert_event`; created ahead of time, dropped past their retention.
//!
//! A partition is named `<table>_p<YYYYMMDD>` (daily) or `<table>_p<YYYYMM>` (monthly) and
//! covers that UTC day or month; names are how `maintain` finds what to drop.

use chrono::{Datelike, Days, Months, NaiveDate};
use tokio_postgres::{Client, GenericClient};

use super::{QueryContext, StoreError, quoted_schema};
use crate::config::RetentionConfig;

/// How a partitioned table is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

/// One partitioned table and how long it keeps data (`None`: forever).
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub table: &'static str,
    pub period: Period,
    pub keep: Option<u32>,
}

/// The plans for every partitioned table under `retention`.
pub fn plans(retention: &RetentionConfig) -> [Plan; 3] {
    [
        Plan { table: "heartbeat_event", period: Period::Day, keep: Some(retention.raw_days) },
        Plan { table: "metric_rollup_1m", period: Period::Day, keep: Some(retention.rollup_days) },
        Plan {
            table: "alert_event",
            period: Period::Month,
            keep: (retention.alert_months > 0).then_some(retention.alert_months),
        },
    ]
}

/// What `maintain` changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MaintainReport {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
}

/// The first day of each partition `plan` should have on `today`: from yesterday (so a
/// backfill across midnight has a home) through `days_ahead` days ahead.
pub fn wanted_starts(plan: &Plan, today: NaiveDate, days_ahead: u32) -> Vec<NaiveDate> {
    let first = today - Days::new(1);
    let last = today + Days::new(u64::from(days_ahead));
    match plan.period {
        Period::Day => first.iter_days().take_while(|d| *d <= last).collect(),
        Period::Month => {
            let mut m = first.with_day(1).expect("day 1 exists");
            let mut out = Vec::new();
            while m <= last {
                out.push(m);
                m = m + Months::new(1);
            }
            out
        }
    }
}

/// The partition's name and the exclusive end of its range.
pub fn partition_for(plan: &Plan, start: NaiveDate) -> (String, NaiveDate) {
    match plan.period {
        Period::Day => (format!("{}_p{}", plan.table, start.format("%Y%m%d")), start + Days::new(1)),
        Period::Month => (format!("{}_p{}", plan.table, start.format("%Y%m")), start + Months::new(1)),
    }
}

/// The first day of the partition called `name`, if it is one of `plan`'s.
pub fn parse_partition(plan: &Plan, name: &str) -> Option<NaiveDate> {
    let suffix = name.strip_prefix(plan.table)?.strip_prefix("_p")?;
    match plan.period {
        Period::Day if suffix.len() == 8 => NaiveDate::parse_from_str(suffix, "%Y%m%d").ok(),
        Period::Month if suffix.len() == 6 => {
            NaiveDate::parse_from_str(&format!("{suffix}01"), "%Y%m%d").ok()
        }
        _ => None,
    }
}

/// Whether a partition starting on `start` holds only data older than the retention.
pub fn expired(plan: &Plan, start: NaiveDate, today: NaiveDate) -> bool {
    let Some(keep) = plan.keep else { return false };
    let (_, end) = partition_for(plan, start);
    let oldest_kept = match plan.period {
        Period::Day => today - Days::new(u64::from(keep)),
        Period::Month => today.with_day(1).expect("day 1 exists") - Months::new(keep),
    };
    end <= oldest_kept
}

/// The days whose rows a table takes on a given day: none that `maintain` would drop as
/// past its retention, none further ahead than the partitions it creates. The sink creates
/// partitions only inside it, so a beat stamped in 1970 does not leave a partition behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The oldest day kept (`None`: kept forever).
    pub first: Option<NaiveDate>,
    /// The furthest day ahead.
    pub last: NaiveDate,
}

impl Window {
    /// The window of `plan` on `today`, `days_ahead` days ahead.
    pub fn of(plan: &Plan, today: NaiveDate, days_ahead: u32) -> Window {
        let first = plan.keep.map(|keep| match plan.period {
            Period::Day => today - Days::new(u64::from(keep)),
            Period::Month => today.with_day(1).expect("day 1 exists") - Months::new(keep),
        });
        Window { first, last: today + Days::new(u64::from(days_ahead)) }
    }

    pub fn contains(&self, day: NaiveDate) -> bool {
        self.first.is_none_or(|first| first <= day) && day <= self.last
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.first {
            Some(first) => write!(f, "{first} ..= {}", self.last),
            None => write!(f, "..= {}", self.last),
        }
    }
}

/// Creates the partitions wanted on `today` and drops the expired ones.
pub async fn maintain(
    client: &mut Client,
    schema: &str,
    retention: &RetentionConfig,
    today: NaiveDate,
) -> Result<MaintainReport, StoreError> {
    let q = quoted_schema(schema)?;
    let mut report = MaintainReport::default();
    let tx = client.transaction().await.doing("beginning partition maintenance")?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&format!("pulsewatch.partitions.{schema}")])
        .await
        .doing("taking the partition lock")?;
    for plan in plans(retention) {
        let existing: Vec<String> = tx
            .query(
                "SELECT c.relname FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid
                 JOIN pg_class p ON p.oid = i.inhparent
                 JOIN pg_namespace n ON n.oid = p.relnamespace
                 WHERE n.nspname = $1 AND p.relname = $2",
                &[&schema, &plan.table],
            )
            .await
            .doing(format!("listing partitions of {}", plan.table))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for start in wanted_starts(&plan, today, retention.days_ahead) {
            let (name, _) = partition_for(&plan, start);
            if existing.contains(&name) || expired(&plan, start, today) {
                continue;
            }
            report.created.push(ensure(&tx, schema, &plan, start).await?);
        }
        for name in &existing {
            if parse_partition(&plan, name).is_some_and(|start| expired(&plan, start, today)) {
                tx.batch_execute(&format!("DROP TABLE {q}.\"{name}\""))
                    .await
                    .doing(format!("dropping partition {name}"))?;
                report.dropped.push(name.clone());
            }
        }
    }
    tx.commit().await.doing("committing partition maintenance")?;
    Ok(report)
}

/// Creates the partition of `plan` that holds `day`, if it does not exist yet; returns its
/// name. The sink calls this before writing rows of a day it has not seen.
pub async fn ensure(
    client: &impl GenericClient,
    schema: &str,
    plan: &Plan,
    day: NaiveDate,
) -> Result<String, StoreError> {
    let q = quoted_schema(schema)?;
    let start = match plan.period {
        Period::Day => day,
        Period::Month => day.with_day(1).expect("day 1 exists"),
    };
    let (name, end) = partition_for(plan, start);
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {q}.\"{name}\" PARTITION OF {q}.\"{table}\"
         FOR VALUES FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00')",
        table = plan.table
    );
    let mut created = client.batch_execute(&create).await;
    if created.as_ref().is_err_and(lost_a_race) {
        // Another session created it between our check and our insert into the catalog; it
        // has committed by now, and IF NOT EXISTS holds.
        created = client.batch_execute(&create).await;
    }
    created.doing(format!("creating partition {name}"))?;
    Ok(name)
}

/// Whether a CREATE TABLE IF NOT EXISTS failed because another session created the same
/// table at the same moment: duplicate_table, or unique_violation on the catalog's type names.
fn lost_a_race(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| matches!(c.code(), "42P07" | "23505"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    const RAW: Plan = Plan { table: "heartbeat_event", period: Period::Day, keep: Some(7) };
    const ALERTS: Plan = Plan { table: "alert_event", period: Period::Month, keep: Some(2) };

    #[test]
    fn wants_yesterday_through_the_days_ahead() {
        let starts = wanted_starts(&RAW, day("2026-11-30"), 3);
        assert_eq!(
            starts,
            vec![
                day("2026-11-29"),
                day("2026-11-30"),
                day("2026-12-01"),
                day("2026-12-02"),
                day("2026-12-03")
            ]
        );
        let months = wanted_starts(&ALERTS, day("2026-11-30"), 3);
        assert_eq!(months, vec![day("2026-11-01"), day("2026-12-01")]);
    }

    #[test]
    fn names_round_trip() {
        let (name, end) = partition_for(&RAW, day("2026-02-28"));
        assert_eq!(name, "heartbeat_event_p20260228");
        assert_eq!(end, day("2026-03-01"));
        assert_eq!(parse_partition(&RAW, &name), Some(day("2026-02-28")));
        let (name, end) = partition_for(&ALERTS, day("2026-12-01"));
        assert_eq!((name.as_str(), end), ("alert_event_p202612", day("2027-01-01")));
        assert_eq!(parse_partition(&ALERTS, &name), Some(day("2026-12-01")));
        assert_eq!(parse_partition(&RAW, "heartbeat_event_default"), None);
        assert_eq!(parse_partition(&RAW, "metric_rollup_1m_p20260101"), None);
    }

    #[test]
    fn the_window_holds_what_is_kept_and_created_ahead() {
        let today = day("2026-11-25");
        let w = Window::of(&RAW, today, 3);
        assert_eq!(w, Window { first: Some(day("2026-11-18")), last: day("2026-11-28") });
        assert_eq!(w.to_string(), "2026-11-18 ..= 2026-11-28");
        for start in day("2026-11-01").iter_days().take(40) {
            let ahead = start <= today + Days::new(3);
            assert_eq!(w.contains(start), !expired(&RAW, start, today) && ahead, "{start}");
        }
        assert!(!w.contains(day("1970-01-01")));
        let months = Window::of(&ALERTS, today, 3);
        assert_eq!(months.first, Some(day("2026-09-01")));
        assert!(months.contains(day("2026-09-01")) && !months.contains(day("2026-08-31")));
        let forever = Window::of(&Plan { keep: None, ..ALERTS }, today, 3);
        assert!(forever.contains(day("1970-01-01")) && !forever.contains(day("2026-11-29")));
    }

    #[test]
    fn expires_only_what_is_past_the_retention() {
        let today = day("2026-11-25");
        assert!(!expired(&RAW, day("2026-11-18"), today), "the 7th day back is still kept");
        assert!(expired(&RAW, day("2026-11-17"), today));
        assert!(!expired(&ALERTS, day("2026-09-01"), today));
        assert!(expired(&ALERTS, day("2026-08-01"), today));
        let forever = Plan { keep: None, ..ALERTS };
        assert!(!expired(&forever, day("2000-01-01"), today));
    }
}
