//! Which applications' states the next transaction writes to `app-state`.
//!
//! A beat that only accumulates (no alert, no rollup, no new instance, no restart, and
//! decided alike whatever the watermark) leaves its application's state
//! unwritten for up to `detection.state_interval_ms` of event time: the processor commits
//! the partition's offset no further than the first such beat not written yet, so a restore
//! reads it again and applies it to the states that do not hold it (see
//! [`super::Engine::on_record`]). Any other change is written in the transaction that
//! made it, so that nothing a replay could decide otherwise is left to it.

use std::collections::{HashSet, VecDeque};

/// The first beat an application's state holds that is not written yet.
#[derive(Debug, Clone)]
pub(super) struct Unwritten {
    pub(super) offset: i64,
    /// Its event time: the state is written once the watermark is this old plus the
    /// interval.
    pub(super) event_ms: i64,
    pub(super) app_id: String,
}

/// What is to be written, kept between transactions.
#[derive(Debug, Default)]
pub(super) struct Writes {
    /// Applications changed by more than their beats: written at the next take.
    pub(super) due: HashSet<String>,
    /// Applications whose states hold beats not written, by their first such beat, in
    /// offset order. An entry whose application was written since is stale: its `Tracked`
    /// names no unwritten offset, or another one; it is dropped when it reaches the front.
    pub(super) unwritten: VecDeque<Unwritten>,
}

impl Writes {
    /// The state of `app_id` is written at the next take.
    pub(super) fn must_write(&mut self, app_id: &str) {
        if !self.due.contains(app_id) {
            self.due.insert(app_id.to_owned());
        }
    }

    /// A beat at `offset` (event time `event_ms`) was applied to `app_id`, whose first
    /// unwritten beat is `first`: written at the next take unless `deferrable`.
    pub(super) fn beat_applied(
        &mut self,
        app_id: &str,
        first: &mut Option<i64>,
        offset: i64,
        event_ms: i64,
        deferrable: bool,
    ) {
        if !deferrable {
            self.must_write(app_id);
        } else if first.is_none() {
            *first = Some(offset);
            self.unwritten.push_back(Unwritten { offset, event_ms, app_id: app_id.to_owned() });
        }
    }
}
