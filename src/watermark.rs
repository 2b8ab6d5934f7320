//! The event-time watermark of one partition.
//!
//! The watermark is the largest event time seen, less the allowed lateness. While the
//! consumer lags it moves with the data only, so a catch-up after downtime fires no false
//! missed-beat alerts. Once the partition has been read to its end, it also advances by the
//! wall time elapsed since the partition's last record arrived, so a partition whose
//! applications all died still fires. A beat stamped further ahead of the watermark than the
//! maximum skew is clamped for watermark purposes (and counted), so one producer's clock
//! cannot make the others look late.

/// Watermark settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatermarkConfig {
    pub allowed_lateness_ms: i64,
    pub max_skew_ms: i64,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig { allowed_lateness_ms: 5_000, max_skew_ms: 60_000 }
    }
}

/// The watermark state of one partition. All times in milliseconds; wall times come from
/// the caller, so the logic is testable with a controlled clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    config: WatermarkConfig,
    /// Largest (clamped) event time seen.
    max_event_ms: Option<i64>,
    /// Wall time the last record arrived.
    last_arrival_wall_ms: i64,
    /// Whether the partition has been read to its end since its last record.
    caught_up: bool,
    /// Beats whose event time was clamped.
    pub clamped: u64,
    /// Never moves backwards.
    current: Option<i64>,
}

impl Watermark {
    pub fn new(config: WatermarkConfig) -> Watermark {
        Watermark {
            config,
            max_event_ms: None,
            last_arrival_wall_ms: 0,
            caught_up: false,
            clamped: 0,
            current: None,
        }
    }

    /// A record with event time `event_ms` arrived at wall time `wall_ms`.
    pub fn observe(&mut self, event_ms: i64, wall_ms: i64) {
        let effective = match self.current {
            Some(wm) if event_ms > wm + self.config.allowed_lateness_ms + self.config.max_skew_ms => {
                self.clamped += 1;
                wm + self.config.allowed_lateness_ms + self.config.max_skew_ms
            }
            _ => event_ms,
        };
        self.max_event_ms = Some(self.max_event_ms.map_or(effective, |m| m.max(effective)));
        self.last_arrival_wall_ms = wall_ms;
        self.caught_up = false;
        self.recompute(wall_ms);
    }

    /// The partition has been read to its end at wall time `wall_ms`.
    pub fn reached_end(&mut self, wall_ms: i64) {
        if !self.caught_up {
            self.caught_up = true;
            // Wall time counts from the later of the last arrival and now-at-EOF; when the
            // last record arrived long before (a slow backlog), do not count that gap.
            self.last_arrival_wall_ms = self.last_arrival_wall_ms.max(wall_ms - 1_000);
        }
        self.recompute(wall_ms);
    }

    /// Re-evaluates with the wall clock at `wall_ms` and returns the watermark.
    pub fn advance(&mut self, wall_ms: i64) -> Option<i64> {
        self.recompute(wall_ms);
        self.current
    }

    pub fn current(&self) -> Option<i64> {
        self.current
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up
    }

    fn recompute(&mut self, wall_ms: i64) {
        let Some(max) = self.max_event_ms else { return };
        let idle = if self.caught_up { (wall_ms - self.last_arrival_wall_ms).max(0) } else { 0 };
        let candidate = max - self.config.allowed_lateness_ms + idle;
        self.current = Some(self.current.map_or(candidate, |c| c.max(candidate)));
    }

    /// Restores the watermark after a restart (the value is persisted with the state).
    pub fn restore(&mut self, watermark_ms: i64) {
        self.current = Some(self.current.map_or(watermark_ms, |c| c.max(watermark_ms)));
        let max = watermark_ms + self.config.allowed_lateness_ms;
        self.max_event_ms = Some(self.max_event_ms.map_or(max, |m| m.max(max)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wm() -> Watermark {
        Watermark::new(WatermarkConfig::default())
    }

    #[test]
    fn follows_the_data_less_the_lateness() {
        let mut w = wm();
        assert_eq!(w.current(), None);
        w.observe(100_000, 0);
        assert_eq!(w.current(), Some(95_000));
        w.observe(90_000, 1);
        assert_eq!(w.current(), Some(95_000), "an older beat does not move it back");
        w.observe(110_000, 2);
        assert_eq!(w.current(), Some(105_000));
    }

    #[test]
    fn does_not_advance_with_wall_time_while_lagging() {
        let mut w = wm();
        w.observe(100_000, 0);
        assert_eq!(w.advance(3_600_000), Some(95_000), "an hour of wall time, still lagging: no move");
    }

    #[test]
    fn advances_with_wall_time_once_caught_up() {
        let mut w = wm();
        w.observe(100_000, 1_000);
        w.reached_end(1_000);
        assert_eq!(w.advance(31_000), Some(125_000), "30 s idle after the end");
        w.observe(126_000, 31_500);
        assert_eq!(w.current(), Some(125_000), "never moves back");
        w.reached_end(31_600);
        assert_eq!(w.advance(41_500), Some(131_000));
    }

    #[test]
    fn reaching_the_end_after_a_slow_backlog_does_not_jump() {
        let mut w = wm();
        w.observe(100_000, 0);
        w.reached_end(600_000);
        assert!(w.current().unwrap() <= 96_000, "{:?}", w.current());
    }

    #[test]
    fn clamps_a_clock_far_ahead() {
        let mut w = wm();
        w.observe(100_000, 0);
        w.observe(100_000 + 3_600_000, 0);
        assert_eq!(w.clamped, 1);
        assert_eq!(w.current(), Some(95_000 + 5_000 + 60_000 - 5_000));
        w.observe(101_000, 0);
        assert_eq!(w.clamped, 1);
    }
}
