//! What restoring a partition's state costs: an engine tracking a fleet (2 instances per
//! application, 25 minutes of beats, so trend windows, rate windows and rollups are filled)
//! writes its `app-state` records; they are then parsed and the engine rebuilt from them, as
//! the processor does on assignment (reading them from Kafka comes on top). Prints the record
//! size and the time per application, and extrapolates to a million applications.
//! Run: `cargo bench --bench restore` (PULSEWATCH_BENCH_APPS, default 2000).

use std::time::Instant;

use pulsewatch::engine::{Effect, Engine, EngineConfig, StateRecord};
use pulsewatch::loadgen::scenario::InstanceSim;
use pulsewatch::rules::{CompiledRules, RuleSet};
use pulsewatch::trend::TrendConfig;

const T0: i64 = 1_800_000_000_000;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let apps: usize = std::env::var("PULSEWATCH_BENCH_APPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 2_000 } else { 20 });
    let config = EngineConfig::default();
    let rules = CompiledRules::new(&RuleSet::default(), &config, &TrendConfig::default()).unwrap();
    let mut engine = Engine::new(0, config.clone(), rules.clone());
    let mut sims: Vec<InstanceSim> = (0..apps)
        .flat_map(|a| (0..2).map(move |i| (a, i)))
        .map(|(a, i)| InstanceSim::new(1, a, i, format!("app-{a:06}"), 5_000))
        .collect();
    let mut out: Vec<Effect> = Vec::new();
    for round in 0..(25 * 12) {
        for sim in sims.iter_mut() {
            let t = T0 + round * 5_000 + sim.phase_ms;
            if let Some(b) = sim.beat(t, 5_000, &[]) {
                engine.on_beat(b, round, 0, &mut out);
            }
        }
        out.clear();
    }
    let started = Instant::now();
    let records: Vec<Vec<u8>> = engine.take_state_records().into_iter().map(|(_, r)| r).collect();
    let write = started.elapsed();
    let bytes: usize = records.iter().map(Vec::len).sum();
    let started = Instant::now();
    let parsed: Vec<StateRecord> = records.iter().map(|r| serde_json::from_slice(r).unwrap()).collect();
    let restored = Engine::restore(0, config, rules, parsed);
    let read = started.elapsed();
    assert_eq!(restored.app_count(), engine.app_count());
    let per_app = |d: std::time::Duration| d.as_secs_f64() * 1e6 / apps as f64;
    println!("restore: {apps} apps x 2 instances, {} bytes per app-state record", bytes / apps);
    println!("  writing the records: {:.1} us per app", per_app(write));
    println!(
        "  parsing them and rebuilding the engine: {:.1} us per app, {:.1} s per million apps (one core, Kafka read not included)",
        per_app(read),
        per_app(read)
    );
}
