//! The decision engine of one partition: per-application state, liveness deadlines, threshold
//! rules, leak trends, one-minute rollups and snapshots, all on event time.
//!
//! Pure: it takes beats (with their offsets) and wall-clock readings and returns effects
//! (alerts, rollups) and snapshots; it knows nothing of Kafka or PostgreSQL. Deadlines live
//! in a heap of timers keyed by event time (`timers`), fired when the partition's
//! watermark passes them; a timer-driven alert carries the deadline it crossed as its
//! `event_at`. A beat is applied in steps, each in a module of its own: its minute's
//! [`rollup`], `liveness`, `restart`s, `thresholds`, `leaks`; the alerts they raise are
//! `change`s put in words by [`explain`].

mod change;
pub mod explain;
mod leaks;
mod liveness;
mod rates;
mod restart;
pub mod rollup;
pub mod state;
mod thresholds;
mod timers;
pub mod vec_map;
mod writes;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::alert::Alert;
use crate::app_state::{AppSnapshot, PartitionMark, StateRecordOut};
use crate::heartbeat::{Heartbeat, InstanceStatus};
use crate::metrics_1m::Rollup;
use crate::minute::MINUTE_MS;
use crate::rules::{CompiledRules, DetectionConfig, Profile};
use crate::trend::LeakChange;
use crate::watermark::{Observation, Watermark};
use change::Origin;
use liveness::{StepContext, next_deadline};
use rollup::Joined;
pub use state::{AppState, InstanceState, Liveness, RestoredApps, StateRecord, WindowsRecord};
use timers::{TimerKind, Timers};
use writes::Writes;

/// What processing produced, to be published.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Alert(Alert),
    Rollup(Rollup),
}

/// Counters the engine keeps for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    /// Beats processed.
    pub beats: u64,
    /// Beats older than their instance's newest: counted in their rollup, not in liveness.
    pub out_of_order: u64,
    /// Beats whose minute was already emitted: counted nowhere.
    pub late_for_rollup: u64,
    /// Beats applied again after a restore, to states written before them.
    pub replayed: u64,
    /// Alerts and rollups such beats raised again, and were dropped: none, unless a replay
    /// decided otherwise than the first time.
    pub replay_effects: u64,
}

/// One tracked application: its state, the profile it is judged by (from the configuration
/// and its overrides) and what of it was last published; these two are not part of the
/// persisted state.
struct Tracked {
    state: AppState,
    profile: Arc<Profile>,
    /// The snapshot last published, if any since the application was tracked or restored
    /// (or its labels changed).
    published: Option<Published>,
    /// The offset of the newest beat applied to the state.
    applied: i64,
    /// The offset of the newest beat the state last written holds.
    written: i64,
    /// The first beat applied since then, if the state is not written with it yet.
    unwritten: Option<i64>,
    /// The windows base written last, by the offset its state held; none while no base of
    /// this version holds the windows (the next windows record written is then a base).
    windows_base: Option<i64>,
}

/// What a published snapshot showed: the digest of its [`state::Shown`] and its newest beat.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Published {
    shown: u64,
    last_seen: i64,
}

impl Tracked {
    fn new(state: AppState, profile: Arc<Profile>, written: i64) -> Tracked {
        Tracked {
            state,
            profile,
            published: None,
            applied: written,
            written,
            unwritten: None,
            windows_base: None,
        }
    }

    /// The application's snapshot, if it is to be published: what it shows changed, or its
    /// newest beat is `interval_ms` newer than the one last published.
    fn snapshot_due(&mut self, app_id: &str, updated_at: i64, interval_ms: i64) -> Option<AppSnapshot> {
        let shown = self.state.shown();
        let now = Published { shown: shown.digest(), last_seen: self.state.last_seen };
        let due = self
            .published
            .is_none_or(|last| last.shown != now.shown || now.last_seen - last.last_seen >= interval_ms);
        due.then(|| {
            self.published = Some(now);
            self.state.snapshot_showing(shown, app_id, updated_at)
        })
    }
}

