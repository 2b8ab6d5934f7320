//! The decision engine of one partition: per-application state, liveness deadlines, threshold
//! rules, one-minute rollups and snapshots, all on event time.
//!
//! Pure: it takes beats (with their offsets) and wall-clock readings and returns effects
//! (alerts, rollups) and snapshots; it knows nothing of Kafka or PostgreSQL. Deadlines live
//! in a heap of timers keyed by event time, fired when the partition's watermark passes them;
//! a timer-driven alert carries the deadline it crossed as its `event_at`.

pub mod explain;
pub mod rollup;
pub mod state;
pub mod vec_map;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use crate::alert::{Alert, AlertKind, AlertState, Severity, alert_id};
use crate::app_state::{AppSnapshot, StateRecordOut};
use crate::heartbeat::{Heartbeat, InstanceStatus};
use crate::metrics_1m::Rollup;
use crate::minute::{MINUTE_MS, minute_of};
use crate::rules::{CompiledRules, DetectionConfig, Profile, Rule, Transition};
use crate::trend::LeakChange;
use crate::watermark::{Observation, Watermark};
use explain::Explanation;
use rollup::MinuteAcc;
pub use state::{AppState, InstanceState, Liveness, RestoredApps, StateRecord};

/// What processing produced, to be published.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Alert(Alert),
    Rollup(Rollup),
}

/// Where an alert transition comes from: the record position it points at (the beat that
/// caused it, or the watermark position for timer-driven ones) and the wall time it leaves.
#[derive(Debug, Clone, Copy)]
struct Origin {
    partition: i32,
    offset: i64,
    wall_ms: i64,
}

/// The facts of one alert transition; [`Change::emit`] adds its words and origin.
struct Change<'a> {
    app_id: &'a str,
    instance_id: Option<&'a str>,
    kind: AlertKind,
    severity: Severity,
    state: AlertState,
    started_at: i64,
    event_at: i64,
    value: Option<f64>,
    threshold: Option<f64>,
}

impl<'a> Change<'a> {
    /// Fires at `at`, the condition having begun at `started_at`.
    fn firing(
        app_id: &'a str,
        instance_id: Option<&'a str>,
        kind: AlertKind,
        severity: Severity,
        started_at: i64,
        at: i64,
    ) -> Self {
        Change {
            app_id,
            instance_id,
            kind,
            severity,
            state: AlertState::Firing,
            started_at,
            event_at: at,
            value: None,
            threshold: None,
        }
    }

    /// Resolves at `at`; a resolution never precedes its firing (a late beat can be older
    /// than the deadline it answers).
    fn resolved(
        app_id: &'a str,
        instance_id: Option<&'a str>,
        kind: AlertKind,
        severity: Severity,
        started_at: i64,
        at: i64,
    ) -> Self {
        Change {
            state: AlertState::Resolved,
            event_at: at.max(started_at),
            ..Change::firing(app_id, instance_id, kind, severity, started_at, at)
        }
    }

    fn measured(self, value: Option<f64>, threshold: Option<f64>) -> Self {
        Change { value, threshold, ..self }
    }

    fn emit(self, ex: Explanation, origin: Origin) -> Effect {
        Effect::Alert(Alert {
            alert_id: alert_id(self.app_id, self.instance_id, self.kind),
            app_id: self.app_id.to_owned(),
            instance_id: self.instance_id.map(str::to_owned),
            kind: self.kind,
            severity: self.severity,
            state: self.state,
            started_at: self.started_at,
            event_at: self.event_at,
            emitted_at: origin.wall_ms,
            value: self.value,
            threshold: self.threshold,
            summary: ex.summary,
            evidence: ex.evidence,
            recommendations: ex.recommendations,
            source_partition: origin.partition,
            source_offset: origin.offset,
        })
    }
}

/// Why a timer exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum TimerKind {
    /// The instance's next liveness deadline (late, down or forget).
    Liveness,
    /// The end of the quiet period of an INSTANCE_RESTARTED alert.
    RestartQuiet,
    /// The end of an open rollup minute (the minute's start is the instance field's key).
    RollupClose(i64),
}

