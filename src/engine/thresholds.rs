//! The threshold rules judged on each beat: the figure each rule reads from the beat, and
//! the alerts their transitions raise.

use super::change::Change;
use super::rollup::{Deltas, memory_ratio};
use super::state::InstanceState;
use super::{BeatContext, Effect, explain};
use crate::alert::Severity;
use crate::heartbeat::Heartbeat;
use crate::rules::{Rule, Transition};

/// Feeds every rule of the application's profile the figure it reads from `beat` (the error
/// rate from the instance's window of counter deltas, once at least `min_requests` were
/// served), emitting the alert of each transition.
pub(super) fn judge(
    ctx: &BeatContext<'_>,
    instance: &mut InstanceState,
    beat: &Heartbeat,
    deltas: &Deltas,
    min_requests: f64,
    out: &mut Vec<Effect>,
) {
    let t = ctx.t;
    let requests_per_s = instance.observe_rates(beat, deltas);
    let error_rate = instance.error_rate(min_requests);
    let values = Rule::ALL.map(|rule| figure(rule, beat, error_rate));
    for &(rule, th) in &ctx.profile.rules {
        let Some(value) = values[rule.index()] else { continue };
        let Some(tr) = instance.rules.observe(rule, t, value, &th) else { continue };
        let kind = rule.kind();
        let inst = Some(ctx.instance_id);
        let (change, shown_threshold) = match tr {
            Transition::Fire { severity, started_at } => {
                let level = if severity == Severity::Critical { th.critical } else { th.warning };
                (Change::firing(ctx.app_id, inst, kind, severity, started_at, t), level)
            }
            Transition::Resolve { severity, started_at } => {
                (Change::resolved(ctx.app_id, inst, kind, severity, started_at, t), th.resolve_below)
            }
        };
        let ex = explain::threshold(
            kind,
            change.state,
            change.severity,
            value,
            shown_threshold,
            beat,
            requests_per_s,
        );
        out.push(change.measured(Some(value), Some(shown_threshold)).emit(ex, ctx.origin));
    }
}

/// The figure `rule` judges in beat `b`.
fn figure(rule: Rule, b: &Heartbeat, error_rate: Option<f64>) -> Option<f64> {
    match rule {
        Rule::Memory => memory_ratio(b),
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
