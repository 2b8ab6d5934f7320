//! Charts drawn as SVG text, on the server: a time axis, a value axis with a few round
//! ticks, one polyline per series (broken where a minute has no value), horizontal
//! reference lines (a limit, thresholds), and a leak's trend running on to its projected
//! exhaustion. Pure functions of their input, so each mark is unit-tested; the page styles
//! them through their classes.

use std::fmt::Write;

use chrono::{DateTime, Utc};

/// How values are shown on the value axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A share, shown in percent.
    Ratio,
    Millis,
    Count,
}

impl Unit {
    fn format(self, v: f64) -> String {
        match self {
            Unit::Ratio => format!("{:.0}%", v * 100.0),
            Unit::Millis if v >= 1000.0 => format!("{:.1} s", v / 1000.0),
            Unit::Millis => format!("{v:.0} ms"),
            Unit::Count if v.abs() >= 10_000.0 => format!("{:.0}k", v / 1000.0),
            Unit::Count => format!("{v:.0}"),
        }
    }
}

/// One line of the chart: its points (ms since the epoch, value; `None` for a gap).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    /// The CSS class of its line, e.g. `s0`, `s1`.
    pub class: &'static str,
    pub points: Vec<(i64, Option<f64>)>,
}

/// A horizontal reference line (a limit, a threshold).
#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    pub value: f64,
    pub label: String,
    pub class: &'static str,
}

/// A leak's trend: from where it was measured, at its slope, to the limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Trend {
    /// Where the trend starts: ms, value.
    pub from: (i64, f64),
    /// Where it reaches the limit, ms and value, if it does.
    pub exhaustion: Option<(i64, f64)>,
    /// Its slope, value units per hour (drawn to the chart's end when there is no exhaustion).
    pub slope_per_hour: f64,
}

/// What a chart shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub unit: Unit,
    /// The time span shown, ms since the epoch; widened to a projected exhaustion close enough.
    pub from: i64,
    pub to: i64,
    pub series: Vec<Series>,
    pub levels: Vec<Level>,
    pub trend: Option<Trend>,
    /// The value axis starts at zero and reaches at least this.
    pub y_at_least: f64,
}

/// The drawing's size and margins, px.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 24.0;
/// A projected exhaustion within this many spans after the chart's end widens the chart to it.
const EXHAUSTION_WIDENS_WITHIN: i64 = 4;