/// A deadline. Ordered by time, then by identity, so that firing order is deterministic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: i64,
    app_id: String,
    instance_id: String,
    kind: TimerKind,
}

/// Counters the engine keeps for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    pub beats: u64,
    pub out_of_order: u64,
    pub late_for_rollup: u64,
}

/// The state and logic of one partition.
pub struct Engine {
    partition: i32,
    config: DetectionConfig,
    rules: CompiledRules,
    watermark: Watermark,
    apps: HashMap<String, AppState>,
    timers: BinaryHeap<Reverse<Timer>>,
    dirty: BTreeSet<String>,
    /// Leak transitions of the beat being applied (kept to reuse its allocation).
    leak_changes: Vec<LeakChange>,
    /// Offset of the last record seen: the position timer-driven alerts point at.
    last_offset: i64,
    pub stats: EngineStats,
}

impl Engine {
    pub fn new(partition: i32, config: DetectionConfig, rules: CompiledRules) -> Engine {
        Engine {
            partition,
            watermark: Watermark::new(config.watermark()),
            config,
            rules,
            apps: HashMap::new(),
            timers: BinaryHeap::new(),
            dirty: BTreeSet::new(),
            leak_changes: Vec::new(),
            last_offset: -1,
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
        self.apps.values().map(|a| a.instances.len()).sum()
    }

    pub fn app(&self, app_id: &str) -> Option<&AppState> {
        self.apps.get(app_id)
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
        let source = source_hash(&beat.app_id, &beat.instance_id);
        self.watermark.observe(Observation { event_ms: beat.sent_at, broker_ms, source }, wall_ms);
        self.apply_beat(beat, offset, wall_ms, out);
        self.fire_due(wall_ms, out);
    }

    /// The partition has been read to its end.
    pub fn on_end_of_partition(&mut self, wall_ms: i64, out: &mut Vec<Effect>) {
        self.watermark.reached_end(wall_ms);
        self.fire_due(wall_ms, out);
    }

    /// The partition was not read for a while: see [`Watermark::reading_paused`].
    pub fn reading_paused(&mut self) {
        self.watermark.reading_paused();
    }

    /// A clock tick: once caught up, the watermark moves with the wall clock.
    pub fn on_tick(&mut self, wall_ms: i64, out: &mut Vec<Effect>) {
        self.watermark.advance(wall_ms);
        self.fire_due(wall_ms, out);
    }

    /// The `app-state` records (snapshot, version, whole state) of the applications that
    /// changed since the last call, in app order: what [`Engine::restore`] reads back.
    pub fn take_state_records(&mut self) -> Vec<StateRecordOut> {
        let dirty = std::mem::take(&mut self.dirty);
        let updated_at = self.watermark.current().unwrap_or_default();
        dirty
            .into_iter()
            .map(|app_id| {
                let state = self.apps.get(&app_id);
                let snapshot = match state {
                    Some(app) => app.snapshot(&app_id, updated_at),
                    None => AppSnapshot::gone(&app_id, updated_at),
                };
                StateRecordOut::new(&snapshot, state)
            })
            .collect()
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
        let RestoredApps { mut apps, watermark } = restored;
        let timers: usize = apps
            .values()
            .map(|a| {
                a.rollups.len()
                    + a.instances.values().map(|i| 1 + usize::from(i.restarted.is_some())).sum::<usize>()
            })
            .sum();
        engine.timers.reserve_exact(timers);
        for (app_id, app) in apps.iter_mut() {
            let profile = engine.rules.profile_for(app_id, &app.labels);
            for (id, inst) in app.instances.iter_mut() {
                inst.drop_last_ids(); // (records of version 3 kept the newest beat whole)
                let at = next_deadline(&profile, inst);
                inst.scheduled = Some(at);
                engine.schedule(at, app_id, id, TimerKind::Liveness);
                if let Some((_, last)) = inst.restarted {
                    engine.schedule(
                        last + engine.config.restart_quiet_ms,
                        app_id,
                        id,
                        TimerKind::RestartQuiet,
                    );
                }
            }
            for &minute in app.rollups.keys() {
                engine.schedule(minute + MINUTE_MS, app_id, "", TimerKind::RollupClose(minute));
            }
            app.profile = Some(profile);
        }
        engine.apps = apps;
        if let Some(w) = watermark {
            engine.watermark.restore(w);
        }
        engine
    }

    fn schedule(&mut self, at: i64, app_id: &str, instance_id: &str, kind: TimerKind) {
        self.timers.push(Reverse(Timer {
            at,
            app_id: app_id.to_owned(),
            instance_id: instance_id.to_owned(),
            kind,
        }));
    }

    fn apply_beat(&mut self, beat: Heartbeat, offset: i64, wall_ms: i64, out: &mut Vec<Effect>) {
        let t = beat.sent_at;
        let origin = Origin { partition: self.partition, offset, wall_ms };
        let app_id = beat.app_id.clone();
        let instance_id = beat.instance_id.clone();
        if !self.dirty.contains(&app_id) {
            self.dirty.insert(app_id.clone());
        }
        if !self.apps.contains_key(&app_id) {
            let profile = Some(self.rules.profile_for(&beat.app_id, &beat.labels));
            self.apps.insert(app_id.clone(), AppState { profile, ..AppState::default() });
        }
        let app = self.apps.get_mut(&app_id).expect("inserted above");
        let profile = app.profile.clone().expect("set when the app is created");
        app.last_seen = app.last_seen.max(t);
        if app.labels != beat.labels {
            app.labels.clone_from(&beat.labels);
        }

        // Rollup: the beat joins its minute unless that minute was already emitted.
        let minute = minute_of(t);
        let deltas = app.instances.get(&instance_id).map(|i| i.deltas_to(&beat)).unwrap_or_default();
        let wm = self.watermark.current().unwrap_or(i64::MIN);
        let live_wm = self.watermark.liveness().unwrap_or(wm);
        let mut new_minute = false;
        if minute + MINUTE_MS > wm || app.rollups.contains_key(&minute) {
            app.rollups
                .get_or_insert_with(&minute, || {
                    new_minute = true;
                    Box::new(MinuteAcc::new(minute))
                })
                .add(&beat, &deltas);
        } else {
            self.stats.late_for_rollup += 1;
        }

        let known = app.instances.get(&instance_id).map(|i| i.last.sent_at);
        if known.is_some_and(|last| t < last) {
            // An older beat than one already seen: it counts in the rollup, not in liveness.
            self.stats.out_of_order += 1;
            if new_minute {
                self.schedule(minute + MINUTE_MS, &app_id, "", TimerKind::RollupClose(minute));
            }
            return;
        }

        // Deadlines of this app that passed before this beat are facts of event time,
        // whatever the (possibly clamped) watermark says: the app's beats arrive in order, so
        // its instances were silent until now. Other instances' beats may still be within
        // the allowed lateness.
        let ctx = StepContext { profile: &profile, origin };
        let overdue = app.instances.values().any(|i| next_deadline(&profile, i) < t);
        let ids: Vec<String> = if overdue { app.instances.keys().cloned().collect() } else { Vec::new() };
        for id in ids {
            let until = if id == instance_id { t - 1 } else { t - 1 - self.config.allowed_lateness_ms };
            step_liveness(&ctx, app, &app_id, &id, until, out);
        }
        let mut schedule_liveness = false;
        let mut schedule_quiet: Option<i64> = None;
        let app_down_open = app.app_down.take_if(|_| beat.status != InstanceStatus::Stopping);
        if let Some(started) = app_down_open {
            let ex = explain::app_down(AlertState::Resolved, &app_id, app.instances.len());
            out.push(
                Change::resolved(&app_id, None, AlertKind::AppDown, Severity::Critical, started, t)
                    .emit(ex, origin),
            );
        }

        let instance = app.instances.get_or_insert_with(&instance_id, || {
            schedule_liveness = true;
            Box::new(InstanceState::new(beat.clone()))
        });
        let is_new = schedule_liveness;
        if !is_new {
            // Inter-arrival times feed phi-accrual; the gap of an outage (DOWN) is not jitter.
            if instance.liveness != Liveness::Down {
                instance.arrivals.observe((t - instance.last.sent_at) as f64, profile.phi_window);
            }
            // Back from LATE or DOWN: those alerts resolve at this beat's time.
            for (kind, open) in [
                (AlertKind::InstanceLate, instance.late_since),
                (AlertKind::InstanceDown, instance.down_since),
            ] {
                if let Some(started) = open {
                    let ex = explain::liveness(
                        kind,
                        AlertState::Resolved,
                        &app_id,
                        &instance_id,
                        &beat,
                        t - instance.last.sent_at,
                    );
                    let sev =
                        if kind == AlertKind::InstanceDown { Severity::Critical } else { Severity::Warning };
                    out.push(
                        Change::resolved(&app_id, Some(&instance_id), kind, sev, started, t).emit(ex, origin),
                    );
                }
            }
            instance.late_since = None;
            instance.down_since = None;
            if instance.liveness == Liveness::Down {
                transition(&ctx, instance, &app_id, &instance_id, t, out);
            }
            instance.liveness = Liveness::Up;
            // A seq that goes back means a new process.
            if beat.seq < instance.last.seq {
                match instance.restarted {
                    Some((started, _)) => instance.restarted = Some((started, t)),
                    // While it flaps, its restarts are part of the FLAPPING alert.
                    None if instance.flapping_since.is_some() => {}
                    None => {
                        let ex = explain::liveness(
                            AlertKind::InstanceRestarted,
                            AlertState::Firing,
                            &app_id,
                            &instance_id,
                            &instance.last,
                            t - instance.last.sent_at,
                        );
                        let mut ex = ex;
                        ex.evidence.insert("previous_seq".into(), instance.last.seq.to_string());
                        ex.evidence.insert("new_seq".into(), beat.seq.to_string());
                        let change = Change::firing(
                            &app_id,
                            Some(&instance_id),
                            AlertKind::InstanceRestarted,
                            Severity::Warning,
                            t,
                            t,
                        );
                        out.push(change.emit(ex, origin));
                        instance.restarted = Some((t, t));
                    }
                }
                schedule_quiet = Some(t + self.config.restart_quiet_ms);
                // A new process: its resources start a new series.
                instance.trend.restart(&mut self.leak_changes);
            }
        }

        // Threshold rules.
        let requests_per_s = instance.observe_rates(&beat, &deltas);
        let error_rate = instance.error_rate(self.rules.error_rate_min_requests);
        let values = figures_for_rules(&beat, error_rate);
        for &(rule, th) in &profile.rules {
            let Some(value) = values[rule.index()] else { continue };
            let kind = rule.kind();
            if let Some(tr) = instance.rules.observe(rule, t, value, &th) {
                let inst = Some(instance_id.as_str());
                let (change, shown_threshold) = match tr {
                    Transition::Fire { severity, started_at } => {
                        let level = if severity == Severity::Critical { th.critical } else { th.warning };
                        (Change::firing(&app_id, inst, kind, severity, started_at, t), level)
                    }
                    Transition::Resolve { severity, started_at } => {
                        (Change::resolved(&app_id, inst, kind, severity, started_at, t), th.resolve_below)
                    }
                };
                let ex = explain::threshold(
                    kind,
                    change.state,
                    change.severity,
                    value,
                    shown_threshold,
                    &beat,
                    requests_per_s,
                );
                out.push(change.measured(Some(value), Some(shown_threshold)).emit(ex, origin));
            }
        }

        // Leak trends, judged each time a minute of this instance closes.
        if profile.trend.enabled {
            instance.trend.observe(&beat, deltas.requests, &profile.trend, &mut self.leak_changes);
        }
        for change in self.leak_changes.drain(..) {
            let ex = explain::leak(&change, &beat);
            let inst = Some(instance_id.as_str());
            let effect = match change {
                LeakChange::Fire { resource, verdict, started_at } => {
                    let c = Change::firing(&app_id, inst, resource.kind(), verdict.severity, started_at, t);
                    let hours = verdict.exhaustion_in_ms.map(|ms| ms as f64 / 3_600_000.0);
                    let horizon = match verdict.severity {
                        Severity::Critical => profile.trend.critical_horizon_ms,
                        Severity::Warning => profile.trend.warning_horizon_ms,
                    } as f64
                        / 3_600_000.0;
                    c.measured(hours, hours.map(|_| horizon)).emit(ex, origin)
                }
                LeakChange::Resolve { resource, open, .. } => {
                    Change::resolved(&app_id, inst, resource.kind(), open.severity, open.started_at, t)
                        .emit(ex, origin)
                }
            };
            out.push(effect);
        }

        let stopping = beat.status == InstanceStatus::Stopping;
        // A beat behind the watermark its deadlines are judged on counts from there.
        instance.anchor = beat.sent_at.max(live_wm);
        instance.set_last(beat);
        if stopping {
            // A clean shutdown: every open alert of the instance resolves, and it leaves.
            for (kind, sev, started) in instance.open_alerts() {
                let ex =
                    explain::liveness(kind, AlertState::Resolved, &app_id, &instance_id, &instance.last, 0);
                out.push(
                    Change::resolved(&app_id, Some(&instance_id), kind, sev, started, t).emit(ex, origin),
                );
            }
            app.instances.remove(&instance_id);
            app.stopped.insert(instance_id.clone());
        } else {
            app.stopped.remove(&instance_id);
            if let Some(inst) = app.instances.get(&instance_id)
                && inst.scheduled.is_none_or(|s| s > next_deadline(&profile, inst))
            {
                schedule_liveness = true;
            }
        }

        if new_minute {
            self.schedule(minute + MINUTE_MS, &app_id, "", TimerKind::RollupClose(minute));
        }
        if schedule_liveness {
            self.schedule_liveness(&app_id, &instance_id);
        }
        if let Some(at) = schedule_quiet {
            self.schedule(at, &app_id, &instance_id, TimerKind::RestartQuiet);
        }
    }

    fn schedule_liveness(&mut self, app_id: &str, instance_id: &str) {
        let Some(app) = self.apps.get(app_id) else { return };
        let Some(inst) = app.instances.get(instance_id) else { return };
        let at = next_deadline(app.profile.as_ref().expect("set when the app is created"), inst);
        if let Some(inst) = self.apps.get_mut(app_id).and_then(|a| a.instances.get_mut(instance_id)) {
            inst.scheduled = Some(at);
        }
        self.schedule(at, app_id, instance_id, TimerKind::Liveness);
    }

    /// Fires every timer the watermark has passed, in deadline order.
    fn fire_due(&mut self, wall_ms: i64, out: &mut Vec<Effect>) {
        let (Some(wm), Some(live)) = (self.watermark.current(), self.watermark.liveness()) else { return };
        // Liveness deadlines fire on the eager watermark; the others wait for the watermark.
        let mut held = Vec::new();
        while let Some(Reverse(top)) = self.timers.peek() {
            if top.at > live {
                break;
            }
            let Some(Reverse(timer)) = self.timers.pop() else { break };
            if timer.at > wm && timer.kind != TimerKind::Liveness {
                held.push(Reverse(timer));
                continue;
            }
            match timer.kind {
                TimerKind::Liveness => self.fire_liveness(&timer, wall_ms, out),
                TimerKind::RestartQuiet => self.fire_restart_quiet(&timer, wall_ms, out),
                TimerKind::RollupClose(minute) => {
                    if let Some(app) = self.apps.get_mut(&timer.app_id) {
                        if let Some(acc) = app.rollups.remove(&minute) {
                            out.push(Effect::Rollup(acc.finish(&timer.app_id)));
                            // The closed minute leaves the app's state record too, or a
                            // restore would close and publish it again.
                            self.dirty.insert(timer.app_id.clone());
                        }
                        if app.instances.is_empty() && app.rollups.is_empty() && app.app_down.is_none() {
                            self.apps.remove(&timer.app_id);
                        }
                    }
                }
            }
        }
        self.timers.extend(held);
    }

    fn fire_liveness(&mut self, timer: &Timer, wall_ms: i64, out: &mut Vec<Effect>) {
        let Some(inst) = self.apps.get(&timer.app_id).and_then(|a| a.instances.get(&timer.instance_id))
        else {
            return;
        };
        if inst.scheduled != Some(timer.at) {
            return; // superseded by a later schedule
        }
        let wm = self.watermark.liveness().unwrap_or(timer.at);
        let app = self.apps.get_mut(&timer.app_id).expect("checked above");
        let profile = app.profile.clone().expect("set when the app is created");
        let origin = Origin { partition: self.partition, offset: self.last_offset, wall_ms };
        let ctx = StepContext { profile: &profile, origin };
        if let Some(inst) = app.instances.get_mut(&timer.instance_id) {
            inst.scheduled = None;
        }
        step_liveness(&ctx, app, &timer.app_id, &timer.instance_id, wm, out);
        self.dirty.insert(timer.app_id.clone());
        self.schedule_liveness(&timer.app_id, &timer.instance_id);
    }

    fn fire_restart_quiet(&mut self, timer: &Timer, wall_ms: i64, out: &mut Vec<Effect>) {
        let quiet = self.config.restart_quiet_ms;
        let origin = Origin { partition: self.partition, offset: self.last_offset, wall_ms };
        let Some(inst) =
            self.apps.get_mut(&timer.app_id).and_then(|a| a.instances.get_mut(&timer.instance_id))
        else {
            return;
        };
        let Some((started, last)) = inst.restarted else { return };
        if last + quiet != timer.at {
            return; // a later restart extended the quiet period
        }
        inst.restarted = None;
        let mut ex = explain::liveness(
            AlertKind::InstanceRestarted,
            AlertState::Resolved,
            &timer.app_id,
            &timer.instance_id,
            &inst.last,
            0,
        );
        ex.summary = format!("{}/{}: no restart for {} min", timer.app_id, timer.instance_id, quiet / 60_000);
        let kind = AlertKind::InstanceRestarted;
        let change = Change::resolved(
            &timer.app_id,
            Some(&timer.instance_id),
            kind,
            Severity::Warning,
            started,
            timer.at,
        );
        out.push(change.emit(ex, origin));
        self.dirty.insert(timer.app_id.clone());
    }
}

/// What liveness steps need besides the application's state.
struct StepContext<'a> {
    profile: &'a Profile,
    origin: Origin,
}

