//! The load generator: a simulated fleet of applications beating into `heartbeats`, with
//! faults injected at chosen event times, and a manifest of the ground truth.
//!
//! One loop walks event time in rounds of one interval; each instance beats once per round
//! at its own phase. Beats whose event time is already past (a `--backfill`) are sent as
//! fast as the producer takes them; beats in the future wait for the wall clock, which
//! makes the same loop a live run. Beats go to Kafka, or over HTTP to an ingest stage
//! ([`outlet`]).

pub mod manifest;
pub mod outlet;
pub mod scenario;
pub mod shape;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::error::KafkaError;
use thiserror::Error;

use crate::codec::Encoding;
use crate::config::KafkaConfig;
use crate::topology::names;
use manifest::FaultRecord;
pub use manifest::Manifest;
use outlet::Outlet;
pub use outlet::Via;
use scenario::{ActiveFault, AppRef, FaultKind, FaultParams, FaultSpec, InstanceSim};

#[derive(Debug, Error)]
pub enum LoadgenError {
    #[error("invalid load-generator option: {0}")]
    Options(String),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{failed} records were not delivered; first error: {first}")]
    Undelivered { failed: u64, first: String },
    #[error("ingest over HTTP: {0}")]
    Http(String),
    #[error("writing the manifest {path}: {source}")]
    Manifest { path: String, source: std::io::Error },
}

/// Everything a run is told.
#[derive(Debug, Clone)]
pub struct LoadgenOptions {
    pub apps: usize,
    pub instances: usize,
    /// The period every instance promises.
    pub interval: Duration,
    /// Upper bound on records per second; `None` sends as fast as the scenario needs.
    pub rate: Option<f64>,
    /// Live run after the backfill (event time = wall clock).
    pub duration: Option<Duration>,
    /// Stop after this many beats.
    pub count: Option<u64>,
    pub seed: u64,
    pub encoding: Encoding,
    pub faults: Vec<FaultSpec>,
    /// Add one application per scenario kind (see [`mix`]).
    pub mix: bool,
    /// History whose event times end now, sent as fast as possible.
    pub backfill: Option<Duration>,
    pub manifest: Option<PathBuf>,
    /// Application ids are this prefix and a zero-padded index.
    pub app_prefix: String,
    /// Pretend the run starts at this wall time (ms): for reproducible event times.
    pub now_ms: Option<i64>,
    pub progress: bool,
    /// Straight to Kafka, or over HTTP to an ingest stage.
    pub via: Via,
}

impl Default for LoadgenOptions {
    fn default() -> Self {
        LoadgenOptions {
            apps: 100,
            instances: 2,
            interval: Duration::from_secs(5),
            rate: None,
            duration: None,
            count: None,
            seed: 1,
            encoding: Encoding::Avro,
            faults: Vec::new(),
            mix: false,
            backfill: None,
            manifest: None,
            app_prefix: "app-".into(),
            now_ms: None,
            progress: true,
            via: Via::Kafka,
        }
    }
}

/// The faults `--mix` injects, one application each, starting with application 0, as
/// fractions of the run's event-time span: (kind, start, length or `None` for to the end).
/// Threshold faults cover the middle half, so they fire and then resolve; liveness faults
/// come in the second half; trends start early and run to the end.
pub fn mix() -> Vec<(FaultKind, f64, Option<f64>)> {
    use FaultKind::*;
    vec![
        (Crash, 0.5, Some(0.25)),
        (CleanStop, 0.5, None),
        (Restart, 0.5, Some(0.01)),
        (MemoryHigh, 0.25, Some(0.5)),
        (CpuHigh, 0.25, Some(0.5)),
        (PoolSaturation, 0.25, Some(0.5)),
        (SlowResponses, 0.25, Some(0.5)),
        (ErrorBurst, 0.25, Some(0.5)),
        (QueueBacklog, 0.25, Some(0.5)),
        (SlowQueries, 0.25, Some(0.5)),
        (DiskHigh, 0.25, Some(0.5)),
        (Leak, 0.1, None),
        (ConnectionLeak, 0.1, None),
        (SessionLeak, 0.1, None),
        (WorkloadRamp, 0.1, None),
        (GcSawtooth, 0.1, None),
        (Poison, 0.25, Some(0.5)),
        (Flapping, 0.25, Some(0.5)),
        (StepChange, 0.5, None),
        (Diurnal, 0.1, None),
        (BusyPool, 0.1, None),
    ]
}

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The id of application `index` among `apps`.
pub fn app_id(prefix: &str, index: usize, apps: usize) -> String {
    let width = apps.saturating_sub(1).max(1).ilog10() as usize + 1;
    format!("{prefix}{index:0width$}", width = width.max(4))
}

