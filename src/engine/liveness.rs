//! Liveness: where each instance stands (UP → LATE → DOWN → forgotten), FLAPPING, APP_DOWN
//! and STOPPING. Deadlines come from the instance's newest beat and its application's
//! profile; a beat moves the instance back UP, the passing watermark moves it along.

use super::change::{Change, Origin};
use super::explain;
use super::state::{AppState, InstanceState, Liveness};
use super::timers::{Timer, TimerKind};
use super::{BeatContext, Effect, Engine};
use crate::alert::{AlertKind, AlertState, Severity};
use crate::heartbeat::{Heartbeat, InstanceStatus};
use crate::rules::Profile;

impl Engine {
    /// Schedules the instance's next liveness deadline.
    pub(super) fn schedule_liveness(&mut self, app_id: &str, instance_id: &str) {
        let Some(app) = self.apps.get_mut(app_id) else { return };
        let Some(inst) = app.state.instances.get_mut(instance_id) else { return };
        let at = next_deadline(&app.profile, inst);
        inst.scheduled = Some(at);
        self.timers.schedule(at, app_id, instance_id, TimerKind::Liveness);
    }

    /// A liveness deadline passed: the instance steps through every deadline up to the
    /// watermark, and its next one is scheduled.
    pub(super) fn fire_liveness(&mut self, timer: &Timer, wall_ms: i64, out: &mut Vec<Effect>) {
        let wm = self.watermark.liveness().unwrap_or(timer.at);
        let origin = Origin { partition: self.partition, offset: self.last_offset, wall_ms };
        let Some(app) = self.apps.get_mut(&timer.app_id) else { return };
        let Some(inst) = app.state.instances.get_mut(&timer.instance_id) else { return };
        if inst.scheduled != Some(timer.at) {
            return; // superseded by a later schedule
        }
        inst.scheduled = None;
        // A beat since it was scheduled moved the deadline on without rescheduling (see
        // `stays`): nothing passed, and the state a record holds is unchanged (a restore
        // schedules from the deadline, not from `scheduled`).
        let passed = next_deadline(&app.profile, inst) <= wm;
        if passed {
            let ctx = StepContext { profile: &app.profile, origin };
            step_liveness(&ctx, &mut app.state, &timer.app_id, &timer.instance_id, wm, out);
            self.dirty.insert(timer.app_id.clone());
            self.writes.must_write(&timer.app_id);
        }
        self.schedule_liveness(&timer.app_id, &timer.instance_id);
    }
}

/// Steps the application's instances through the deadlines that passed before this beat.
/// Those are facts of event time, whatever the (possibly clamped) watermark says: the app's
/// beats arrive in order, so its instances were silent until now. Other instances' beats
/// may still be within the allowed lateness.
pub(super) fn catch_up(
    ctx: &BeatContext<'_>,
    app: &mut AppState,
    allowed_lateness_ms: i64,
    out: &mut Vec<Effect>,
) {
    let t = ctx.t;
    if !app.instances.values().any(|i| next_deadline(ctx.profile, i) < t) {
        return;
    }
    let step = ctx.step();
    let ids: Vec<String> = app.instances.keys().cloned().collect();
    for id in ids {
        let until = if id == ctx.instance_id { t - 1 } else { t - 1 - allowed_lateness_ms };
        step_liveness(&step, app, ctx.app_id, &id, until, out);
    }
}

/// A beat, unless it says STOPPING, resolves an open APP_DOWN at its event time.
pub(super) fn resolve_app_down(
    ctx: &BeatContext<'_>,
    app: &mut AppState,
    status: InstanceStatus,
    out: &mut Vec<Effect>,
) {
    let Some(started) = app.app_down.take_if(|_| status != InstanceStatus::Stopping) else { return };
    let ex = explain::app_down(AlertState::Resolved, ctx.app_id, app.instances.len());
    let change = Change::resolved(ctx.app_id, None, AlertKind::AppDown, Severity::Critical, started, ctx.t);
    out.push(change.emit(ex, ctx.origin));
}

/// A known instance beat: it is UP again. Its inter-arrival time feeds phi-accrual (the gap
/// of an outage, DOWN, is not jitter); its open LATE and DOWN alerts resolve at this beat's
/// time; coming back from DOWN is a transition.
pub(super) fn on_arrival(
    ctx: &BeatContext<'_>,
    instance: &mut InstanceState,
    beat: &Heartbeat,
    out: &mut Vec<Effect>,
) {
    let t = ctx.t;
    if instance.liveness != Liveness::Down {
        instance.arrivals.observe((t - instance.last.sent_at) as f64, ctx.profile.phi_window);
    }
    for (kind, open) in
        [(AlertKind::InstanceLate, instance.late_since), (AlertKind::InstanceDown, instance.down_since)]
    {
        if let Some(started) = open {
            let silent = t - instance.last.sent_at;
            let ex = explain::liveness(kind, AlertState::Resolved, ctx.app_id, ctx.instance_id, beat, silent);
            let sev = if kind == AlertKind::InstanceDown { Severity::Critical } else { Severity::Warning };
            let change = Change::resolved(ctx.app_id, Some(ctx.instance_id), kind, sev, started, t);
            out.push(change.emit(ex, ctx.origin));
        }
    }
    instance.late_since = None;
    instance.down_since = None;
    if instance.liveness == Liveness::Down {
        transition(&ctx.step(), instance, ctx.app_id, ctx.instance_id, t, out);
    }
    instance.liveness = Liveness::Up;
}

/// A clean shutdown (STOPPING): every open alert of the instance resolves, and it leaves.
pub(super) fn stop(ctx: &BeatContext<'_>, app: &mut AppState, out: &mut Vec<Effect>) {
    if let Some(instance) = app.instances.get(ctx.instance_id) {
        for (kind, sev, started) in instance.open_alerts() {
            let ex =
                explain::liveness(kind, AlertState::Resolved, ctx.app_id, ctx.instance_id, &instance.last, 0);
            let change = Change::resolved(ctx.app_id, Some(ctx.instance_id), kind, sev, started, ctx.t);
            out.push(change.emit(ex, ctx.origin));
        }
    }
    app.instances.remove(ctx.instance_id);
    app.stopped.insert(ctx.instance_id.to_owned());
}

/// After any other beat the instance is not a stopped one; returns whether its liveness
/// deadline must be scheduled again (none is pending, or the pending one comes too late).
pub(super) fn stays(ctx: &BeatContext<'_>, app: &mut AppState) -> bool {
    app.stopped.remove(ctx.instance_id);
    app.instances
        .get(ctx.instance_id)
        .is_some_and(|inst| inst.scheduled.is_none_or(|s| s > next_deadline(ctx.profile, inst)))
}

/// What liveness steps need besides the application's state.
pub(super) struct StepContext<'a> {
    pub(super) profile: &'a Profile,
    pub(super) origin: Origin,
}

/// Moves one instance through every liveness deadline up to `until` (UP → LATE → DOWN →
/// forgotten, and the end of a FLAPPING), emitting the alert of each step with the deadline
/// as its event time. While the instance flaps, LATE and DOWN are tracked, not announced.
pub(super) fn step_liveness(
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
pub(super) fn next_deadline(profile: &Profile, inst: &InstanceState) -> i64 {
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
