//! Leak trends judged each time a minute of an instance closes (see [`crate::trend`]), and
//! the alerts their changes raise.

use super::change::Change;
use super::{BeatContext, Effect, explain};
use crate::alert::Severity;
use crate::heartbeat::Heartbeat;
use crate::trend::LeakChange;

/// Feeds the instance's trend `beat` (when the profile judges leaks) and emits the alert of
/// every leak change, those already in `changes` (a restart's) first.
pub(super) fn judge(
    ctx: &BeatContext<'_>,
    trend: &mut crate::trend::InstanceTrend,
    beat: &Heartbeat,
    requests: f64,
    changes: &mut Vec<LeakChange>,
    out: &mut Vec<Effect>,
) {
    let t = ctx.t;
    let config = &ctx.profile.trend;
    if config.enabled {
        trend.observe(beat, requests, config, changes);
    }
    for change in changes.drain(..) {
        let ex = explain::leak(&change, beat);
        let inst = Some(ctx.instance_id);
        let effect = match change {
            LeakChange::Fire { resource, verdict, started_at } => {
                let c = Change::firing(ctx.app_id, inst, resource.kind(), verdict.severity, started_at, t);
                let hours = verdict.exhaustion_in_ms.map(|ms| ms as f64 / 3_600_000.0);
                let horizon = match verdict.severity {
                    Severity::Critical => config.critical_horizon_ms,
                    Severity::Warning => config.warning_horizon_ms,
                } as f64
                    / 3_600_000.0;
                c.measured(hours, hours.map(|_| horizon)).emit(ex, ctx.origin)
            }
            LeakChange::Resolve { resource, open, .. } => {
                Change::resolved(ctx.app_id, inst, resource.kind(), open.severity, open.started_at, t)
                    .emit(ex, ctx.origin)
            }
        };
        out.push(effect);
    }
}
