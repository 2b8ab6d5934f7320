//! `pulsewatch evaluate`: runs a labelled suite of load-generator scenarios (true leaks and
//! the things that look like one) through the real stack — Kafka and the processor stage, on
//! topics of the run's own — and scores pulsewatch's leak alerts beside a `predict_linear`
//! baseline computed on the very same beats read back from Kafka: precision, recall and the
//! median time to detect, per family and overall, and whether the project's goals are met.

pub mod baseline;
mod goals;
mod offline;
pub mod random;
pub mod score;
pub mod seeds;
pub mod suite;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use thiserror::Error;

use crate::alert::{Alert, AlertKind, AlertState};
use crate::config::{Config, KafkaConfig};
use crate::loadgen::{self, LoadgenError, LoadgenOptions};
use crate::readback::{self, ReadError};
use crate::shutdown::Shutdown;
use crate::topology::{self, Topology, TopologyError, names};
use crate::{codec, kafka, processor};
use baseline::PredictLinear;
use score::{CaseVerdict, Detection, Scores, judge_case};
use suite::Case;

#[derive(Debug, Error)]
pub enum EvaluateError {
    #[error("unknown family {0:?}; the suite's families: {1}")]
    UnknownFamily(String, String),
    #[error("{0}")]
    Loadgen(#[from] LoadgenError),
    #[error("topology: {0}")]
    Topology(#[from] TopologyError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{0}")]
    Tally(#[from] ReadError),
    #[error("processor stage: {0}")]
    Processor(String),
    #[error("the processor did not reach the end of {topic} within {secs} s ({left} records left)")]
    Behind { topic: String, secs: u64, left: i64 },
    #[error("runtime: {0}")]
    Io(#[from] std::io::Error),
}

/// What a run is told.
#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    /// Event time each scenario runs for (backfilled, ending now).
    pub span: Duration,
    pub instances: usize,
    pub interval: Duration,
    pub seed: u64,
    /// Only these families (empty: the whole suite).
    pub families: Vec<String>,
    /// How many copies of each case run (each on an application of its own).
    pub repeat: usize,
    /// These cases instead of the suite (`families` and `repeat` then do not apply).
    pub cases: Option<Vec<Case>>,
    /// Longest wait for the processor to go through the load, and for each read-back.
    pub timeout: Duration,
    pub progress: bool,
    /// The same beats fed straight to the engine in this process, without Kafka: a quick
    /// replay for developing the detector, not the measure (see [`offline`]).
    pub offline: bool,
}

impl Default for EvaluateOptions {
    fn default() -> Self {
        EvaluateOptions {
            span: Duration::from_secs(3 * 3600),
            instances: 2,
            interval: Duration::from_secs(5),
            seed: 1,
            families: Vec::new(),
            repeat: 3,
            cases: None,
            timeout: Duration::from_secs(600),
            progress: true,
            offline: false,
        }
    }
}

/// One case and what both detectors did on it.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub name: String,
    pub family: &'static str,
    pub app_id: String,
    pub expected: Option<AlertKind>,
    pub pulsewatch: CaseVerdict,
    pub baseline: CaseVerdict,
}

/// Scores over a family (or the whole suite).
#[derive(Debug, Clone, Serialize)]
pub struct FamilyResult {
    pub family: String,
    pub pulsewatch: Scores,
    pub baseline: Scores,
}

/// One of the goals the suite measures, and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub goal: &'static str,
    pub met: bool,
    pub measured: String,
}

/// The whole evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The topics' prefix; empty for an offline run.
    pub topic_prefix: String,
    /// Fed to the engine in this process instead of through Kafka (see [`offline`]).
    pub offline: bool,
    pub span_ms: i64,
    pub instances_per_app: usize,
    pub beats: u64,
    pub wall_seconds: f64,
    pub cases: Vec<CaseResult>,
    pub families: Vec<FamilyResult>,
    pub overall: FamilyResult,
    pub goals: Vec<Goal>,
}

