//! Cost and size of leak detection per instance: one minute of beats (twelve at 5 s) whose
//! last one closes a minute, which is pushed into the history and judged — for a steady
//! instance (the incremental Mann–Kendall gate stops it) and for a leaking one (the full
//! robust judgement of every resource, every minute). Prints the bytes an instance's trend
//! state takes once its history is full (two hours of minute points, a day of quarter-hour
//! ones), coded as the engine keeps them; and what a restore does with a full history: read
//! its base, and add the points of a tail to it. Run: `cargo bench --bench trend`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pulsewatch::heartbeat::Heartbeat;
use pulsewatch::trend::{History, InstanceTrend, LeakChange, POINT_BYTES, TrendConfig, assess};

/// The allocator the `pulsewatch` binary runs with (src/main.rs), so that these figures are
/// the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: i64 = 1_800_000_000_000;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Makes `b` the `i`-th beat (every 5 s) of an instance using `memory` bytes.
fn set_beat(b: &mut Heartbeat, i: i64, memory: f64) {
    b.sent_at = T0 + i * 5_000;
    b.seq = i;
    b.memory_used_bytes = Some(memory as i64);
    b.memory_limit_bytes = Some(GIB as i64);
    b.requests_total = Some(i * 100);
}

/// Pseudo-random noise in ±1 %, reproducible.
fn jitter(i: i64) -> f64 {
    let x = (i.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407) >> 33) as f64;
    1.0 + 0.01 * (x / (1u64 << 31) as f64 * 2.0 - 1.0)
}

fn bench(c: &mut Criterion) {
    let config = TrendConfig::default();
    let capacity = config.lookback_minutes as usize + 1;
    // Minutes until the history is full: the minute window, then the day before it.
    let fill = capacity + config.history_hours as usize * 60;
    let mut g = c.benchmark_group("trend");
    g.throughput(Throughput::Elements(1));
    for (name, slope_per_min) in [("steady instance", 0.0), ("leaking instance", 0.6 * GIB / 360.0)] {
        // The noise is ±1 % of the starting level, so the growth stays as visible over the
        // millions of minutes a measurement runs as over the first hour.
        let memory = move |i: i64| 0.4 * GIB * jitter(i) + slope_per_min * i as f64 / 12.0;
        let mut trend = InstanceTrend::default();
        let mut out: Vec<LeakChange> = Vec::new();
        let mut hb = Heartbeat::example_full();
        let mut i = 0i64;
        // A full history first.
        while i < 12 * fill as i64 {
            set_beat(&mut hb, i, memory(i));
            trend.observe(&hb, 500.0, &config, &mut out);
            i += 1;
        }
        let fired = out.iter().filter(|c| matches!(c, LeakChange::Fire { .. })).count();
        let h = &trend.window;
        let ((coded, buffers), points) = (h.coded_bytes(), h.len() + h.coarse().len());
        println!(
            "{name}: {fired} leak alert(s) raised while its history filled; trend state {} bytes ({} B struct + {} minute and {} quarter-hour points coded in {coded} B, {} B raw; buffers {buffers} B)",
            std::mem::size_of::<InstanceTrend>() + buffers,
            std::mem::size_of::<InstanceTrend>(),
            h.len(),
            h.coarse().len(),
            points * POINT_BYTES,
        );
        if slope_per_min == 0.0 {
            restore_cost(&mut g, &mut trend, &mut hb, &mut i, &config);
        }
        g.bench_function(format!("one minute of beats, closed and judged: {name}"), |b| {
            b.iter(|| {
                for _ in 0..12 {
                    set_beat(&mut hb, i, memory(i));
                    trend.observe(&hb, 500.0, &config, &mut out);
                    i += 1;
                }
                out.clear();
            })
        });
    }
    let series: Vec<(f64, f64, f64)> = (0..capacity as i64)
        .map(|m| (m as f64, (0.4 * GIB + 0.6 * GIB * m as f64 / 360.0) * jitter(m), 20.0))
        .collect();
    g.bench_function(format!("assess, {capacity} points of a leak"), |b| {
        b.iter(|| assess(std::hint::black_box(&series), &[], &config))
    });
    g.finish();
}

/// Points in the tail a restore adds: about the mean a restore finds (a tail holds up to 9
/// to 19, by the app id, and is read at any point of that).
const TAIL_POINTS: i64 = 8;

/// What a restore does with a full history written as a base, then a tail of
/// [`TAIL_POINTS`] minutes closed since: reads the base, reads the tail and adds its points.
fn restore_cost(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    trend: &mut InstanceTrend,
    hb: &mut Heartbeat,
    i: &mut i64,
    config: &TrendConfig,
) {
    trend.based();
    let base = postcard::to_stdvec(&trend.window).unwrap();
    let mut out = Vec::new();
    for _ in 0..12 * TAIL_POINTS {
        set_beat(hb, *i, 0.4 * GIB * jitter(*i));
        trend.observe(hb, 500.0, config, &mut out);
        *i += 1;
    }
    let tail = postcard::to_stdvec(&trend.tail().unwrap()).unwrap();
    println!("restore: a base of {} B, a tail of {TAIL_POINTS} points of {} B", base.len(), tail.len());
    g.bench_function("restore: read a full history's base", |b| {
        b.iter(|| postcard::from_bytes::<History>(std::hint::black_box(&base)).unwrap())
    });
    let read: History = postcard::from_bytes(&base).unwrap();
    g.bench_function(format!("restore: read a tail of {TAIL_POINTS} points and add it to the base"), |b| {
        b.iter_batched(
            || read.clone(),
            |mut h| {
                h.extend(&postcard::from_bytes::<History>(&tail).unwrap(), config);
                h
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
