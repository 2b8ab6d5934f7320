//! The event-time watermark of one partition.
//!
//! The watermark is the partition's event-time frontier less the allowed lateness. While the
//! consumer lags it moves with the data only, so a catch-up after downtime fires no false
//! missed-beat alerts. Once the partition has been read to its end, it also advances by the
//! wall time elapsed since the partition's last record arrived, so a partition whose
//! applications all died still fires.
//!
//! One producer's clock must not make the others look late, live or in a replay. A beat is
//! *ahead* (counted in `clamped`, its event time kept out of the frontier) when it is further
//! than the maximum skew ahead of the frontier carried forward by the broker's clock since
//! the frontier last moved, or ahead of its own record's broker timestamp (`LogAppendTime`)
//! by more than the skew. An ahead beat moves the frontier only as far as the broker's clock
//! moved, never by its own event time, so the bound does not ratchet: while the broker's
//! clock stands still (a backfill written in seconds), a clock ten minutes ahead moves
//! nothing; live, it moves the frontier at the broker's pace. Both inputs are stored in the
//! log, so a replay decides alike.
//!
//! Liveness deadlines are judged on a second, eager watermark ([`Watermark::liveness`]). The
//! allowed lateness waits for beats that producers sent before others' newer ones; once the
//! partition's data is live (its frontier within the allowed lateness of the broker's
//! clock), the broker's append time tells instead which beats can still come: those
//! appended within the append slack. So a missed beat is announced the slack after its
//! deadline, not the lateness, and a replay, reading the same append times, decides alike.
//! A backfill, appended all at once, is judged on the watermark itself.
//!
//! Event time may also jump for real: an instance that sets the frontier is never ahead of
//! itself (an application alone on its partition coming back after a gap), and two other
//! instances whose beats agree within the skew, with no beat within bounds between them,
//! move the frontier to the earlier of the two (a whole partition coming back).

/// Watermark settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatermarkConfig {
    pub allowed_lateness_ms: i64,
    pub max_skew_ms: i64,
    /// How long a live beat may take from its producer to the broker's log: liveness
    /// deadlines of live data are judged this long after the broker's clock passed them.
    pub append_slack_ms: i64,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig { allowed_lateness_ms: 5_000, max_skew_ms: 60_000, append_slack_ms: 500 }
    }
}

/// One beat as the watermark sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// The beat's `sent_at`: the producer's clock.
    pub event_ms: i64,
    /// The record's broker timestamp (the append time on a `LogAppendTime` topic), if known.
    pub broker_ms: Option<i64>,
    /// Which instance sent it (any stable hash of app and instance id).
    pub source: u64,
}

/// The frontier: the newest event time within bounds, where the broker's clock stood when
/// it last moved, and who moved it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Frontier {
    event_ms: i64,
    broker_ms: Option<i64>,
    source: Option<u64>,
}

/// A jump of the frontier waiting for a second instance to agree.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PendingJump {
    event_ms: i64,
    source: u64,
}

/// The watermark state of one partition. All times in milliseconds; wall times come from
/// the caller, so the logic is testable with a controlled clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    config: WatermarkConfig,
    frontier: Option<Frontier>,
    /// An ahead beat that the broker's clock does not contradict, from an instance other
    /// than the frontier's: the start of a jump if another instance agrees.
    pending: Option<PendingJump>,
    /// Wall time the last record arrived.
    last_arrival_wall_ms: i64,
    /// Whether the partition has been read to its end since its last record.
    caught_up: bool,
    /// Beats found ahead of the frontier or of their broker timestamp by more than the skew.
    pub clamped: u64,
    /// Never moves backwards.
    current: Option<i64>,
    /// The newest broker timestamp seen.
    broker_max: Option<i64>,
    /// The eager watermark for liveness deadlines: at least `current`, never moves backwards.
    liveness: Option<i64>,
}

impl Watermark {
    pub fn new(config: WatermarkConfig) -> Watermark {
        Watermark {
            config,
            frontier: None,
            pending: None,
            last_arrival_wall_ms: 0,
            caught_up: false,
            clamped: 0,
            current: None,
            broker_max: None,
            liveness: None,
        }
    }

