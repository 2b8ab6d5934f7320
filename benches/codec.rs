//! Decode and encode cost of one heartbeat, beside apache-avro's generic reader on the same
//! bytes (the ceiling we compare against). Run: `cargo bench --bench codec`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pulsewatch::codec::{self, Encoding, avro};
use pulsewatch::heartbeat::Heartbeat;

/// The allocator the `pulsewatch` binary runs with (src/main.rs), so that these figures are
/// the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn bench(c: &mut Criterion) {
    let beat = Heartbeat::example_full();
    let avro_bytes = codec::encode(&beat, Encoding::Avro);
    let json_bytes = codec::encode(&beat, Encoding::Json);
    let reference = beat.sent_at;
    let drift = codec::DEFAULT_MAX_DRIFT_MS;

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("avro (pulsewatch, with validation)", |b| {
        b.iter(|| codec::decode(std::hint::black_box(&avro_bytes), reference, drift).unwrap())
    });
    g.bench_function("avro (apache-avro generic Value, no validation)", |b| {
        b.iter(|| {
            let mut datum = &std::hint::black_box(&avro_bytes)[10..];
            apache_avro::from_avro_datum(&avro::SCHEMA, &mut datum, None).unwrap()
        })
    });
    g.bench_function("json (pulsewatch, with validation)", |b| {
        b.iter(|| codec::decode(std::hint::black_box(&json_bytes), reference, drift).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("avro", |b| b.iter(|| codec::encode(std::hint::black_box(&beat), Encoding::Avro)));
    g.bench_function("json", |b| b.iter(|| codec::encode(std::hint::black_box(&beat), Encoding::Json)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
