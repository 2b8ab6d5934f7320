//! Restarts: a seq that goes back means a new process. INSTANCE_RESTARTED fires, and
//! resolves on its own after a quiet period without another restart.

use super::change::{Change, Origin};
use super::explain;
use super::state::InstanceState;
use super::timers::Timer;
use super::{BeatContext, Effect, Engine};
use crate::alert::{AlertKind, AlertState, Severity};
use crate::heartbeat::Heartbeat;
use crate::trend::LeakChange;

/// Judges whether `beat` comes from a new process of a known instance. If so,
/// INSTANCE_RESTARTED fires (or, while it is open, its quiet period starts again; while the
/// instance flaps, FLAPPING speaks for it), the instance's resources start a new trend series
/// (closing its leak alerts into `leak_changes`), and the end of the quiet period is returned.
///
/// An open alert whose quiet period ended before this beat resolved then, whether or not the
/// watermark has passed that end yet (the instance's beats arrive in order): it resolves here,
/// and this restart fires anew. Otherwise the decision would hang on how far the watermark
/// had moved when the beat was read, which differs between a live run and a replay.
pub(super) fn on_beat(
    ctx: &BeatContext<'_>,
    instance: &mut InstanceState,
    beat: &Heartbeat,
    quiet_ms: i64,
    leak_changes: &mut Vec<LeakChange>,
    out: &mut Vec<Effect>,
) -> Option<i64> {
    if beat.seq >= instance.last.seq {
        return None;
    }
    let t = ctx.t;
    if let Some((started, last)) = instance.restarted
        && last + quiet_ms < t
    {
        instance.restarted = None;
        let quiet = Quiet { app_id: ctx.app_id, instance_id: ctx.instance_id, started, at: last + quiet_ms };
        out.push(quiet.resolved(instance, quiet_ms, ctx.origin));
    }
    match instance.restarted {
        Some((started, _)) => instance.restarted = Some((started, t)),
        None if instance.flapping_since.is_some() => {}
        None => {
            let kind = AlertKind::InstanceRestarted;
            let silent = t - instance.last.sent_at;
            let mut ex = explain::liveness(
                kind,
                AlertState::Firing,
                ctx.app_id,
                ctx.instance_id,
                &instance.last,
                silent,
            );
            ex.evidence.insert("previous_seq".into(), instance.last.seq.to_string());
            ex.evidence.insert("new_seq".into(), beat.seq.to_string());
            let change = Change::firing(ctx.app_id, Some(ctx.instance_id), kind, Severity::Warning, t, t);
            out.push(change.emit(ex, ctx.origin));
            instance.restarted = Some((t, t));
        }
    }
    instance.trend.restart(leak_changes);
    Some(t + quiet_ms)
}

/// The end of an INSTANCE_RESTARTED alert's quiet period.
struct Quiet<'a> {
    app_id: &'a str,
    instance_id: &'a str,
    /// When the alert fired.
    started: i64,
    /// When its quiet period ended: the resolution's event time.
    at: i64,
}

impl Quiet<'_> {
    fn resolved(&self, inst: &InstanceState, quiet_ms: i64, origin: Origin) -> Effect {
        let kind = AlertKind::InstanceRestarted;
        let mut ex =
            explain::liveness(kind, AlertState::Resolved, self.app_id, self.instance_id, &inst.last, 0);
        ex.summary =
            format!("{}/{}: no restart for {} min", self.app_id, self.instance_id, quiet_ms / 60_000);
        let instance = Some(self.instance_id);
        let change = Change::resolved(self.app_id, instance, kind, Severity::Warning, self.started, self.at);
        change.emit(ex, origin)
    }
}

impl Engine {
    /// The quiet period of an INSTANCE_RESTARTED alert ended: it resolves, unless a later
    /// restart extended it (or a later restart resolved it already).
    pub(super) fn fire_restart_quiet(&mut self, timer: &Timer, wall_ms: i64, out: &mut Vec<Effect>) {
        let quiet_ms = self.config.restart_quiet_ms;
        let origin = Origin { partition: self.partition, offset: self.last_offset, wall_ms };
        let Some(inst) =
            self.apps.get_mut(&timer.app_id).and_then(|a| a.state.instances.get_mut(&timer.instance_id))
        else {
            return;
        };
        let Some((started, last)) = inst.restarted else { return };
        if last + quiet_ms != timer.at {
            return; // a later restart extended the quiet period
        }
        inst.restarted = None;
        let quiet = Quiet { app_id: &timer.app_id, instance_id: &timer.instance_id, started, at: timer.at };
        out.push(quiet.resolved(inst, quiet_ms, origin));
        self.dirty.insert(timer.app_id.clone());
        self.writes.must_write(&timer.app_id);
    }
}
