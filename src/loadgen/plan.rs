//! What a run will do, worked out before its first beat: its span of event time, its faults
//! (given, and those of `--mix`) resolved against the fleet, and the manifest's ground truth.
//! Every option error is found here, before anything is sent.

use std::time::Duration;

use super::manifest::FaultRecord;
use super::scenario::{ActiveFault, AppRef, FaultParams, FaultSpec};
use super::{LoadgenError, LoadgenOptions, Manifest, mix, wall_ms};

/// A run's event time.
pub(super) struct Span {
    /// The period every instance promises.
    pub interval_ms: i32,
    /// Event time minus wall time: 0 unless the run pretends to start at another time.
    pub clock_offset_ms: i64,
    /// The first round's event time: now, less any backfill.
    pub start_ms: i64,
    /// The exclusive end of the run's event time.
    pub end_ms: i64,
}

impl Span {
    /// Checks the options and works out the span they ask for.
    pub fn of(opts: &LoadgenOptions) -> Result<Span, LoadgenError> {
        let bad = |m: &str| LoadgenError::Options(m.into());
        if opts.apps == 0 || opts.instances == 0 {
            return Err(bad("--apps and --instances must be at least 1"));
        }
        let interval_ms = i32::try_from(opts.interval.as_millis())
            .ok()
            .filter(|ms| (crate::heartbeat::MIN_INTERVAL_MS..=crate::heartbeat::MAX_INTERVAL_MS).contains(ms))
            .ok_or_else(|| bad("--interval must be between 1s and 1d"))?;
        if opts.duration.is_none() && opts.count.is_none() && opts.backfill.is_none() {
            return Err(bad("give --duration, --count or --backfill, or a combination"));
        }
        if opts.rate.is_some_and(|rate| rate.is_nan() || rate <= 0.0) {
            return Err(bad("--rate must be positive"));
        }
        let now = opts.now_ms.unwrap_or_else(wall_ms);
        let clock_offset_ms = now - wall_ms();
        let backfill_ms = opts.backfill.map_or(0, |d| d.as_millis() as i64);
        let start_ms = now - backfill_ms;
        let end_ms = match (opts.duration, opts.count) {
            (Some(d), _) => now + d.as_millis() as i64,
            // Enough rounds for the count, and one more for the phases within a round.
            (None, Some(count)) if opts.backfill.is_none() => {
                start_ms + (count.div_ceil(fleet_size(opts)) as i64 + 1) * i64::from(interval_ms)
            }
            (None, _) => now,
        };
        Ok(Span { interval_ms, clock_offset_ms, start_ms, end_ms })
    }

    /// The length of the span (at least 1 ms): what `--mix` places its faults within.
    pub fn length_ms(&self) -> i64 {
        (self.end_ms - self.start_ms).max(1)
    }
}

/// Instances in the fleet.
pub(super) fn fleet_size(opts: &LoadgenOptions) -> u64 {
    (opts.apps * opts.instances) as u64
}

/// The faults of the options and of `--mix`, at absolute event times, their applications
/// found among `ids`.
pub(super) fn faults(
    opts: &LoadgenOptions,
    span: &Span,
    ids: &[String],
) -> Result<Vec<ActiveFault>, LoadgenError> {
    let mut specs = opts.faults.clone();
    if opts.mix {
        specs.extend(mixed(opts.apps, span.length_ms()));
    }
    specs.iter().map(|spec| resolve(spec, opts, ids, span.start_ms)).collect()
}

/// The faults of `--mix`, one application each from application 0, placed within the span.
fn mixed(apps: usize, span_ms: i64) -> Vec<FaultSpec> {
    mix()
        .into_iter()
        .enumerate()
        .take(apps)
        .map(|(i, (kind, from, length))| FaultSpec {
            kind,
            params: FaultParams::default(),
            app: AppRef::Index(i),
            instance: None,
            start: Duration::from_millis((span_ms as f64 * from) as u64),
            length: length.map(|l| Duration::from_millis(((span_ms as f64 * l) as u64).max(1))),
        })
        .collect()
}

/// One fault at absolute event times; an error if it names an application or instance the
/// fleet does not have.
fn resolve(
    spec: &FaultSpec,
    opts: &LoadgenOptions,
    ids: &[String],
    start_ms: i64,
) -> Result<ActiveFault, LoadgenError> {
    let bad = LoadgenError::Options;
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
    Ok(ActiveFault { kind: spec.kind, params: spec.params, app, instance: spec.instance, from_ms, to_ms })
}

/// The manifest before the first beat: the run's shape and, for each fault, the alerts it
/// should raise.
pub(super) fn manifest(
    opts: &LoadgenOptions,
    span: &Span,
    topic: String,
    ids: &[String],
    faults: &[ActiveFault],
) -> Manifest {
    let records = faults.iter().map(|f| {
        let whole_app = f.instance.is_none() || opts.instances == 1;
        FaultRecord {
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
        }
    });
    Manifest {
        seed: opts.seed,
        encoding: opts.encoding.name().to_owned(),
        topic,
        apps: opts.apps,
        instances_per_app: opts.instances,
        interval_ms: span.interval_ms,
        start_ms: span.start_ms,
        end_ms: span.end_ms,
        faults: records.collect(),
        ..Manifest::default()
    }
}
