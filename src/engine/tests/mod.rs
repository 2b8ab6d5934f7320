use super::*;
use crate::alert::{AlertKind, AlertState, Severity};
use crate::app_state::{STATE_VERSION, StateRecordError, WINDOWS_KEY_SUFFIX, WINDOWS_TAIL_KEY_SUFFIX};
use crate::loadgen::scenario::{ActiveFault, FaultKind, FaultParams, InstanceSim};
use crate::rules::{DetectionConfig, RuleSet};
use crate::trend::TrendConfig;

mod leaks;
mod liveness;
mod state;
mod thresholds;

const S: i64 = 1_000;
const T0: i64 = 1_800_000_000_000;

fn engine() -> Engine {
    engine_writing_every(DetectionConfig::default().state_interval_ms)
}

/// An engine that leaves a state unwritten for up to `state_interval_ms` of event time.
fn engine_writing_every(state_interval_ms: i64) -> Engine {
    let c = DetectionConfig { state_interval_ms, ..DetectionConfig::default() };
    let rules = CompiledRules::new(&RuleSet::default(), &c, &TrendConfig::default()).unwrap();
    Engine::new(0, c, rules)
}

fn beat(app: &str, inst: &str, seq: i64, t: i64) -> Heartbeat {
    Heartbeat::new(app, format!("{app}-{inst}"), seq, t)
}

/// The alerts among the effects, whole.
fn into_alerts(effects: Vec<Effect>) -> Vec<Alert> {
    effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Alert(a) => Some(a),
            _ => None,
        })
        .collect()
}

fn alerts(effects: &[Effect]) -> Vec<(AlertKind, AlertState, Severity, i64, Option<String>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Alert(a) => Some((a.kind, a.state, a.severity, a.event_at, a.instance_id.clone())),
            _ => None,
        })
        .collect()
}

/// Beats `app` every 5 s from `from` to `to` (inclusive), as one instance `i0`.
fn run_app(e: &mut Engine, app: &str, from: i64, to: i64, seq0: i64, out: &mut Vec<Effect>) -> i64 {
    let mut seq = seq0;
    let mut t = from;
    while t <= to {
        seq += 1;
        e.on_beat(beat(app, "i0", seq, t), seq, 0, out);
        t += 5 * S;
    }
    seq
}

/// Drives the engine with the load generator's simulated fleet (no Kafka).
fn simulate(kind: FaultKind, minutes: i64) -> Vec<Alert> {
    simulate_fault(kind, minutes, 10, 30)
}

/// As [`simulate`], with the fault on app-0 from minute `from` to minute `to`.
fn simulate_fault(kind: FaultKind, minutes: i64, from: i64, to: i64) -> Vec<Alert> {
    let mut e = engine();
    let mut out = Vec::new();
    let interval = 5_000;
    let fault = ActiveFault {
        kind,
        params: FaultParams::default(),
        app: 0,
        instance: None,
        from_ms: T0 + from * 60 * S,
        to_ms: T0 + to * 60 * S,
    };
    let mut sims: Vec<InstanceSim> = (0..2)
        .flat_map(|app| (0..2).map(move |i| (app, i)))
        .map(|(app, i)| InstanceSim::new(3, app, i, format!("app-{app}"), interval))
        .collect();
    let mut offset = 0;
    for round in 0..(minutes * 12) {
        for sim in sims.iter_mut() {
            let t = T0 + round * interval + sim.phase_ms;
            let faults: Vec<&ActiveFault> =
                if fault.covers(sim.app, sim.instance) { vec![&fault] } else { vec![] };
            if let Some(b) = sim.beat(t, interval as i32, &faults) {
                offset += 1;
                e.on_beat(b, offset, 0, &mut out);
            }
        }
    }
    into_alerts(out)
}
