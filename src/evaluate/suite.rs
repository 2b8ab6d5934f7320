//! The labelled scenarios `pulsewatch evaluate` runs: one application per case, each either a
//! true leak (of a known resource, with a known start) or a case that must stay quiet.

use std::time::Duration;

use crate::alert::AlertKind;
use crate::loadgen::scenario::{AppRef, FaultKind, FaultParams, FaultSpec};

/// One labelled scenario, played by one application of the evaluation fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// Which family it belongs to (scores are reported per family).
    pub family: &'static str,
    /// What distinguishes it within the family, e.g. `exhaust=6h noise=3`.
    pub variant: String,
    /// The leak kind a detector must raise; `None`: nothing may be raised.
    pub expected: Option<AlertKind>,
    /// Other leak kinds the scenario truly causes (a connection leak holds file descriptors,
    /// a session leak holds memory): raising them is no false alarm.
    pub also_true: Vec<AlertKind>,
    /// When the leak starts, from the start of the run (time to detect counts from here).
    pub leak_start: Duration,
    /// The faults, without their application (the suite gives each case its own).
    pub faults: Vec<(FaultKind, FaultParams, Duration, Option<Duration>)>,
}

impl Case {
    pub fn is_leak(&self) -> bool {
        self.expected.is_some()
    }

    /// The faults as the load generator takes them, on application `app`.
    pub fn fault_specs(&self, app: usize) -> Vec<FaultSpec> {
        self.faults
            .iter()
            .map(|&(kind, params, start, length)| FaultSpec {
                kind,
                params,
                app: AppRef::Index(app),
                instance: None,
                start,
                length,
            })
            .collect()
    }

    pub fn name(&self) -> String {
        if self.variant.is_empty() {
            self.family.to_owned()
        } else {
            format!("{} {}", self.family, self.variant)
        }
    }
}

fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

fn params(exhaust_minutes: Option<u64>, noise: f64) -> FaultParams {
    FaultParams { exhaust: exhaust_minutes.map(minutes), noise, ..FaultParams::default() }
}

fn variant(exhaust_minutes: Option<u64>, noise: f64, extra: &str) -> String {
    let mut parts = Vec::new();
    if let Some(m) = exhaust_minutes {
        parts.push(format!("exhaust={}h", m / 60));
    }
    parts.push(format!("noise={noise}"));
    if !extra.is_empty() {
        parts.push(extra.to_owned());
    }
    parts.join(" ")
}

/// A leak of `kind` (raising `expected`) from `start` to the end of the run.
fn leak(
    family: &'static str,
    kind: FaultKind,
    expected: AlertKind,
    exhaust: Option<u64>,
    noise: f64,
) -> Case {
    leak_from(family, kind, expected, exhaust, noise, 0)
}

fn leak_from(
    family: &'static str,
    kind: FaultKind,
    expected: AlertKind,
    exhaust: Option<u64>,
    noise: f64,
    start_minute: u64,
) -> Case {
    let extra = if start_minute > 0 { format!("from={start_minute}m") } else { String::new() };
    let also_true = match kind {
        FaultKind::ConnectionLeak => vec![AlertKind::FdLeakSuspected],
        FaultKind::SessionLeak => vec![AlertKind::MemoryLeakSuspected],
        _ => Vec::new(),
    };
    Case {
        family,
        variant: variant(exhaust, noise, &extra),
        expected: Some(expected),
        also_true,
        leak_start: minutes(start_minute),
        faults: vec![(kind, params(exhaust, noise), minutes(start_minute), None)],
    }
}

/// A scenario that is not a leak, for the whole run.
fn quiet(family: &'static str, kind: FaultKind, noise: f64) -> Case {
    Case {
        family,
        variant: variant(None, noise, ""),
        expected: None,
        also_true: Vec::new(),
        leak_start: Duration::ZERO,
        faults: vec![(kind, params(None, noise), Duration::ZERO, None)],
    }
}