/// The state and logic of one partition.
pub struct Engine {
    partition: i32,
    config: DetectionConfig,
    rules: CompiledRules,
    watermark: Watermark,
    apps: HashMap<String, Tracked>,
    timers: Timers,
    /// Applications changed since the last [`Engine::take_state_records`].
    dirty: BTreeSet<String>,
    /// Those of them whose instances' trend windows changed (a minute closed, a process
    /// restarted) or whose instances came: their windows record is written too.
    windows_dirty: HashSet<String>,
    /// Leak transitions of the beat being applied (kept to reuse its allocation).
    leak_changes: Vec<LeakChange>,
    /// States to write, and those holding beats not written yet.
    writes: Writes,
    /// Offset of the last record seen: the position timer-driven alerts point at.
    last_offset: i64,
    /// The last offset a partition mark was written for.
    marked: i64,
    /// The offset [`Engine::offset_to_commit`] last returned.
    offset_sent: i64,
    /// After a restore, the offset of the last record applied before it: records up to it
    /// are replayed into the states that do not hold them yet, and fire no timer.
    replay_through: Option<i64>,
    /// The wall clock when the last record was read, and at the last tick; whether the
    /// partition was read to its end since that record.
    read_wall_ms: i64,
    tick_wall_ms: i64,
    read_to_end: bool,
    pub stats: EngineStats,
}

/// The fewest states grown old a take writes, when more are.
const OLD_STATES_PER_TAKE: usize = 256;

/// A partition read to its end that has read nothing for this long writes every state it
/// holds unwritten: a quiet fleet leaves nothing to replay, and its offsets are committed to
/// the end.
const QUIET_WRITE_MS: i64 = 1_000;

/// The beat being applied, as the steps of [`Engine::apply_beat`] see it.
struct BeatContext<'a> {
    app_id: &'a str,
    instance_id: &'a str,
    /// The beat's event time.
    t: i64,
    origin: Origin,
    /// The profile of the beat's application.
    profile: &'a Profile,
}

impl BeatContext<'_> {
    /// What the liveness steps need of it.
    fn step(&self) -> StepContext<'_> {
        StepContext { profile: self.profile, origin: self.origin }
    }
}

