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

/// The pending deadlines, earliest first. A superseded deadline stays in the heap and is
/// recognised as such when it fires (its instance's `scheduled` no longer names it).
#[derive(Debug, Default)]
pub(super) struct Timers(BinaryHeap<Reverse<Timer>>);

impl Timers {
    pub(super) fn schedule(&mut self, at: i64, app_id: &str, instance_id: &str, kind: TimerKind) {
        self.0.push(Reverse(Timer {
            at,
            app_id: app_id.to_owned(),
            instance_id: instance_id.to_owned(),
            kind,
        }));
    }

    pub(super) fn reserve_exact(&mut self, additional: usize) {
        self.0.reserve_exact(additional);
    }

    /// The earliest timer, if it is due at or before `until`.
    pub(super) fn pop_until(&mut self, until: i64) -> Option<Timer> {
        if self.0.peek()?.0.at > until {
            return None;
        }
        self.0.pop().map(|Reverse(timer)| timer)
    }

    /// Puts back timers popped but not yet fired.
    pub(super) fn put_back(&mut self, held: Vec<Timer>) {
        self.0.extend(held.into_iter().map(Reverse));
    }
}