/// Moves one instance through every liveness deadline up to `until` (UP → LATE → DOWN →
/// forgotten, and the end of a FLAPPING), emitting the alert of each step with the deadline
/// as its event time. While the instance flaps, LATE and DOWN are tracked, not announced.
fn step_liveness(
    ctx: &StepContext<'_>,
    app: &mut AppState,
    app_id: &str,
    instance_id: &str,
    until: i64,
    out: &mut Vec<Effect>,
) {
    let origin = ctx.origin;
    loop {
        let Some(inst) = app.instances.get_mut(instance_id) else { return };
        let due = next_deadline(ctx.profile, inst);
        if due > until {
            return;
        }
        if flap_end(ctx.profile, inst) == Some(due) {
            end_flapping(ctx, inst, app_id, instance_id, due, out);
            app_down_check(app, app_id, due, origin, out);
            continue;
        }
        let silent = due - inst.last.sent_at;
        match inst.liveness {
            Liveness::Up => {
                inst.liveness = Liveness::Late;
                if inst.flapping_since.is_none() {
                    announce_liveness(ctx, inst, app_id, instance_id, due, out);
                }
            }
            Liveness::Late => {
                inst.liveness = Liveness::Down;
                transition(ctx, inst, app_id, instance_id, due, out);
                if inst.flapping_since.is_none() {
                    announce_liveness(ctx, inst, app_id, instance_id, due, out);
                }
                app_down_check(app, app_id, due, origin, out);
            }
            Liveness::Down => {
                // Forgotten: its alerts resolve and it leaves the application.
                for (kind, sev, started) in inst.open_alerts() {
                    let mut ex = explain::liveness(
                        kind,
                        AlertState::Resolved,
                        app_id,
                        instance_id,
                        &inst.last,
                        silent,
                    );
                    ex.summary = format!(
                        "{app_id}/{instance_id}: {} resolved, instance forgotten after {} s of silence",
                        kind.as_str(),
                        silent / 1000
                    );
                    out.push(
                        Change::resolved(app_id, Some(instance_id), kind, sev, started, due).emit(ex, origin),
                    );
                }
                app.instances.remove(instance_id);
                if app.instances.is_empty()
                    && let Some(started) = app.app_down.take()
                {
                    let mut ex = explain::app_down(AlertState::Resolved, app_id, 0);
                    ex.summary = format!("{app_id}: APP_DOWN resolved, every instance forgotten");
                    let change =
                        Change::resolved(app_id, None, AlertKind::AppDown, Severity::Critical, started, due);
                    out.push(change.emit(ex, origin));
                }
                return;
            }
        }
    }
}