/// Escapes text for SVG.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A round step giving about `count` ticks over `span`.
fn tick_step(span: f64, count: f64) -> f64 {
    let raw = (span / count).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    let normalised = raw / magnitude;
    let nice = if normalised <= 1.0 {
        1.0
    } else if normalised <= 2.0 {
        2.0
    } else if normalised <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Maps time and value to pixels.
struct Frame {
    from: i64,
    to: i64,
    y_max: f64,
}

impl Frame {
    fn x(&self, t: i64) -> f64 {
        let share = (t - self.from) as f64 / (self.to - self.from).max(1) as f64;
        LEFT + share.clamp(0.0, 1.0) * (WIDTH - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        let share = (v / self.y_max).clamp(0.0, 1.05);
        HEIGHT - BOTTOM - share * (HEIGHT - TOP - BOTTOM)
    }
}

impl Chart {
    /// The time span drawn: the chart's, reaching a projected exhaustion that is near.
    fn span(&self) -> (i64, i64) {
        let near =
            self.trend.as_ref().and_then(|t| t.exhaustion).map(|(at, _)| at).filter(|at| {
                *at > self.to && *at - self.to <= EXHAUSTION_WIDENS_WITHIN * (self.to - self.from)
            });
        match near {
            Some(at) => (self.from, at + (at - self.from) / 20),
            None => (self.from, self.to),
        }
    }

    fn y_max(&self) -> f64 {
        let data = self.series.iter().flat_map(|s| s.points.iter().filter_map(|(_, v)| *v));
        let levels = self.levels.iter().map(|l| l.value);
        let trend = self.trend.as_ref().and_then(|t| t.exhaustion).map(|(_, v)| v);
        let top = data.chain(levels).chain(trend).fold(self.y_at_least, f64::max);
        let step = tick_step(top, 4.0);
        (top / step).ceil().max(1.0) * step
    }

    /// The chart as an SVG document.
    pub fn render(&self) -> String {
        let (from, to) = self.span();
        let frame = Frame { from, to, y_max: self.y_max() };
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}">"#,
            escape(&self.title)
        );
        let _ = write!(svg, r#"<text class="title" x="{LEFT}" y="16">{}</text>"#, escape(&self.title));
        self.legend(&mut svg);
        self.axes(&mut svg, &frame);
        for level in &self.levels {
            let y = frame.y(level.value);
            let _ = write!(
                svg,
                r#"<line class="level {}" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="level-label" x="{}" y="{:.1}">{}</text>"#,
                level.class,
                WIDTH - RIGHT,
                LEFT + 4.0,
                y - 3.0,
                escape(&level.label)
            );
        }
        for series in &self.series {
            for run in runs(&series.points) {
                let coords: Vec<String> =
                    run.iter().map(|(t, v)| format!("{:.1},{:.1}", frame.x(*t), frame.y(*v))).collect();
                let _ = write!(
                    svg,
                    r#"<polyline class="series {}" points="{}"/>"#,
                    series.class,
                    coords.join(" ")
                );
            }
        }
        if let Some(trend) = &self.trend {
            trend_marks(&mut svg, &frame, trend);
        }
        svg.push_str("</svg>");
        svg
    }

    fn legend(&self, svg: &mut String) {
        let mut x = WIDTH - RIGHT;
        for series in self.series.iter().rev() {
            let _ = write!(
                svg,
                r#"<text class="legend {}" x="{x:.1}" y="16" text-anchor="end">{}</text>"#,
                series.class,
                escape(&series.label)
            );
            x -= 8.0 + 7.0 * series.label.chars().count() as f64;
        }
    }

    fn axes(&self, svg: &mut String, frame: &Frame) {
        let step = tick_step(frame.y_max, 4.0);
        let mut v = 0.0;
        while v <= frame.y_max + step / 2.0 {
            let y = frame.y(v);
            let _ = write!(
                svg,
                r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                WIDTH - RIGHT,
                LEFT - 4.0,
                y + 4.0,
                self.unit.format(v)
            );
            v += step;
        }
        let minutes = ((frame.to - frame.from) / 60_000).max(1) as f64;
        let step_min = [5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 180.0, 360.0, 720.0, 1440.0]
            .into_iter()
            .find(|s| minutes / s <= 7.0)
            .unwrap_or(2880.0) as i64;
        let step_ms = step_min * 60_000;
        let mut t = (frame.from / step_ms + 1) * step_ms;
        while t < frame.to {
            let x = frame.x(t);
            let label = DateTime::<Utc>::from_timestamp_millis(t).map(|d| d.format("%H:%M").to_string());
            let _ = write!(
                svg,
                r#"<text class="tick" x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                HEIGHT - 6.0,
                label.unwrap_or_default()
            );
            t += step_ms;
        }
        let _ = write!(
            svg,
            r#"<line class="axis" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/>"#,
            WIDTH - RIGHT,
            y = frame.y(0.0)
        );
    }
}

/// The trend line and, where it reaches the limit within the chart, the exhaustion marker.
fn trend_marks(svg: &mut String, frame: &Frame, trend: &Trend) {
    let (t0, v0) = trend.from;
    let (t1, v1) = match trend.exhaustion {
        Some((at, limit)) if at <= frame.to => (at, limit),
        _ => (frame.to, v0 + trend.slope_per_hour * (frame.to - t0) as f64 / 3_600_000.0),
    };
    let _ = write!(
        svg,
        r#"<line class="trend" data-mark="trend" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}"/>"#,
        frame.x(t0),
        frame.y(v0),
        frame.x(t1),
        frame.y(v1)
    );
    let Some((at, _)) = trend.exhaustion else { return };
    let when = DateTime::<Utc>::from_timestamp_millis(at).map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string());
    let when = when.unwrap_or_default();
    if at <= frame.to {
        let x = frame.x(at);
        let _ = write!(
            svg,
            r#"<g class="exhaustion" data-mark="exhaustion" data-at="{at}"><line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{:.1}"/><text x="{:.1}" y="{:.1}" text-anchor="end">projected exhaustion {when}</text></g>"#,
            HEIGHT - BOTTOM,
            x - 3.0,
            TOP + 12.0
        );
    } else {
        let _ = write!(
            svg,
            r#"<g class="exhaustion" data-mark="exhaustion" data-at="{at}"><text x="{:.1}" y="{:.1}" text-anchor="end">projected exhaustion {when} →</text></g>"#,
            WIDTH - RIGHT - 2.0,
            TOP + 12.0
        );
    }
}

