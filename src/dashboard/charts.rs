//! The application page's charts and the fleet table's sparklines: which rollup columns
//! each draws, against which limit, and the leak trend an open leak alert projects; read
//! through [`Reader::series`] over the span that ends at the application's last beat (event
//! time, so a replayed fleet shows too).

use chrono::DateTime;
use serde_json::Value;

use super::svg::{Chart, Level, Series, Trend, Unit, sparkline};
use crate::api::ApiError;
use crate::api::params::ParamError;
use crate::api::queries::Reader;

/// The span a chart covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    Hour,
    SixHours,
    Day,
}

impl Range {
    /// `1h` (the default), `6h` or `24h`.
    pub fn parse(v: Option<&str>) -> Result<Range, ParamError> {
        match v.unwrap_or("1h") {
            "1h" => Ok(Range::Hour),
            "6h" => Ok(Range::SixHours),
            "24h" => Ok(Range::Day),
            other => Err(ParamError {
                param: "range".into(),
                problem: format!("{other:?} is not one of 1h, 6h, 24h"),
            }),
        }
    }

    pub fn millis(self) -> i64 {
        match self {
            Range::Hour => 3_600_000,
            Range::SixHours => 6 * 3_600_000,
            Range::Day => 24 * 3_600_000,
        }
    }
}

/// The limit a chart is drawn against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    None,
    /// A share's whole: 100 %.
    Whole(&'static str),
    /// A figure of the application's latest beat (`last_figures`), e.g. the pool's size.
    Figure(&'static str, &'static str),
}

/// One chart of the application page.
#[derive(Debug)]
pub struct ChartSpec {
    pub name: &'static str,
    pub title: &'static str,
    pub unit: Unit,
    /// Rollup columns and their labels.
    pub series: &'static [(&'static str, &'static str)],
    pub limit: Limit,
    /// The leak alert whose trend is drawn, and whether its figures are shares of the limit
    /// in its evidence (memory: bytes against the limit in bytes).
    pub leak: Option<(&'static str, bool)>,
    /// The value axis reaches at least this.
    pub y_at_least: f64,
}

pub const CHARTS: &[ChartSpec] = &[
    ChartSpec {
        name: "memory",
        title: "Memory used / limit (max of instances)",
        unit: Unit::Ratio,
        series: &[("memory_used_ratio_max", "used")],
        limit: Limit::Whole("limit"),
        leak: Some(("MEMORY_LEAK_SUSPECTED", true)),
        y_at_least: 1.0,
    },
    ChartSpec {
        name: "cpu",
        title: "CPU (share of allotment)",
        unit: Unit::Ratio,
        series: &[("cpu_ratio_mean", "mean"), ("cpu_ratio_max", "max")],
        limit: Limit::Whole("allotment"),
        leak: None,
        y_at_least: 1.0,
    },
    ChartSpec {
        name: "pool",
        title: "DB pool connections in use",
        unit: Unit::Count,
        series: &[("db_pool_in_use_mean", "in use (mean)"), ("db_pool_in_use_max", "in use (max)")],
        limit: Limit::Figure("db_pool_size", "pool size"),
        leak: Some(("CONNECTION_LEAK_SUSPECTED", false)),
        y_at_least: 1.0,
    },
    ChartSpec {
        name: "latency",
        title: "Latency",
        unit: Unit::Millis,
        series: &[("latency_p95_ms_mean", "p95"), ("latency_p99_ms_max", "p99")],
        limit: Limit::None,
        leak: None,
        y_at_least: 10.0,
    },
    ChartSpec {
        name: "errors",
        title: "Error rate (errors / requests)",
        unit: Unit::Ratio,
        series: &[("error_ratio", "errors")],
        limit: Limit::None,
        leak: None,
        y_at_least: 0.05,
    },
    ChartSpec {
        name: "sessions",
        title: "Active sessions",
        unit: Unit::Count,
        series: &[("sessions_active_mean", "mean"), ("sessions_active_max", "max")],
        limit: Limit::None,
        leak: Some(("SESSION_LEAK_SUSPECTED", false)),
        y_at_least: 1.0,
    },
];

const CLASSES: &[&str] = &["s0", "s1", "s2"];

/// The chart `spec` of `app_id` over `range`; `None` for an unknown application.
pub async fn chart(
    reader: &Reader,
    app_id: &str,
    spec: &ChartSpec,
    range: Range,
) -> Result<Option<String>, ApiError> {
    let fields: Vec<&'static str> = spec.series.iter().map(|(f, _)| *f).collect();
    let Some(data) = reader.series(app_id, &fields, range.millis()).await? else { return Ok(None) };
    let needs_app = spec.leak.is_some() || matches!(spec.limit, Limit::Figure(..));
    let app = if needs_app { reader.app(app_id).await? } else { None };
    let series = spec
        .series
        .iter()
        .enumerate()
        .map(|(i, (_, label))| Series {
            label: (*label).into(),
            class: CLASSES[i % CLASSES.len()],
            points: data.points.iter().map(|(t, values)| (t.timestamp_millis(), values[i])).collect(),
        })
        .collect();
    let to = data.end.timestamp_millis();
    let chart = Chart {
        title: spec.title.into(),
        unit: spec.unit,
        from: to - range.millis(),
        to,
        series,
        levels: levels(spec, app.as_ref()),
        trend: spec.leak.and_then(|(kind, shares)| app.as_ref().and_then(|a| leak_trend(a, kind, shares))),
        y_at_least: spec.y_at_least,
    };
    Ok(Some(chart.render()))
}

/// The fleet table's sparkline of `app_id`: memory used / limit over its last hour.
pub async fn spark(reader: &Reader, app_id: &str) -> Result<Option<String>, ApiError> {
    let span = Range::Hour.millis();
    let Some(data) = reader.series(app_id, &["memory_used_ratio_max"], span).await? else { return Ok(None) };
    let points: Vec<(i64, Option<f64>)> =
        data.points.iter().map(|(t, values)| (t.timestamp_millis(), values[0])).collect();
    let to = data.end.timestamp_millis();
    Ok(Some(sparkline(&points, to - span, to, 1.0)))
}

fn levels(spec: &ChartSpec, app: Option<&Value>) -> Vec<Level> {
    match spec.limit {
        Limit::None => Vec::new(),
        Limit::Whole(label) => vec![Level { value: 1.0, label: label.into(), class: "limit" }],
        Limit::Figure(figure, label) => app
            .and_then(|a| a["last_figures"][figure].as_f64())
            .map(|v| vec![Level { value: v, label: format!("{label} {v:.0}"), class: "limit" }])
            .unwrap_or_default(),
    }
}

/// A number the evidence holds as text.
fn evidence(alert: &Value, key: &str) -> Option<f64> {
    alert["evidence"][key].as_str().and_then(|v| v.parse().ok())
}

fn at(v: &Value) -> Option<i64> {
    v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.timestamp_millis())
}

