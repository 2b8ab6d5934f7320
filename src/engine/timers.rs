//! The engine's deadlines: a heap of timers keyed by event time, fired in deadline order
//! once the partition's watermark passes them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Why a timer exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum TimerKind {
    /// The instance's next liveness deadline (late, down or forget).
    Liveness,
    /// The end of the quiet period of an INSTANCE_RESTARTED alert.
    RestartQuiet,
    /// The end of an open rollup minute (the minute's start is the instance field's key).
    RollupClose(i64),
}

/// A deadline. Ordered by time, then by identity, so that firing order is deterministic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Timer {
    pub(super) at: i64,
    pub(super) app_id: String,
    pub(super) instance_id: String,
    pub(super) kind: TimerKind,
}

/// The pending deadlines, earliest first, in two heaps: liveness deadlines fire on the
/// eager watermark, the others on the watermark, and a deadline between the two must not be
/// taken out and put back at every record (a minute's rollups wait there for the allowed
/// lateness, one per application). A superseded deadline stays in its heap and is recognised
/// as such when it fires (its instance's `scheduled` no longer names it).
#[derive(Debug, Default)]
pub(super) struct Timers {
    liveness: BinaryHeap<Reverse<Timer>>,
    other: BinaryHeap<Reverse<Timer>>,
}

impl Timers {
    pub(super) fn schedule(&mut self, at: i64, app_id: &str, instance_id: &str, kind: TimerKind) {
        let timer =
            Reverse(Timer { at, app_id: app_id.to_owned(), instance_id: instance_id.to_owned(), kind });
        match kind {
            TimerKind::Liveness => self.liveness.push(timer),
            TimerKind::RestartQuiet | TimerKind::RollupClose(_) => self.other.push(timer),
        }
    }

    /// Makes room for this many liveness deadlines and others.
    pub(super) fn reserve_exact(&mut self, liveness: usize, other: usize) {
        self.liveness.reserve_exact(liveness);
        self.other.reserve_exact(other);
    }

    /// The earliest timer due: a liveness deadline at or before `live`, or another at or
    /// before `watermark`; the two in one deadline order, as if in one heap.
    pub(super) fn pop_due(&mut self, live: i64, watermark: i64) -> Option<Timer> {
        let liveness = self.liveness.peek().filter(|t| t.0.at <= live);
        let other = self.other.peek().filter(|t| t.0.at <= watermark);
        let heap = match (liveness, other) {
            (None, None) => return None,
            (Some(l), Some(o)) if o.0 < l.0 => &mut self.other,
            (Some(_), _) => &mut self.liveness,
            (None, Some(_)) => &mut self.other,
        };
        heap.pop().map(|Reverse(timer)| timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_timers_come_in_deadline_order_each_kind_on_its_own_watermark() {
        let mut timers = Timers::default();
        timers.schedule(30, "a", "i", TimerKind::RollupClose(0));
        timers.schedule(10, "b", "i", TimerKind::Liveness);
        timers.schedule(20, "c", "i", TimerKind::RestartQuiet);
        timers.schedule(40, "d", "i", TimerKind::Liveness);
        timers.schedule(50, "e", "i", TimerKind::Liveness);
        let mut fired = Vec::new();
        while let Some(t) = timers.pop_due(45, 25) {
            fired.push(t.app_id);
        }
        assert_eq!(fired, ["b", "c", "d"], "the rollup at 30 waits for the watermark");
        while let Some(t) = timers.pop_due(60, 60) {
            fired.push(t.app_id);
        }
        assert_eq!(fired, ["b", "c", "d", "a", "e"]);
    }
}