/// The cases `opts` selects: its own if it has some, else the standard suite, each case `repeat` times, and twice as many
/// cases of each randomly drawn family, drawn from the seed.
pub fn select(opts: &EvaluateOptions) -> Result<Vec<Case>, EvaluateError> {
    if let Some(cases) = &opts.cases {
        return Ok(cases.clone());
    }
    let repeat = opts.repeat.max(1);
    let mut cases = suite::repeated(suite::standard(opts.span), repeat);
    cases.extend(random::drawn(opts.seed, opts.span, 2 * repeat));
    let known = suite::families(&cases);
    if let Some(bad) = opts.families.iter().find(|f| !known.contains(&f.as_str())) {
        return Err(EvaluateError::UnknownFamily(bad.clone(), known.join(", ")));
    }
    if !opts.families.is_empty() {
        cases.retain(|c| opts.families.iter().any(|f| f == c.family));
    }
    Ok(cases)
}

/// Runs the selected suite through the stack `config` points at, on topics of its own
/// (`<prefix>eval-<time>-`), and scores it. Blocking.
pub fn run(config: &Config, opts: &EvaluateOptions) -> Result<Report, EvaluateError> {
    if opts.offline {
        return offline::run(config, opts);
    }
    let started = Instant::now();
    let cases = select(opts)?;
    let mut config = config.clone();
    config.kafka.topic_prefix =
        format!("{}eval-{}-", config.kafka.topic_prefix, chrono::Utc::now().format("%Y%m%d%H%M%S"));
    let kafka = config.kafka.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(topology::apply(&kafka, &Topology::builtin()))?;

    let shutdown = Shutdown::new();
    let ready = Arc::new(AtomicBool::new(false));
    let stage = {
        let (config, shutdown, ready) = (config.clone(), shutdown.clone(), ready.clone());
        std::thread::Builder::new().name("processor".into()).spawn(move || {
            let result = processor::run(&config, &shutdown, &ready).map_err(|e| e.to_string());
            shutdown.trigger();
            result
        })?
    };
    let outcome = drive(&kafka, opts, &cases, &ready, &shutdown);
    shutdown.trigger();
    let stage_result = stage.join().unwrap_or_else(|_| Err("panicked".into()));
    let manifest = outcome?;
    stage_result.map_err(EvaluateError::Processor)?;

    let ours = pulsewatch_detections(&kafka, opts.timeout, manifest.end_ms)?;
    let theirs = baseline_detections(&config, opts.timeout, manifest.end_ms)?;
    let judged_from = config.trend.young_minutes;
    Ok(score(&cases, opts, &manifest, (&ours, &theirs), judged_from, kafka.topic_prefix.clone(), started))
}

/// Scores both detectors' detections on `cases` into the report.
fn score(
    cases: &[Case],
    opts: &EvaluateOptions,
    manifest: &loadgen::Manifest,
    (ours, theirs): (&[Detection], &[Detection]),
    young_minutes: u32,
    topic_prefix: String,
    started: Instant,
) -> Report {
    let ids: Vec<String> = (0..cases.len()).map(|i| loadgen::app_id(APP_PREFIX, i, cases.len())).collect();
    let results: Vec<CaseResult> = cases
        .iter()
        .zip(&ids)
        .map(|(case, app_id)| CaseResult {
            name: case.name(),
            family: case.family,
            app_id: app_id.clone(),
            expected: case.expected,
            pulsewatch: judge_case(case, app_id, manifest.start_ms, ours),
            baseline: judge_case(case, app_id, manifest.start_ms, theirs),
        })
        .collect();
    let family_result = |name: &str, pick: &dyn Fn(&Case) -> bool| {
        let of = |verdict: fn(&CaseResult) -> &CaseVerdict| {
            Scores::of(cases.iter().zip(&results).filter(|(c, _)| pick(c)).map(|(c, r)| (c, verdict(r))))
        };
        FamilyResult {
            family: name.to_owned(),
            pulsewatch: of(|r| &r.pulsewatch),
            baseline: of(|r| &r.baseline),
        }
    };
    let families =
        suite::families(cases).into_iter().map(|f| family_result(f, &|c: &Case| c.family == f)).collect();
    let overall = family_result("overall", &|_: &Case| true);
    let goals = goals::goals(cases, &results, &overall, young_minutes);
    Report {
        topic_prefix,
        offline: opts.offline,
        span_ms: manifest.end_ms - manifest.start_ms,
        instances_per_app: opts.instances,
        beats: manifest.beats_total,
        wall_seconds: started.elapsed().as_secs_f64(),
        cases: results,
        families,
        overall,
        goals,
    }
}

/// Application ids of the evaluation fleet start with this.
const APP_PREFIX: &str = "eval-";