    /// A beat arrived at wall time `wall_ms`.
    pub fn observe(&mut self, beat: Observation, wall_ms: i64) {
        self.advance_frontier(beat);
        self.broker_max = self.broker_max.max(beat.broker_ms);
        self.last_arrival_wall_ms = wall_ms;
        self.caught_up = false;
        self.recompute(wall_ms);
    }

    fn advance_frontier(&mut self, beat: Observation) {
        let skew = self.config.max_skew_ms;
        let Some(f) = self.frontier else {
            self.frontier = Some(Frontier {
                event_ms: beat.event_ms,
                broker_ms: beat.broker_ms,
                source: Some(beat.source),
            });
            return;
        };
        // The frontier carried forward by as much as the broker's clock moved since.
        let broker_moved = match (beat.broker_ms, f.broker_ms) {
            (Some(now), Some(then)) => (now - then).max(0),
            _ => 0,
        };
        let carried = f.event_ms + broker_moved;
        let ahead_of_broker = beat.broker_ms.is_some_and(|b| beat.event_ms > b + skew);
        let ahead_of_frontier = beat.event_ms > carried + skew && f.source != Some(beat.source);
        if !ahead_of_broker && !ahead_of_frontier {
            self.pending = None;
            if beat.event_ms > f.event_ms {
                self.frontier = Some(Frontier {
                    event_ms: beat.event_ms,
                    broker_ms: beat.broker_ms,
                    source: Some(beat.source),
                });
            }
            return;
        }
        self.clamped += 1;
        let mut next = Frontier { event_ms: carried.min(beat.event_ms), ..f };
        if broker_moved > 0 {
            next.broker_ms = beat.broker_ms;
        }
        if !ahead_of_broker {
            match self.pending {
                Some(p) if p.source != beat.source && (p.event_ms - beat.event_ms).abs() <= skew => {
                    next = Frontier {
                        event_ms: p.event_ms.min(beat.event_ms),
                        broker_ms: beat.broker_ms,
                        source: Some(beat.source),
                    };
                    self.pending = None;
                }
                Some(p) if p.source == beat.source => {}
                _ => self.pending = Some(PendingJump { event_ms: beat.event_ms, source: beat.source }),
            }
        }
        if next.event_ms > f.event_ms || next.broker_ms != f.broker_ms {
            self.frontier = Some(next);
        }
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

    /// The partition was not read for a while (the processor restored another one): the
    /// wall time that passed says nothing of its producers, so it counts again only from the
    /// next time the partition is read to its end.
    pub fn reading_paused(&mut self) {
        self.caught_up = false;
    }

    /// Re-evaluates with the wall clock at `wall_ms` and returns the watermark.
    pub fn advance(&mut self, wall_ms: i64) -> Option<i64> {
        self.recompute(wall_ms);
        self.current
    }

    pub fn current(&self) -> Option<i64> {
        self.current
    }

    /// The watermark liveness deadlines are judged on (see the module's doc).
    pub fn liveness(&self) -> Option<i64> {
        self.liveness
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up
    }

    fn recompute(&mut self, wall_ms: i64) {
        let Some(f) = self.frontier else { return };
        let idle = if self.caught_up { (wall_ms - self.last_arrival_wall_ms).max(0) } else { 0 };
        let candidate = f.event_ms - self.config.allowed_lateness_ms + idle;
        self.current = Some(self.current.map_or(candidate, |c| c.max(candidate)));
        let live = self
            .broker_max
            .filter(|&b| b - f.event_ms <= self.config.allowed_lateness_ms)
            .map(|b| b.min(f.event_ms) - self.config.append_slack_ms + idle);
        self.liveness = self.liveness.max(self.current).max(live);
    }

    /// Restores the watermark after a restart (the value is persisted with the state).
    pub fn restore(&mut self, watermark_ms: i64) {
        self.current = Some(self.current.map_or(watermark_ms, |c| c.max(watermark_ms)));
        self.liveness = self.liveness.max(self.current);
        let event_ms = watermark_ms + self.config.allowed_lateness_ms;
        if self.frontier.is_none_or(|f| f.event_ms < event_ms) {
            self.frontier = Some(Frontier { event_ms, broker_ms: None, source: None });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000;
    const MIN: i64 = 60_000;

    fn wm() -> Watermark {
        Watermark::new(WatermarkConfig::default())
    }

    /// A beat of instance `source` stamped `event_ms`, with no broker timestamp.
    fn beat(source: u64, event_ms: i64) -> Observation {
        Observation { event_ms, broker_ms: None, source }
    }

    /// A beat appended by the broker at `broker_ms`.
    fn record(source: u64, event_ms: i64, broker_ms: i64) -> Observation {
        Observation { event_ms, broker_ms: Some(broker_ms), source }
    }

    #[test]
    fn follows_the_data_less_the_lateness() {
        let mut w = wm();
        assert_eq!(w.current(), None);
        w.observe(beat(1, 100_000), 0);
        assert_eq!(w.current(), Some(95_000));
        w.observe(beat(2, 90_000), 1);
        assert_eq!(w.current(), Some(95_000), "an older beat does not move it back");
        w.observe(beat(2, 110_000), 2);
        assert_eq!(w.current(), Some(105_000));
    }

    #[test]
    fn does_not_advance_with_wall_time_while_lagging() {
        let mut w = wm();
        w.observe(beat(1, 100_000), 0);
        assert_eq!(w.advance(3_600_000), Some(95_000), "an hour of wall time, still lagging: no move");
    }

    #[test]
    fn advances_with_wall_time_once_caught_up() {
        let mut w = wm();
        w.observe(beat(1, 100_000), 1_000);
        w.reached_end(1_000);
        assert_eq!(w.advance(31_000), Some(125_000), "30 s idle after the end");
        w.observe(beat(2, 126_000), 31_500);
        assert_eq!(w.current(), Some(125_000), "never moves back");
        w.reached_end(31_600);
        assert_eq!(w.advance(41_500), Some(131_000));
    }

    #[test]
    fn a_pause_in_reading_does_not_count_as_silence() {
        let mut w = wm();
        w.observe(beat(1, 100_000), 1_000);
        w.reached_end(1_000);
        w.reading_paused();
        assert_eq!(w.advance(61_000), Some(95_000), "a minute without reading: no move");
        w.reached_end(61_000);
        // Counted from a second before that end, as after any backlog.
        assert_eq!(w.advance(63_000), Some(98_000), "from the next end on, it counts");
    }

    #[test]
    fn reaching_the_end_after_a_slow_backlog_does_not_jump() {
        let mut w = wm();
        w.observe(beat(1, 100_000), 0);
        w.reached_end(600_000);
        assert!(w.current().unwrap() <= 96_000, "{:?}", w.current());
    }

    /// Healthy instances 1..=20 beat every 5 s on time; instance 99 beats with a clock
    /// `ahead` ms ahead. `broker(t)` is the append time of a beat sent at true time t.
    fn fleet_with_one_clock_ahead(ahead: i64, broker: impl Fn(i64) -> i64) -> (Watermark, Vec<(i64, i64)>) {
        let mut w = wm();
        let mut seen = Vec::new();
        for step in 0..120 {
            let t = 1_000_000 + step * 5 * S;
            for source in 1..=20 {
                w.observe(record(source, t + source as i64 * 10, broker(t)), t);
            }
            w.observe(record(99, t + ahead, broker(t)), t);
            seen.push((t, w.current().unwrap()));
        }
        (w, seen)
    }

    #[test]
    fn a_clock_ahead_does_not_drag_a_live_watermark_ahead() {
        for ahead in [10 * MIN, 23 * 60 * MIN] {
            let (w, seen) = fleet_with_one_clock_ahead(ahead, |t| t + 20);
            assert_eq!(w.clamped, 120, "every beat of the clock ahead is counted");
            for (t, current) in seen {
                assert!(
                    current <= t + 300 - 5 * S + 20,
                    "at {t}: watermark {current} ran ahead ({ahead} ms clock)"
                );
            }
        }
    }

    #[test]
    fn a_clock_ahead_does_not_drag_a_backfill_ahead() {
        // Ten minutes of history written in a moment: every record appended at the same time.
        let appended = 1_000_000 + 30 * MIN;
        for ahead in [10 * MIN, 23 * 60 * MIN] {
            let (w, seen) = fleet_with_one_clock_ahead(ahead, |_| appended);
            assert_eq!(w.clamped, 120);
            for (t, current) in seen {
                assert!(
                    current <= t + 300 - 5 * S,
                    "at {t}: watermark {current} ran ahead ({ahead} ms clock)"
                );
            }
        }
    }

    #[test]
    fn two_clocks_ahead_that_disagree_do_not_move_it() {
        let (mut w, t, appended) = (wm(), 1_000_000, 9_000_000);
        w.observe(record(1, t, appended), 0);
        w.observe(record(98, t + 10 * MIN, appended), 0);
        w.observe(record(99, t + 20 * MIN, appended), 0);
        assert_eq!(w.current(), Some(t - 5 * S));
    }

    #[test]
    fn an_instance_alone_coming_back_after_a_gap_moves_it() {
        let mut w = wm();
        w.observe(record(1, 1_000_000, 9_000_000), 0);
        w.observe(record(1, 1_000_000 + 10 * MIN, 9_000_000), 0);
        assert_eq!(w.current(), Some(1_000_000 + 10 * MIN - 5 * S));
        assert_eq!(w.clamped, 0);
    }

    #[test]
    fn a_whole_partition_coming_back_moves_it_once_two_instances_agree() {
        let (mut w, t, appended) = (wm(), 1_000_000, 9_000_000);
        for source in 1..=3 {
            w.observe(record(source, t + source as i64, appended), 0);
        }
        let back = t + 10 * MIN;
        w.observe(record(1, back, appended), 0);
        assert_eq!(w.current(), Some(t + 3 - 5 * S), "one instance alone is not believed");
        w.observe(record(2, back + 200, appended), 0);
        assert_eq!(w.current(), Some(back - 5 * S), "a second one agrees");
        w.observe(record(3, back + 5 * S, appended), 0);
        assert_eq!(w.current(), Some(back));
        assert_eq!(w.clamped, 2);
    }

    #[test]
    fn live_the_broker_clock_carries_the_frontier_past_a_silence() {
        let mut w = wm();
        w.observe(record(1, 1_000_000, 1_000_010), 0);
        w.observe(record(2, 1_000_000 + 10 * MIN, 1_000_010 + 10 * MIN), 0);
        assert_eq!(w.current(), Some(1_000_000 + 10 * MIN - 5 * S), "the broker's clock moved as far");
        assert_eq!(w.clamped, 0);
    }

    #[test]
    fn live_liveness_deadlines_wait_the_append_slack_not_the_lateness() {
        let mut w = wm();
        for step in 0..10 {
            let t = 1_000_000 + step * S;
            w.observe(record(1, t, t + 20), t + 30);
        }
        let newest = 1_000_000 + 9 * S;
        assert_eq!(w.current(), Some(newest - 5 * S));
        assert_eq!(w.liveness(), Some(newest - 500), "the broker's clock less the slack");
        // The last record arrived at newest + 30; two seconds of silence after it.
        w.reached_end(newest + 100);
        assert_eq!(w.advance(newest + 30 + 2 * S), Some(newest - 5 * S + 2 * S));
        assert_eq!(w.liveness(), Some(newest - 500 + 2 * S), "and the wall clock once caught up");
    }

    #[test]
    fn a_backfill_judges_liveness_on_the_watermark() {
        let mut w = wm();
        for step in 0..10 {
            w.observe(record(1, 1_000_000 + step * S, 9_000_000), 0);
        }
        assert_eq!(w.liveness(), w.current());
    }

    #[test]
    fn a_restored_watermark_bounds_clocks_from_there() {
        let mut w = wm();
        w.restore(1_000_000);
        w.observe(record(7, 1_000_000 + 10 * MIN, 1_000_000 + 10 * MIN), 0);
        assert_eq!(w.current(), Some(1_000_000), "one instance after a restore is not believed");
        w.observe(record(8, 1_000_000 + 3 * S, 1_000_000 + 3 * S), 0);
        assert_eq!(w.current(), Some(1_000_000 + 3 * S - 5 * S).max(Some(1_000_000)));
    }
}