impl Engine {
    pub fn new(partition: i32, config: DetectionConfig, rules: CompiledRules) -> Engine {
        Engine {
            partition,
            watermark: Watermark::new(config.watermark()),
            config,
            rules,
            apps: HashMap::new(),
            timers: Timers::default(),
            dirty: BTreeSet::new(),
            windows_dirty: HashSet::new(),
            leak_changes: Vec::new(),
            writes: Writes::default(),
            last_offset: -1,
            marked: -1,
            offset_sent: -1,
            replay_through: None,
            read_wall_ms: 0,
            tick_wall_ms: 0,
            read_to_end: false,
            stats: EngineStats::default(),
        }
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn watermark(&self) -> Option<i64> {
        self.watermark.current()
    }

    pub fn clamped_beats(&self) -> u64 {
        self.watermark.clamped
    }

    pub fn app_count(&self) -> usize {
        self.apps.len()
    }

    pub fn instance_count(&self) -> usize {
        self.apps.values().map(|a| a.state.instances.len()).sum()
    }

    pub fn app(&self, app_id: &str) -> Option<&AppState> {
        self.apps.get(app_id).map(|a| &a.state)
    }

    /// Processes one valid beat read at `offset`, at wall time `wall_ms`, without a broker
    /// timestamp to bound its clock by (see [`Engine::on_record`]).
    pub fn on_beat(&mut self, beat: Heartbeat, offset: i64, wall_ms: i64, out: &mut Vec<Effect>) {
        self.on_record(beat, offset, None, wall_ms, out);
    }

    /// Processes one valid beat read at `offset` whose record the broker stamped `broker_ms`
    /// (its append time on a `LogAppendTime` topic), at wall time `wall_ms`.
    pub fn on_record(
        &mut self,
        beat: Heartbeat,
        offset: i64,
        broker_ms: Option<i64>,
        wall_ms: i64,
        out: &mut Vec<Effect>,
    ) {
        self.stats.beats += 1;
        self.last_offset = offset;
        (self.read_wall_ms, self.read_to_end) = (wall_ms, false);
        if self.replay_through.is_some_and(|through| offset <= through) {
            self.replay_beat(beat, offset, wall_ms);
            return;
        }
        self.replay_through = None;
        let source = source_hash(&beat.app_id, &beat.instance_id);
        self.watermark.observe(Observation { event_ms: beat.sent_at, broker_ms, source }, wall_ms);
        self.apply_beat(beat, offset, wall_ms, false, out);
        self.fire_due(wall_ms, out);
    }

    /// A record at `offset` that is no beat was read at wall time `wall_ms` (its dead letter
    /// is the processor's).
    pub fn on_skipped(&mut self, offset: i64, wall_ms: i64) {
        self.last_offset = offset;
        (self.read_wall_ms, self.read_to_end) = (wall_ms, false);
    }

    /// Whether records applied before the restore are still to be read again.
    pub fn is_replaying(&self) -> bool {
        self.replay_through.is_some()
    }

    /// Whether the record at `offset` was applied before the restore this engine came from:
    /// it is replayed, and what it caused then (a dead letter, say) is not caused again.
    pub fn replays(&self, offset: i64) -> bool {
        self.replay_through.is_some_and(|through| offset <= through)
    }

    /// A beat applied before the restore: applied again to its application if the state
    /// restored does not hold it. The watermark and the timers were restored past it; the
    /// beat was written unless deferrable, which it is only when the watermark did not
    /// change what it decided, so it is applied on none.
    fn replay_beat(&mut self, beat: Heartbeat, offset: i64, wall_ms: i64) {
        if self.apps.get(&beat.app_id).is_none_or(|tracked| tracked.written >= offset) {
            return; // held by the state restored, or of an application forgotten since
        }
        self.stats.replayed += 1;
        let mut effects = Vec::new();
        self.apply_beat(beat, offset, wall_ms, true, &mut effects);
        if !effects.is_empty() {
            self.stats.replay_effects += effects.len() as u64;
            tracing::warn!(partition = self.partition, offset, effects = ?effects, "engine: a replayed beat decided otherwise than before the restore; its effects are dropped");
        }
    }

    /// The partition has been read to its end.
    pub fn on_end_of_partition(&mut self, wall_ms: i64, out: &mut Vec<Effect>) {
        self.replay_through = None;
        self.read_to_end = true;
        self.watermark.reached_end(wall_ms);
        self.fire_due(wall_ms, out);
    }

    /// The partition was not read for a while: see [`Watermark::reading_paused`].
    pub fn reading_paused(&mut self) {
        self.watermark.reading_paused();
    }

    /// A clock tick: once caught up, the watermark moves with the wall clock.
    pub fn on_tick(&mut self, wall_ms: i64, out: &mut Vec<Effect>) {
        self.tick_wall_ms = wall_ms;
        self.watermark.advance(wall_ms);
        self.fire_due(wall_ms, out);
    }

    /// Rebuilds a partition's engine from its `app-state` records, oldest first (the newest
    /// of each application wins): every application's state and pending deadlines, and the
    /// watermark. Records without state (of version 1, or of applications no longer tracked)
    /// restore nothing.
    pub fn restore(
        partition: i32,
        config: DetectionConfig,
        rules: CompiledRules,
        records: impl IntoIterator<Item = StateRecord>,
    ) -> Engine {
        let mut restored = RestoredApps::default();
        for r in records {
            restored.add(r);
        }
        Engine::restore_apps(partition, config, rules, restored)
    }

    /// As [`Engine::restore`], from what the records restored: the applications' states
    /// become the engine's as they are, each given its rule profile and pending deadlines.
    pub fn restore_apps(
        partition: i32,
        config: DetectionConfig,
        rules: CompiledRules,
        restored: RestoredApps,
    ) -> Engine {
        let mut engine = Engine::new(partition, config, rules);
        let RestoredApps { apps, through, watermark, mut windows, mut tails, mark } = restored;
        let liveness: usize = apps.values().map(|a| a.instances.len()).sum();
        let other: usize = apps
            .values()
            .map(|a| a.rollups.len() + a.instances.values().filter(|i| i.restarted.is_some()).count())
            .sum();
        engine.timers.reserve_exact(liveness, other);
        engine.apps.reserve(apps.len());
        for (app_id, mut app) in apps {
            let profile = engine.rules.profile_for(&app_id, &app.labels);
            let (base, tail) = (windows.remove(&app_id), tails.remove(&app_id));
            let windows_base = engine.restore_windows(&app_id, &mut app, &profile, base, tail);
            for (id, inst) in app.instances.iter_mut() {
                inst.drop_last_ids(); // (records of version 3 kept the newest beat whole)
                let at = next_deadline(&profile, inst);
                inst.scheduled = Some(at);
                engine.timers.schedule(at, &app_id, id, TimerKind::Liveness);
                if let Some((_, last)) = inst.restarted {
                    let quiet_end = last + engine.config.restart_quiet_ms;
                    engine.timers.schedule(quiet_end, &app_id, id, TimerKind::RestartQuiet);
                }
            }
            for &minute in app.rollups.keys() {
                engine.timers.schedule(minute + MINUTE_MS, &app_id, "", TimerKind::RollupClose(minute));
            }
            // A state of version 7 or before holds every beat before the committed offset.
            let written = through.get(&app_id).copied().unwrap_or(i64::MIN);
            let mut tracked = Tracked::new(app, profile, written);
            tracked.windows_base = windows_base;
            engine.apps.insert(app_id, tracked);
        }
        if let Some(w) = watermark.max(mark.map(|m| m.watermark_ms)) {
            engine.watermark.restore(w);
        }
        if let Some(mark) = mark {
            engine.replay_through = Some(mark.applied_through);
            engine.marked = mark.applied_through;
        }
        engine
    }

    /// Gives a restored application's instances the windows of its newest base and of the
    /// tail of that base, if read; returns the base's name.
    fn restore_windows(
        &mut self,
        app_id: &str,
        app: &mut AppState,
        profile: &Profile,
        base: Option<WindowsRecord>,
        tail: Option<WindowsRecord>,
    ) -> Option<i64> {
        let Some(base) = base else {
            // Records before version 6 hold the windows themselves: the next record of the
            // application takes them out, so its windows record must come with it.
            self.windows_dirty.insert(app_id.to_owned());
            self.writes.must_write(app_id);
            return None;
        };
        let tail = tail.filter(|t| t.extends(&base)).map(|t| t.windows);
        app.put_windows_of(base.windows, tail, &profile.trend);
        base.base
    }

    /// Applies one valid beat to its application, step by step in the order their effects
    /// are emitted: its minute's rollup; the deadlines it shows passed; the instance's return
    /// and restart; the threshold rules; the leak trends; a clean stop.
    /// A replayed beat (`replay`) is applied on no watermark: it was deferred only if the
    /// watermark decided nothing of it.
    fn apply_beat(
        &mut self,
        beat: Heartbeat,
        offset: i64,
        wall_ms: i64,
        replay: bool,
        out: &mut Vec<Effect>,
    ) {
        let t = beat.sent_at;
        let app_id = beat.app_id.clone();
        let instance_id = beat.instance_id.clone();
        if !self.dirty.contains(&app_id) {
            self.dirty.insert(app_id.clone());
        }
        let wm = if replay { i64::MIN } else { self.watermark.current().unwrap_or(i64::MIN) };
        let live_wm = if replay { wm } else { self.watermark.liveness().unwrap_or(wm) };
        let effects_before = out.len();
        let interval = self.config.state_interval_ms;
        let Tracked { state: app, profile, applied, unwritten, .. } =
            track(&mut self.apps, &self.rules, &beat);
        *applied = offset;
        let origin = Origin { partition: self.partition, offset, wall_ms };
        let ctx = BeatContext { app_id: &app_id, instance_id: &instance_id, t, origin, profile };

        let deltas = app.instances.get(&instance_id).map(|i| i.deltas_to(&beat)).unwrap_or_default();
        let joined = rollup::join(&mut app.rollups, &beat, &deltas, wm);
        let in_time = follow_join(joined, &app_id, &mut self.timers, &mut self.stats);
        // Whether a replay of the beat decides alike (see `writes`), so far.
        let mut deferrable = interval > 0 && in_time;
        if app.instances.get(&instance_id).is_some_and(|i| t < i.last.sent_at) {
            // An older beat than one already seen: it counts in the rollup, not in liveness.
            self.stats.out_of_order += 1;
            self.writes.beat_applied(&app_id, unwritten, offset, t, deferrable);
            return;
        }

        liveness::catch_up(&ctx, app, self.config.allowed_lateness_ms, out);
        liveness::resolve_app_down(&ctx, app, beat.status, out);
        let mut is_new = false;
        let instance = app.instances.get_or_insert_with(&instance_id, || {
            is_new = true;
            Box::new(InstanceState::new(beat.clone()))
        });
        if !is_new {
            liveness::on_arrival(&ctx, instance, &beat, out);
            let quiet = self.config.restart_quiet_ms;
            if let Some(end) = restart::on_beat(&ctx, instance, &beat, quiet, &mut self.leak_changes, out) {
                self.timers.schedule(end, &app_id, &instance_id, TimerKind::RestartQuiet);
                deferrable = false;
            }
        }
        thresholds::judge(&ctx, instance, &beat, &deltas, self.rules.error_rate_min_requests, out);
        leaks::judge(&ctx, &mut instance.trend, &beat, deltas.requests, &mut self.leak_changes, out);
        // A new instance too: a windows record of the app written before it came (or before
        // one of the same id left) must not give it windows on a restore. A minute closed by
        // the beat is written with the state, whenever that is: a replay closes it alike.
        if instance.trend.take_window_changed() || is_new {
            self.windows_dirty.insert(app_id.clone());
            deferrable &= !is_new;
        }

        let stopping = beat.status == InstanceStatus::Stopping;
        // A beat behind the watermark its deadlines are judged on counts from there.
        instance.anchor = beat.sent_at.max(live_wm);
        deferrable &= live_wm <= beat.sent_at && !stopping;
        instance.set_last(beat);
        let reschedule = if stopping {
            liveness::stop(&ctx, app, out);
            false
        } else {
            liveness::stays(&ctx, app)
        };
        deferrable &= out.len() == effects_before;
        self.writes.beat_applied(&app_id, unwritten, offset, t, deferrable);
        if is_new || reschedule {
            self.schedule_liveness(&app_id, &instance_id);
        }
    }

    /// Fires every timer the watermark has passed, in deadline order.
    fn fire_due(&mut self, wall_ms: i64, out: &mut Vec<Effect>) {
        if self.replay_through.is_some() {
            return; // the restored states are not whole until the replay ends
        }
        let (Some(wm), Some(live)) = (self.watermark.current(), self.watermark.liveness()) else { return };
        // Liveness deadlines fire on the eager watermark; the others wait for the watermark.
        while let Some(timer) = self.timers.pop_due(live, wm) {
            match timer.kind {
                TimerKind::Liveness => self.fire_liveness(&timer, wall_ms, out),
                TimerKind::RestartQuiet => self.fire_restart_quiet(&timer, wall_ms, out),
                TimerKind::RollupClose(minute) => self.close_minute(&timer.app_id, minute, out),
            }
        }
    }

    /// The watermark passed the end of one of the application's minutes: its rollup is
    /// emitted, and an application with nothing left to track is forgotten.
    fn close_minute(&mut self, app_id: &str, minute: i64, out: &mut Vec<Effect>) {
        let Some(app) = self.apps.get_mut(app_id) else { return };
        let app = &mut app.state;
        if let Some(acc) = app.rollups.remove(&minute) {
            out.push(Effect::Rollup(acc.finish(app_id)));
            // The closed minute leaves the app's state record too, or a restore would close
            // and publish it again.
            self.dirty.insert(app_id.to_owned());
            self.writes.must_write(app_id);
        }
        if app.instances.is_empty() && app.rollups.is_empty() && app.app_down.is_none() {
            self.apps.remove(app_id);
        }
    }
}

/// Schedules the close of a minute a beat opened, or counts a beat too late for its minute;
/// whether the beat joined its minute in time.
fn follow_join(joined: Joined, app_id: &str, timers: &mut Timers, stats: &mut EngineStats) -> bool {
    match joined {
        Joined::Opened(minute) => {
            timers.schedule(minute + MINUTE_MS, app_id, "", TimerKind::RollupClose(minute));
            true
        }
        Joined::Added => true,
        Joined::TooLate => {
            stats.late_for_rollup += 1;
            false
        }
    }
}

/// The application of `beat`, tracked from its first beat on with its profile; its newest
/// event time and its labels follow the beat.
fn track<'a>(
    apps: &'a mut HashMap<String, Tracked>,
    rules: &CompiledRules,
    beat: &Heartbeat,
) -> &'a mut Tracked {
    if !apps.contains_key(&beat.app_id) {
        let profile = rules.profile_for(&beat.app_id, &beat.labels);
        apps.insert(beat.app_id.clone(), Tracked::new(AppState::default(), profile, i64::MIN));
    }
    let tracked = apps.get_mut(&beat.app_id).expect("inserted above");
    let app = &mut tracked.state;
    app.last_seen = app.last_seen.max(beat.sent_at);
    if app.labels != beat.labels {
        app.labels.clone_from(&beat.labels);
        tracked.published = None;
    }
    tracked
}

/// A stable hash of an instance's identity, for the watermark to tell its sources apart.
fn source_hash(app_id: &str, instance_id: &str) -> u64 {
    crate::alert::fnv1a([app_id.as_bytes(), &[0xff], instance_id.as_bytes()])
}

#[cfg(test)]
mod tests;