/// The runs of consecutive points that have values.
fn runs(points: &[(i64, Option<f64>)]) -> Vec<Vec<(i64, f64)>> {
    let mut out: Vec<Vec<(i64, f64)>> = vec![Vec::new()];
    for (t, v) in points {
        match v.filter(|v| v.is_finite()) {
            Some(v) => out.last_mut().expect("never empty").push((*t, v)),
            None if out.last().is_some_and(|r| !r.is_empty()) => out.push(Vec::new()),
            None => {}
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

/// A sparkline: one series, no axes, scaled to `[0, max]` (at least `at_least`).
pub fn sparkline(points: &[(i64, Option<f64>)], from: i64, to: i64, at_least: f64) -> String {
    const W: f64 = 120.0;
    const H: f64 = 24.0;
    let max = points.iter().filter_map(|(_, v)| *v).fold(at_least, f64::max);
    let x = |t: i64| ((t - from) as f64 / (to - from).max(1) as f64).clamp(0.0, 1.0) * W;
    let y = |v: f64| H - 1.0 - (v / max).clamp(0.0, 1.0) * (H - 2.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="spark" viewBox="0 0 {W} {H}" width="{W}" height="{H}">"#
    );
    for run in runs(points) {
        let coords: Vec<String> = run.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
        let _ = write!(
            svg,
            r##"<polyline fill="none" stroke="#3b82f6" stroke-width="1.5" points="{}"/>"##,
            coords.join(" ")
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    fn memory_chart(exhaustion_after_end: i64) -> Chart {
        let to = 10 * H;
        Chart {
            title: "Memory <used / limit>".into(),
            unit: Unit::Ratio,
            from: to - H,
            to,
            series: vec![Series {
                label: "used".into(),
                class: "s0",
                points: vec![
                    (to - H, Some(0.5)),
                    (to - H / 2, None),
                    (to - H / 4, Some(0.6)),
                    (to, Some(0.62)),
                ],
            }],
            levels: vec![Level { value: 1.0, label: "limit".into(), class: "limit" }],
            trend: Some(Trend {
                from: (to, 0.62),
                exhaustion: Some((to + exhaustion_after_end, 1.0)),
                slope_per_hour: 0.38 / (exhaustion_after_end as f64 / H as f64),
            }),
            y_at_least: 1.0,
        }
    }

    #[test]
    fn a_near_exhaustion_widens_the_chart_and_is_marked_on_it() {
        let svg = memory_chart(2 * H).render();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains(r#"data-mark="exhaustion""#) && svg.contains("<line x1="), "{svg}");
        assert!(svg.contains("projected exhaustion 1970-01-01 12:00 UTC"), "{svg}");
        assert!(svg.contains(r#"data-mark="trend""#));
        // The gap splits the series in two lines; the title is escaped.
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert!(svg.contains("Memory &lt;used / limit&gt;"));
        assert!(svg.contains(">limit</text>") && svg.contains(">100%</text>"));
    }

    #[test]
    fn a_far_exhaustion_is_named_at_the_edge_and_the_trend_runs_to_it() {
        let svg = memory_chart(30 * H).render();
        assert!(svg.contains("projected exhaustion 1970-01-02 16:00 UTC →"), "{svg}");
        assert!(!svg.contains(r#"data-mark="exhaustion" data-at="108000000"><line"#));
        let trend = Frame { from: 9 * H, to: 10 * H, y_max: 1.0 };
        assert!(svg.contains(&format!(r#"x2="{:.1}""#, trend.x(10 * H))));
    }

    #[test]
    fn ticks_are_round_and_values_are_shown_in_their_unit() {
        assert_eq!(tick_step(1.0, 4.0), 0.5);
        assert_eq!(tick_step(870.0, 4.0), 500.0);
        assert_eq!(tick_step(0.07, 4.0), 0.02);
        assert_eq!(Unit::Ratio.format(0.9), "90%");
        assert_eq!(Unit::Millis.format(2500.0), "2.5 s");
        assert_eq!(Unit::Count.format(42.0), "42");
    }

    #[test]
    fn a_sparkline_scales_to_its_maximum_and_breaks_at_gaps() {
        let svg = sparkline(&[(0, Some(0.0)), (1, Some(2.0)), (2, None), (3, Some(1.0))], 0, 3, 1.0);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("0.0,23.0 40.0,1.0"), "{svg}");
    }
}