/// The trend of the open `kind` alert that runs out soonest: from its measured level when
/// it fired, at its slope (the projection's, if it has one), to the limit at the projected
/// exhaustion. With `shares`, level and slope are divided by the limit in the evidence (the
/// chart shows shares of it).
pub fn leak_trend(app: &Value, kind: &str, shares: bool) -> Option<Trend> {
    let alerts = app["alerts"].as_array()?;
    let trends = alerts.iter().filter(|a| a["kind"] == kind).filter_map(|a| {
        let scale = if shares { evidence(a, "limit").filter(|l| *l > 0.0)? } else { 1.0 };
        // The line the exhaustion is projected along, where the alert has one.
        let level = evidence(a, "projection_level").or_else(|| evidence(a, "level"))? / scale;
        let slope =
            evidence(a, "projection_slope_per_hour").or_else(|| evidence(a, "slope_per_hour"))? / scale;
        let limit = evidence(a, "limit").map(|l| l / scale);
        let exhaustion = at(&a["evidence"]["projected_exhaustion"]).zip(limit);
        Some(Trend { from: (at(&a["event_at"])?, level), exhaustion, slope_per_hour: slope })
    });
    trends.min_by_key(|t| t.exhaustion.map_or(i64::MAX, |(at, _)| at))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::params::METRIC_FIELDS;

    #[test]
    fn every_chart_draws_rollup_columns() {
        for spec in CHARTS {
            for (field, _) in spec.series {
                assert!(METRIC_FIELDS.contains(field), "{}: {field}", spec.name);
            }
        }
    }

    #[test]
    fn a_memory_leak_alert_gives_a_trend_in_shares_of_the_limit() {
        let app = json!({"alerts": [
            {"kind": "MEMORY_LEAK_SUSPECTED", "event_at": "2026-12-05T10:00:00.000Z",
             "evidence": {"level": "450", "limit": "1000", "slope_per_hour": "120",
                          "projection_level": "500", "projection_slope_per_hour": "100",
                          "projected_exhaustion": "2026-12-05T15:00:00Z"}},
            {"kind": "MEMORY_LEAK_SUSPECTED", "event_at": "2026-12-05T10:00:00.000Z",
             "evidence": {"level": "500", "limit": "1000", "slope_per_hour": "10"}},
            {"kind": "CPU_HIGH", "event_at": "2026-12-05T10:00:00.000Z", "evidence": {}}
        ]});
        let trend = leak_trend(&app, "MEMORY_LEAK_SUSPECTED", true).unwrap();
        let fired = at(&json!("2026-12-05T10:00:00Z")).unwrap();
        assert_eq!(trend.from, (fired, 0.5));
        assert_eq!(trend.slope_per_hour, 0.1);
        assert_eq!(trend.exhaustion, Some((fired + 5 * 3_600_000, 1.0)));
        assert!(leak_trend(&app, "SESSION_LEAK_SUSPECTED", false).is_none());
    }

    #[test]
    fn ranges_are_named() {
        assert_eq!(Range::parse(None).unwrap(), Range::Hour);
        assert_eq!(Range::parse(Some("24h")).unwrap().millis(), 86_400_000);
        assert_eq!(Range::parse(Some("2h")).unwrap_err().param, "range");
    }
}
