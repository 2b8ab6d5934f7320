//! The evaluation without the stack: the suite's beats, generated as the load generator
//! would send them, are fed straight to one engine in this process and to the baseline,
//! and scored the same way. One engine holds every application here, where the processor
//! has one per partition; the leak judgement depends on each instance's beats alone, and
//! `tests/evaluate.rs` checks that both ways give the same verdicts, case by case. This
//! replay takes seconds where that run takes minutes, which is what developing the detector
//! needs; the run through the stack stays the measure.

use std::time::Instant;

use super::baseline::PredictLinear;
use super::score::Detection;
use super::{EvaluateError, EvaluateOptions, Report, leak_onset, load_options, score, select};
use crate::config::Config;
use crate::engine::{Effect, Engine};
use crate::loadgen;

/// Runs the selected suite offline and scores it.
pub fn run(config: &Config, opts: &EvaluateOptions) -> Result<Report, EvaluateError> {
    let started = Instant::now();
    let cases = select(opts)?;
    let (manifest, beats) = loadgen::generate(&load_options(opts, &cases))?;
    let rules = config.compiled_rules().map_err(|e| EvaluateError::Processor(e.to_string()))?;
    let mut engine = Engine::new(0, config.detection.clone(), rules);
    let mut baseline = PredictLinear::default();
    let mut ours = Vec::new();
    let mut effects = Vec::new();
    let wall_ms = chrono::Utc::now().timestamp_millis().max(manifest.end_ms);
    for (offset, beat) in beats.into_iter().enumerate() {
        baseline.observe(&beat);
        engine.on_beat(beat, offset as i64, wall_ms, &mut effects);
        leak_detections(&mut effects, manifest.end_ms, &mut ours);
    }
    engine.on_end_of_partition(wall_ms, &mut effects);
    leak_detections(&mut effects, manifest.end_ms, &mut ours);
    let theirs: Vec<Detection> =
        baseline.detections().into_iter().filter(|d| d.at_ms < manifest.end_ms).collect();
    Ok(score(&cases, opts, &manifest, (&ours, &theirs), config.trend.young_minutes, String::new(), started))
}

/// Moves the leak alerts that started firing before `end_ms` out of `effects` into `out`,
/// and drops the rest.
fn leak_detections(effects: &mut Vec<Effect>, end_ms: i64, out: &mut Vec<Detection>) {
    for effect in effects.drain(..) {
        if let Effect::Alert(alert) = effect {
            out.extend(leak_onset(alert, end_ms));
        }
    }
}