/// Waits for the processor, publishes the suite, and waits until the processor has
/// committed every record of it.
fn drive(
    kafka: &KafkaConfig,
    opts: &EvaluateOptions,
    cases: &[Case],
    ready: &AtomicBool,
    shutdown: &Shutdown,
) -> Result<loadgen::Manifest, EvaluateError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.load(Ordering::Relaxed) {
        if shutdown.is_triggered() || Instant::now() > deadline {
            return Err(EvaluateError::Processor("did not join its group within 60 s".into()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let manifest = loadgen::run(kafka, &load_options(opts, cases))?;
    wait_until_committed(
        kafka,
        &kafka.name(names::HEARTBEATS),
        &kafka.name("processor"),
        opts.timeout,
        shutdown,
    )?;
    Ok(manifest)
}

/// The length of the history's coarse points, which start on the clock's quarter hours.
const QUARTER_MS: i64 = crate::trend::COARSE_MINUTES as i64 * 60_000;

/// The load generator's options for `cases`: backfilled over the span, ending on the
/// quarter hour now.
fn load_options(opts: &EvaluateOptions, cases: &[Case]) -> LoadgenOptions {
    LoadgenOptions {
        apps: cases.len(),
        instances: opts.instances,
        interval: opts.interval,
        backfill: Some(opts.span),
        seed: opts.seed,
        faults: cases.iter().enumerate().flat_map(|(i, c)| c.fault_specs(i)).collect(),
        app_prefix: APP_PREFIX.into(),
        // Event times on whole quarter hours from the start, so that a seed gives the same
        // minute and quarter-hour points (the history's quarters are of the clock), hence the
        // same verdicts, whenever it runs.
        now_ms: Some(chrono::Utc::now().timestamp_millis() / QUARTER_MS * QUARTER_MS),
        progress: opts.progress,
        ..LoadgenOptions::default()
    }
}

/// Polls the group's committed offsets until they reach the topic's end.
fn wait_until_committed(
    kafka: &KafkaConfig,
    topic: &str,
    group: &str,
    timeout: Duration,
    shutdown: &Shutdown,
) -> Result<(), EvaluateError> {
    let consumer = kafka::committed_offsets_reader(kafka, group)?;
    let deadline = Instant::now() + timeout;
    let metadata =
        kafka::retrying(deadline, || consumer.fetch_metadata(Some(topic), Duration::from_secs(30)))?;
    let partitions: Vec<i32> =
        metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let mut ends = Vec::new();
    for &p in &partitions {
        ends.push((
            p,
            kafka::retrying(deadline, || consumer.fetch_watermarks(topic, p, Duration::from_secs(30)))?.1,
        ));
    }
    loop {
        let mut list = TopicPartitionList::new();
        for &p in &partitions {
            list.add_partition(topic, p);
        }
        let committed = consumer.committed_offsets(list, Duration::from_secs(30))?;
        let left: i64 = ends
            .iter()
            .map(|&(p, end)| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => (end - o).max(0),
                _ => end,
            })
            .sum();
        if left == 0 {
            return Ok(());
        }
        if shutdown.is_triggered() || Instant::now() > deadline {
            return Err(EvaluateError::Behind { topic: topic.to_owned(), secs: timeout.as_secs(), left });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// pulsewatch's leak alerts that started firing within the load's event time.
fn pulsewatch_detections(
    kafka: &KafkaConfig,
    timeout: Duration,
    end_ms: i64,
) -> Result<Vec<Detection>, EvaluateError> {
    let mut out = Vec::new();
    for msg in readback::read_to_end(kafka, &kafka.name(names::ALERTS), timeout)? {
        let Some(alert) = msg.payload().and_then(|p| Alert::decode(p).ok()) else { continue };
        out.extend(leak_onset(alert, end_ms));
    }
    Ok(out)
}

/// `alert` as a detection, if it is a leak alert that started firing before `end_ms`.
fn leak_onset(alert: Alert, end_ms: i64) -> Option<Detection> {
    (alert.state == AlertState::Firing
        && alert.kind.as_str().ends_with("_LEAK_SUSPECTED")
        && alert.event_at < end_ms)
        .then_some(Detection {
            app_id: alert.app_id,
            kind: alert.kind,
            at_ms: alert.event_at,
            // A leak alert's value is its projected time to exhaustion, hours.
            exhaustion_hours: alert.value,
        })
}

/// The baseline's detections on the beats of the heartbeats topic.
fn baseline_detections(
    config: &Config,
    timeout: Duration,
    end_ms: i64,
) -> Result<Vec<Detection>, EvaluateError> {
    let kafka = &config.kafka;
    let mut detector = PredictLinear::default();
    for msg in readback::read_to_end(kafka, &kafka.name(names::HEARTBEATS), timeout)? {
        let reference = msg.timestamp().to_millis().unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
        if let Some(beat) =
            msg.payload().and_then(|p| codec::decode(p, reference, config.input.max_sent_at_drift_ms).ok())
        {
            detector.observe(&beat);
        }
    }
    Ok(detector.detections().into_iter().filter(|d| d.at_ms < end_ms).collect())
}

pub(crate) fn minutes(ms: i64) -> String {
    format!("{:.0} min", ms as f64 / 60_000.0)
}

impl Report {
    /// The report a person reads.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let leaks = self.cases.iter().filter(|c| c.expected.is_some()).count();
        let _ = writeln!(
            out,
            "Leak detection, {} cases ({leaks} leaks, {} look-alikes) of {} instances over {:.1} h of event time, {} beats {}, {:.0} s",
            self.cases.len(),
            self.cases.len() - leaks,
            self.instances_per_app,
            self.span_ms as f64 / 3_600_000.0,
            self.beats,
            if self.offline {
                "fed to the engine in this process (offline)".to_owned()
            } else {
                format!("through Kafka and the processor (topics {}*)", self.topic_prefix)
            },
            self.wall_seconds,
        );
        let _ = writeln!(
            out,
            "Baseline: predict_linear(resource[1h], 4 * 3600) > limit for 5m, evaluated every minute, on memory and db pool in use.\n"
        );
        let _ = writeln!(
            out,
            "{:<24} {:>5}   {:<33} {:<33}",
            "family", "cases", "pulsewatch: found, false, median", "baseline: found, false, median"
        );
        let row = |s: &Scores| {
            let median = s.median_detect_ms.map_or("-".to_owned(), minutes);
            format!("{:>2}/{:<2} {:>2} {:>8}", s.detected, s.leaks, s.false_alarms, median)
        };
        for f in &self.families {
            let _ = writeln!(
                out,
                "{:<24} {:>5}   {:<33} {:<33}",
                f.family,
                f.pulsewatch.cases,
                row(&f.pulsewatch),
                row(&f.baseline)
            );
        }
        let (p, b) = (&self.overall.pulsewatch, &self.overall.baseline);
        let _ = writeln!(
            out,
            "{:<24} {:>5}   {:<33} {:<33}",
            "overall",
            p.cases,
            format!("{} precision {:.2} recall {:.2}", row(p), p.precision, p.recall),
            format!("{} precision {:.2} recall {:.2}", row(b), b.precision, b.recall),
        );
        let _ = writeln!(out, "\nCases:");
        for c in &self.cases {
            let ok = if c.expected.is_some() {
                c.pulsewatch.detected && !c.pulsewatch.false_alarm
            } else {
                !c.pulsewatch.false_alarm
            };
            let _ = writeln!(
                out,
                "  {} {:<48} {}  pulsewatch: {}; baseline: {}",
                if ok { "ok" } else { "--" },
                c.name,
                c.app_id,
                describe(&c.pulsewatch),
                describe(&c.baseline)
            );
        }
        let _ = writeln!(out, "\nGoals:");
        for g in &self.goals {
            let _ = writeln!(out, "  [{}] {}: {}", if g.met { "met" } else { "NOT met" }, g.goal, g.measured);
        }
        out
    }
}

/// One detector's verdict on a case, in words.
fn describe(v: &CaseVerdict) -> String {
    let kinds = v.raised.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" ");
    match (v.detected, v.false_alarm, v.detect_after_ms) {
        (_, _, _) if v.raised.is_empty() => "nothing".into(),
        (true, false, Some(ms)) => format!("{kinds} after {}", minutes(ms)),
        (true, true, Some(ms)) => format!("{kinds} after {}, and too early", minutes(ms)),
        (false, true, _) => {
            format!("{kinds} (false alarm, {} into the run)", v.false_alarm_at_ms.map_or("-".into(), minutes))
        }
        _ => format!("{kinds} (not the expected kind)"),
    }
}

#[cfg(test)]
mod tests_projection;