/// Fires APP_DOWN at `due` when every instance is DOWN, unless every one of them is
/// flapping (their FLAPPING alerts speak for them until one ends).
fn app_down_check(app: &mut AppState, app_id: &str, due: i64, origin: Origin, out: &mut Vec<Effect>) {
    let all_down = app.instances.values().all(|i| i.liveness == Liveness::Down);
    let all_flapping = app.instances.values().all(|i| i.flapping_since.is_some());
    if app.app_down.is_some() || !all_down || all_flapping {
        return;
    }
    app.app_down = Some(due);
    let ex = explain::app_down(AlertState::Firing, app_id, app.instances.len());
    let change = Change::firing(app_id, None, AlertKind::AppDown, Severity::Critical, due, due);
    out.push(change.measured(Some(app.instances.len() as f64), None).emit(ex, origin));
}

/// The instance's next liveness deadline (late, down or forget, or the end of its
/// FLAPPING), from its state.
fn next_deadline(profile: &Profile, inst: &InstanceState) -> i64 {
    let interval = inst.last.interval_ms;
    let late_at = inst.anchor + late_after(profile, inst);
    let due = match inst.liveness {
        Liveness::Up => late_at,
        Liveness::Late => late_at + profile.down_grace(interval),
        Liveness::Down => late_at + profile.down_grace(interval) + profile.forget_after_ms,
    };
    flap_end(profile, inst).map_or(due, |end| end.min(due))
}