/// The standard suite, for a run of `span` event time (at least two hours is meaningful:
/// the leaks starting late and the restarts are placed in it).
pub fn standard(span: Duration) -> Vec<Case> {
    use FaultKind as F;
    let span_min = (span.as_secs() / 60).max(60);
    let mut cases = Vec::new();
    // True memory leaks: three slopes (exhausting in 3, 6 and 12 h) at two noise levels,
    // starting with the process.
    for exhaust in [180, 360, 720] {
        for noise in [1.0, 3.0] {
            cases.push(leak("memory-leak", F::Leak, AlertKind::MemoryLeakSuspected, Some(exhaust), noise));
        }
    }
    // The same 6 h leak, starting in a process that had been steady for an hour.
    for noise in [1.0, 3.0] {
        cases.push(leak_from(
            "memory-leak-late-onset",
            F::Leak,
            AlertKind::MemoryLeakSuspected,
            Some(360),
            noise,
            60.min(span_min / 3),
        ));
    }
    for exhaust in [120, 240] {
        for noise in [1.0, 3.0] {
            cases.push(leak(
                "connection-leak",
                F::ConnectionLeak,
                AlertKind::ConnectionLeakSuspected,
                Some(exhaust),
                noise,
            ));
        }
    }
    for noise in [1.0, 3.0] {
        cases.push(leak("session-leak", F::SessionLeak, AlertKind::SessionLeakSuspected, None, noise));
    }
    // A 3 h leak whose process is restarted twice: each new process leaks again.
    let mut reset = leak("leak-reset-by-restart", F::Leak, AlertKind::MemoryLeakSuspected, Some(180), 1.0);
    for at in [span_min / 3, 2 * span_min / 3] {
        reset.faults.push((F::Restart, FaultParams::default(), minutes(at), Some(minutes(1))));
    }
    reset.variant = format!("exhaust=3h restarts={}m,{}m", span_min / 3, 2 * span_min / 3);
    cases.push(reset);
    // Not leaks.
    for noise in [1.0, 3.0] {
        cases.push(quiet("gc-sawtooth", F::GcSawtooth, noise));
        cases.push(quiet("workload-ramp", F::WorkloadRamp, noise));
        cases.push(quiet("diurnal", F::Diurnal, noise));
        cases.push(quiet("busy-pool", F::BusyPool, noise));
        cases.push(quiet("steady", F::Steady, noise));
        // A deploy a third into the run: the new process's cache warms up.
        let mut step = quiet("step-change", F::StepChange, noise);
        step.faults = vec![(F::StepChange, params(None, noise), minutes(span_min / 3), None)];
        cases.push(step);
    }
    // Plain restarts, without a leak: a new process's figures start over.
    let mut restarts = quiet("restart", F::Restart, 1.0);
    restarts.faults = [span_min / 4, span_min / 2, 3 * span_min / 4]
        .into_iter()
        .map(|at| (F::Restart, FaultParams::default(), minutes(at), Some(minutes(1))))
        .collect();
    cases.push(restarts);
    cases
}

/// The cases `times` over, each copy a case of its own (another application, so other
/// baseline figures and noise), named `#2`, `#3`, ...
pub fn repeated(cases: Vec<Case>, times: usize) -> Vec<Case> {
    let mut out = cases.clone();
    for copy in 2..=times {
        out.extend(cases.iter().cloned().map(|mut c| {
            c.variant = format!("{} #{copy}", c.variant).trim_start().to_owned();
            c
        }));
    }
    out
}

/// The families of `cases`, in order of first appearance.
pub fn families(cases: &[Case]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for c in cases {
        if !out.contains(&c.family) {
            out.push(c.family);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_suite_has_leaks_and_look_alikes_with_unique_names() {
        let cases = standard(Duration::from_secs(3 * 3600));
        let leaks = cases.iter().filter(|c| c.is_leak()).count();
        assert!(leaks >= 10 && cases.len() - leaks >= 10, "{leaks} leaks of {}", cases.len());
        for f in
            ["gc-sawtooth", "workload-ramp", "step-change", "diurnal", "busy-pool", "leak-reset-by-restart"]
        {
            assert!(families(&cases).contains(&f), "{f} missing");
        }
        let mut names: Vec<String> = cases.iter().map(Case::name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cases.len(), "case names repeat: {names:?}");
        let specs = cases[3].fault_specs(3);
        assert!(specs.iter().all(|s| s.app == AppRef::Index(3)));
        let three = repeated(cases.clone(), 3);
        assert_eq!(three.len(), 3 * cases.len());
        let mut names: Vec<String> = three.iter().map(Case::name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), three.len(), "repeated names repeat");
    }
}