/// Runs the generator to its end and returns (and writes, if asked) the manifest.
/// Blocking: call it from a thread, not an async task.
pub fn run(kafka: &KafkaConfig, opts: &LoadgenOptions) -> Result<Manifest, LoadgenError> {
    let bad = |m: String| LoadgenError::Options(m);
    if opts.apps == 0 || opts.instances == 0 {
        return Err(bad("--apps and --instances must be at least 1".into()));
    }
    let interval_ms = i32::try_from(opts.interval.as_millis())
        .ok()
        .filter(|ms| (crate::heartbeat::MIN_INTERVAL_MS..=crate::heartbeat::MAX_INTERVAL_MS).contains(ms))
        .ok_or_else(|| bad("--interval must be between 1s and 1d".into()))?;
    if opts.duration.is_none() && opts.count.is_none() && opts.backfill.is_none() {
        return Err(bad("give --duration, --count or --backfill, or a combination".into()));
    }
    if opts.rate.is_some_and(|rate| rate.is_nan() || rate <= 0.0) {
        return Err(bad("--rate must be positive".into()));
    }
    let now = opts.now_ms.unwrap_or_else(wall_ms);
    let clock_offset_ms = now - wall_ms();
    let backfill_ms = opts.backfill.map_or(0, |d| d.as_millis() as i64);
    let start_ms = now - backfill_ms;
    let fleet = (opts.apps * opts.instances) as u64;
    let end_ms = match (opts.duration, opts.count) {
        (Some(d), _) => now + d.as_millis() as i64,
        (None, Some(count)) if opts.backfill.is_none() => {
            start_ms + (count.div_ceil(fleet) as i64 + 1) * i64::from(interval_ms)
        }
        (None, _) => now,
    };
    let span_ms = (end_ms - start_ms).max(1);

    let ids: Vec<String> = (0..opts.apps).map(|i| app_id(&opts.app_prefix, i, opts.apps)).collect();
    let mut faults = Vec::new();
    let mut specs = opts.faults.clone();
    if opts.mix {
        for (i, (kind, from, length)) in mix().into_iter().enumerate().take(opts.apps) {
            specs.push(FaultSpec {
                kind,
                params: FaultParams::default(),
                app: AppRef::Index(i),
                instance: None,
                start: Duration::from_millis((span_ms as f64 * from) as u64),
                length: length.map(|l| Duration::from_millis(((span_ms as f64 * l) as u64).max(1))),
            });
        }
    }
    for spec in &specs {
        let app = match &spec.app {
            AppRef::Index(i) if *i < opts.apps => *i,
            AppRef::Index(i) => {
                return Err(bad(format!("fault names app {i}, but there are only {}", opts.apps)));
            }
            AppRef::Id(id) => ids
                .iter()
                .position(|x| x == id)
                .ok_or_else(|| bad(format!("fault names app {id:?}, which is not in the fleet")))?,
        };
        if let Some(i) = spec.instance.filter(|i| *i >= opts.instances) {
            return Err(bad(format!("fault names instance {i}, but apps have {}", opts.instances)));
        }
        let from_ms = start_ms + spec.start.as_millis() as i64;
        let to_ms = spec.length.map_or(i64::MAX, |l| from_ms + l.as_millis() as i64);
        faults.push(ActiveFault {
            kind: spec.kind,
            params: spec.params,
            app,
            instance: spec.instance,
            from_ms,
            to_ms,
        });
    }

    let topic = kafka.name(names::HEARTBEATS);
    let mut manifest = Manifest {
        seed: opts.seed,
        encoding: opts.encoding.name().to_owned(),
        topic: topic.clone(),
        apps: opts.apps,
        instances_per_app: opts.instances,
        interval_ms,
        start_ms,
        end_ms,
        ..Manifest::default()
    };
    for f in &faults {
        let whole_app = f.instance.is_none() || opts.instances == 1;
        manifest.faults.push(FaultRecord {
            kind: f.kind.as_str().to_owned(),
            app_id: ids[f.app].clone(),
            instance_id: f.instance.map(|i| format!("{}-i{i}", ids[f.app])),
            from_ms: f.from_ms,
            to_ms: (f.to_ms != i64::MAX).then_some(f.to_ms),
            expected_alerts: f
                .kind
                .expected_alerts(whole_app, f.to_ms != i64::MAX)
                .into_iter()
                .map(String::from)
                .collect(),
        });
    }

    let mut sims: Vec<InstanceSim> = Vec::with_capacity(fleet as usize);
    for (a, id) in ids.iter().enumerate() {
        for i in 0..opts.instances {
            sims.push(InstanceSim::new(opts.seed, a, i, id.clone(), i64::from(interval_ms)));
        }
    }
    sims.sort_by_key(|s| (s.phase_ms, s.app, s.instance));
    let sim_faults: Vec<Vec<usize>> = sims
        .iter()
        .map(|s| (0..faults.len()).filter(|&f| faults[f].covers(s.app, s.instance)).collect())
        .collect();
    let mut poison_rng = scenario::instance_rng(opts.seed, usize::MAX, usize::MAX, 2);

    let mut out = Outlet::open(kafka, topic.clone(), &opts.via)?;
    let expected_total = opts.count.unwrap_or(fleet * (span_ms / i64::from(interval_ms)).max(1) as u64);
    let bar = if opts.progress { ProgressBar::new(expected_total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} beats, {per_sec} {msg}",
        )
        .expect("valid template"),
    );
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut round: i64 = 0;
    'rounds: loop {
        let base = start_ms + round * i64::from(interval_ms);
        if base >= end_ms {
            break;
        }
        for (idx, sim) in sims.iter_mut().enumerate() {
            let t = base + sim.phase_ms;
            if t >= end_ms {
                break 'rounds;
            }
            if opts.count.is_some_and(|c| manifest.beats_total >= c) {
                break 'rounds;
            }
            wait_for_event_time(t, clock_offset_ms, &mut out)?;
            let active: Vec<&ActiveFault> = sim_faults[idx].iter().map(|&f| &faults[f]).collect();
            let Some(beat) = sim.beat(t, interval_ms, &active) else { continue };
            out.send_beat(&beat, opts.encoding)?;
            manifest.count_beat(&beat.app_id, &beat.instance_id, beat.seq, beat.sent_at);
            sent += 1;
            if active.iter().any(|f| f.kind == FaultKind::Poison && f.active_at(t))
                && out.send_poison(&beat.app_id, &scenario::poison_bytes(&mut poison_rng))?
            {
                manifest.count_poison(&beat.app_id);
                sent += 1;
            }
            if let Some(rate) = opts.rate {
                let ahead = sent as f64 / rate - started.elapsed().as_secs_f64();
                if ahead > 0.0 {
                    out.wait(Duration::from_secs_f64(ahead))?;
                }
            }
            if sent.is_multiple_of(1024) {
                out.serve();
                bar.set_position(manifest.beats_total);
            }
        }
        round += 1;
    }
    bar.set_message("flushing");
    let delivered = out.finish()?;
    bar.finish_and_clear();
    manifest.wall_seconds = started.elapsed().as_secs_f64();
    manifest.achieved_rate = delivered as f64 / manifest.wall_seconds.max(1e-9);
    if let Some(path) = &opts.manifest {
        manifest
            .write(path)
            .map_err(|source| LoadgenError::Manifest { path: path.display().to_string(), source })?;
    }
    Ok(manifest)
}