/// Silence after which the instance is LATE: fixed, or from its phi-accrual estimate.
fn late_after(profile: &Profile, inst: &InstanceState) -> i64 {
    let a = &inst.arrivals;
    profile.late_after_observed(inst.last.interval_ms, a.n, a.mean_ms, a.std_ms())
}

/// When an open FLAPPING ends if nothing changes: a window after the last transition.
fn flap_end(profile: &Profile, inst: &InstanceState) -> Option<i64> {
    inst.flapping_since?;
    Some(inst.transitions.back().copied().unwrap_or_default() + profile.flap_window_ms)
}

/// Records an UP/DOWN transition at `t`; with too many in the window, FLAPPING fires and
/// the announced LATE/DOWN alerts resolve (the FLAPPING alert speaks for them).
fn transition(
    ctx: &StepContext<'_>,
    inst: &mut InstanceState,
    app_id: &str,
    instance_id: &str,
    t: i64,
    out: &mut Vec<Effect>,
) {
    inst.record_transition(t);
    let p = ctx.profile;
    if inst.flapping_since.is_some() || p.flap_transitions == 0 {
        return;
    }
    let n = inst.transitions_within(t, p.flap_window_ms);
    if n < p.flap_transitions {
        return;
    }
    for (kind, sev, open) in [
        (AlertKind::InstanceLate, Severity::Warning, inst.late_since.take()),
        (AlertKind::InstanceDown, Severity::Critical, inst.down_since.take()),
    ] {
        if let Some(started) = open {
            let mut ex = explain::liveness(kind, AlertState::Resolved, app_id, instance_id, &inst.last, 0);
            ex.summary =
                format!("{app_id}/{instance_id}: {} resolved, superseded by FLAPPING", kind.as_str());
            out.push(Change::resolved(app_id, Some(instance_id), kind, sev, started, t).emit(ex, ctx.origin));
        }
    }
    inst.flapping_since = Some(t);
    let ex = explain::flapping(AlertState::Firing, app_id, instance_id, &inst.last, n, p.flap_window_ms);
    let change = Change::firing(app_id, Some(instance_id), AlertKind::Flapping, Severity::Warning, t, t);
    out.push(change.measured(Some(n as f64), Some(p.flap_transitions as f64)).emit(ex, ctx.origin));
}

