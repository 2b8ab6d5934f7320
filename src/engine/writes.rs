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

use super::{
    AppSnapshot, AppState, Engine, OLD_STATES_PER_TAKE, PartitionMark, QUIET_WRITE_MS, StateRecordOut,
    Tracked,
};
use crate::trend::TrendConfig;

/// Most points of one instance a windows tail holds (see [`max_tail_points`]).
const WINDOWS_TAIL_POINTS: usize = 20;

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

impl Engine {
    /// The `app-state` records of the applications that changed since the last call, in app
    /// order: each one's windows record when those changed, its snapshot when it is due
    /// (see `detection.snapshot_interval_ms`), and its state without its trend windows when
    /// it is due (see this module's doc); then the states whose unwritten beats grew old, and the
    /// partition's mark. What [`Engine::restore_apps`] reads back.
    pub fn take_state_records(&mut self) -> Vec<StateRecordOut> {
        let dirty = std::mem::take(&mut self.dirty);
        let updated_at = self.watermark.current().unwrap_or_default();
        let interval = self.config.snapshot_interval_ms;
        let quiet = self.read_to_end && self.tick_wall_ms - self.read_wall_ms >= QUIET_WRITE_MS;
        let old_before = match quiet {
            true => i64::MAX,
            false => updated_at.saturating_sub(self.config.state_interval_ms),
        };
        let mut records = Vec::with_capacity(dirty.len() + 1);
        for app_id in dirty {
            let must = self.writes.due.remove(&app_id);
            let Some(tracked) = self.apps.get_mut(&app_id) else {
                self.windows_dirty.remove(&app_id);
                records.push(StateRecordOut::snapshot(&AppSnapshot::gone(&app_id, updated_at)));
                records.push(StateRecordOut::state(&app_id, updated_at, self.last_offset, None::<&AppState>));
                continue;
            };
            if let Some(snapshot) = tracked.snapshot_due(&app_id, updated_at, interval) {
                records.push(StateRecordOut::snapshot(&snapshot));
            }
            if must {
                let windows_changed = self.windows_dirty.remove(&app_id);
                write_state(&app_id, tracked, windows_changed, updated_at, &mut records);
            }
        }
        // States that grew old together (a fleet that started together) are written a share
        // at a time, so that no transaction grows large enough to hold the partition's
        // reading up.
        let mut share = OLD_STATES_PER_TAKE.max(self.writes.unwritten.len() / 64);
        while let Some(first) = self.writes.unwritten.front() {
            let tracked = self.apps.get_mut(&first.app_id).filter(|t| t.unwritten == Some(first.offset));
            match tracked {
                Some(_) if share == 0 => break,
                Some(tracked) if first.event_ms <= old_before => {
                    share -= 1;
                    let windows_changed = self.windows_dirty.remove(&first.app_id);
                    write_state(&first.app_id, tracked, windows_changed, updated_at, &mut records);
                }
                Some(_) => break,
                None => {} // written since
            }
            self.writes.unwritten.pop_front();
        }
        if self.last_offset > self.marked {
            let mark = PartitionMark { applied_through: self.last_offset, watermark_ms: updated_at };
            records.push(StateRecordOut::partition(&mark));
            self.marked = self.last_offset;
        }
        records
    }

    /// The offset of the first beat some application's state holds but `app-state` does
    /// not, as of the last [`Engine::take_state_records`]: the partition's offset may be
    /// committed up to it, no further.
    pub fn unwritten_from(&self) -> Option<i64> {
        self.writes.unwritten.front().map(|u| u.offset)
    }

    /// The partition's offset to commit with the records of the last
    /// [`Engine::take_state_records`]: past every record read, unless some state does not
    /// hold its beats written yet. `None` when nothing was read, or when it is the offset
    /// last returned.
    pub fn offset_to_commit(&mut self) -> Option<i64> {
        if self.last_offset < 0 {
            return None;
        }
        let next = self.unwritten_from().map_or(self.last_offset + 1, |from| from.min(self.last_offset + 1));
        (next != self.offset_sent).then(|| {
            self.offset_sent = next;
            next
        })
    }
}

/// Adds the records of `tracked`'s state (its windows too when they changed) to `records`:
/// it is written with every beat applied to it.
fn write_state(
    app_id: &str,
    tracked: &mut Tracked,
    windows_changed: bool,
    updated_at: i64,
    records: &mut Vec<StateRecordOut>,
) {
    let app = &mut tracked.state;
    // The windows change once a minute, the rest at every beat: they are written apart, and
    // mostly as the points added since they were written whole.
    if windows_changed {
        let max_tail = max_tail_points(&tracked.profile.trend, app_id);
        records.push(app.windows_record(app_id, &mut tracked.windows_base, tracked.applied, max_tail));
    }
    let windows = app.take_windows();
    records.push(StateRecordOut::state(app_id, updated_at, tracked.applied, Some(&*app)));
    app.put_windows(windows);
    tracked.written = tracked.applied;
    tracked.unwritten = None;
}

/// Points a windows tail of `app_id` holds at most before the windows are written whole
/// again: a tail is rewritten at every minute, so it costs its length again each time, and
/// it must hold no point the window has dropped since the base (half `lookback_minutes` at
/// most). From half to all of that, by the app id, so that a fleet that started together
/// does not write every base in the same minute.
fn max_tail_points(c: &TrendConfig, app_id: &str) -> usize {
    let most = (c.lookback_minutes as usize / 2).clamp(1, WINDOWS_TAIL_POINTS);
    let spread = crate::alert::fnv1a([app_id.as_bytes()]) % (most as u64 / 2 + 1);
    most - spread as usize
}
