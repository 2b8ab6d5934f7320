//! Cost of the decisions per beat: the engine's state update (liveness, rules, rollups) on a
//! partition holding many applications, and one threshold rule's evaluation.
//! Run: `cargo bench --bench engine`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pulsewatch::engine::{Effect, Engine};
use pulsewatch::heartbeat::Heartbeat;
use pulsewatch::rules::{CompiledRules, DetectionConfig, RuleSet, RuleState};
use pulsewatch::trend::TrendConfig;

/// The allocator the `pulsewatch` binary runs with (src/main.rs), so that these figures are
/// the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: i64 = 1_800_000_000_000;

fn beat(app: usize, instance: usize, seq: i64, t: i64) -> Heartbeat {
    let mut b = Heartbeat::example_full();
    b.app_id = format!("app-{app:06}");
    b.instance_id = format!("app-{app:06}-i{instance}");
    b.seq = seq;
    b.sent_at = t;
    b.interval_ms = 5_000;
    b.requests_total = Some(seq * 100);
    b.errors_total = Some(seq);
    b.memory_used_bytes = Some(600_000_000);
    b
}

fn engine() -> Engine {
    let c = DetectionConfig::default();
    let rules = CompiledRules::new(&RuleSet::default(), &c, &TrendConfig::default()).unwrap();
    Engine::new(0, c, rules)
}

fn bench(c: &mut Criterion) {
    for apps in [1_000usize, 20_000] {
        // A partition already tracking `apps` applications of 2 instances.
        let mut e = engine();
        let mut out = Vec::new();
        for round in 0..3i64 {
            for app in 0..apps {
                for i in 0..2 {
                    e.on_beat(
                        beat(app, i, round + 1, T0 + round * 5_000 + (app * 2 + i) as i64),
                        0,
                        0,
                        &mut out,
                    );
                }
            }
        }
        // Each measured round is the fleet's next one, five seconds later.
        let next_round = std::cell::Cell::new(3i64);
        let make_round = |r: i64| -> Vec<Heartbeat> {
            (0..apps)
                .flat_map(|app| {
                    (0..2).map(move |i| beat(app, i, r + 1, T0 + r * 5_000 + (app * 2 + i) as i64))
                })
                .collect()
        };
        let round = make_round(3);
        let mut g = c.benchmark_group(format!("engine/{apps}-apps"));
        g.throughput(Throughput::Elements(round.len() as u64));
        g.sample_size(10);
        g.bench_function("on_beat, one round of the fleet", |b| {
            b.iter_batched(
                || {
                    next_round.set(next_round.get() + 1);
                    make_round(next_round.get())
                },
                |beats| {
                    let mut out: Vec<Effect> = Vec::new();
                    for (n, hb) in beats.into_iter().enumerate() {
                        e.on_beat(hb, n as i64, 0, &mut out);
                    }
                    out.len()
                },
                BatchSize::LargeInput,
            )
        });
        g.bench_function("clone of the round (the input cost included above)", |b| b.iter(|| round.clone()));
        g.finish();
    }

    let th = RuleSet::default().cpu;
    let mut g = c.benchmark_group("rules");
    g.throughput(Throughput::Elements(1));
    g.bench_function("RuleState::observe", |b| {
        let mut s = RuleState::default();
        let mut t = T0;
        b.iter(|| {
            t += 5_000;
            s.observe(t, std::hint::black_box(0.5), &th)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