/// Ends an open FLAPPING at `at` and announces where the instance stands now.
fn end_flapping(
    ctx: &StepContext<'_>,
    inst: &mut InstanceState,
    app_id: &str,
    instance_id: &str,
    at: i64,
    out: &mut Vec<Effect>,
) {
    let Some(started) = inst.flapping_since.take() else { return };
    let p = ctx.profile;
    let n = inst.transitions_within(at, p.flap_window_ms);
    let ex = explain::flapping(AlertState::Resolved, app_id, instance_id, &inst.last, n, p.flap_window_ms);
    out.push(
        Change::resolved(app_id, Some(instance_id), AlertKind::Flapping, Severity::Warning, started, at)
            .emit(ex, ctx.origin),
    );
    announce_liveness(ctx, inst, app_id, instance_id, at, out);
}

/// Fires the alert of the instance's liveness (INSTANCE_LATE or INSTANCE_DOWN) at `at`,
/// with the silence measured and the threshold it crossed; nothing while it is UP.
fn announce_liveness(
    ctx: &StepContext<'_>,
    inst: &mut InstanceState,
    app_id: &str,
    instance_id: &str,
    at: i64,
    out: &mut Vec<Effect>,
) {
    let late_after = late_after(ctx.profile, inst);
    let (kind, severity, threshold) = match inst.liveness {
        Liveness::Up => return,
        Liveness::Late => {
            inst.late_since = Some(at);
            (AlertKind::InstanceLate, Severity::Warning, late_after)
        }
        Liveness::Down => {
            inst.down_since = Some(at);
            (
                AlertKind::InstanceDown,
                Severity::Critical,
                late_after + ctx.profile.down_grace(inst.last.interval_ms),
            )
        }
    };
    let silent = at - inst.last.sent_at;
    let ex = explain::liveness(kind, AlertState::Firing, app_id, instance_id, &inst.last, silent);
    let change = Change::firing(app_id, Some(instance_id), kind, severity, at, at);
    out.push(change.measured(Some(silent as f64), Some(threshold as f64)).emit(ex, ctx.origin));
}