/// Sleeps (serving delivery callbacks, or posting what is gathered) until the event-time
/// clock, the wall clock plus `clock_offset_ms`, reaches `t`; a beat in the past is sent at once.
fn wait_for_event_time(t: i64, clock_offset_ms: i64, out: &mut Outlet) -> Result<(), LoadgenError> {
    loop {
        let now = wall_ms() + clock_offset_ms;
        if t <= now {
            return Ok(());
        }
        out.wait(Duration::from_millis((t - now).min(100) as u64))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids_are_zero_padded() {
        assert_eq!(app_id("app-", 7, 100), "app-0007");
        assert_eq!(app_id("app-", 7, 100_000), "app-00007");
        assert_eq!(app_id("x", 0, 1), "x0000");
    }

    #[test]
    fn the_mix_covers_every_fault_kind() {
        let kinds: Vec<FaultKind> = mix().into_iter().map(|(k, _, _)| k).collect();
        // A wandering level is measured by `pulsewatch evaluate`, where leak detection still
        // mistakes some wanders for leaks (docs/leak-detection.md): not in the mix.
        for k in FaultKind::ALL.into_iter().filter(|k| ![FaultKind::Steady, FaultKind::Wander].contains(k)) {
            assert!(kinds.contains(&k), "{k:?} missing from the mix");
        }
    }
}