/// The figure each threshold rule judges, in [`Rule::ALL`] order.
fn figures_for_rules(b: &Heartbeat, error_rate: Option<f64>) -> [Option<f64>; Rule::COUNT] {
    Rule::ALL.map(|rule| figure(rule, b, error_rate))
}

/// The figure `rule` judges in beat `b`.
fn figure(rule: Rule, b: &Heartbeat, error_rate: Option<f64>) -> Option<f64> {
    match rule {
        Rule::Memory => rollup::memory_ratio(b),
        Rule::Cpu => b.cpu_ratio.map(f64::from),
        Rule::DbPool => match (b.db_pool_in_use, b.db_pool_size, b.db_pool_waiting) {
            (_, _, Some(w)) if w > 0 => Some(1.0),
            (Some(u), Some(s), _) if s > 0 => Some(f64::from(u) / f64::from(s)),
            _ => None,
        },
        Rule::Disk => b.disk_used_ratio.map(f64::from),
        Rule::LatencyP95 => b.latency_p95_ms.map(f64::from),
        Rule::QueueDepth => b.request_queue_depth.map(f64::from),
        Rule::ErrorRate => error_rate,
        Rule::DbQueryP95 => b.db_query_p95_ms.map(f64::from),
    }
}

/// A stable hash of an instance's identity, for the watermark to tell its sources apart.
fn source_hash(app_id: &str, instance_id: &str) -> u64 {
    crate::alert::fnv1a([app_id.as_bytes(), &[0xff], instance_id.as_bytes()])
}

#[cfg(test)]
mod tests;
