//! What the simulated fleet does: each instance's healthy figures, and the faults injected
//! into chosen applications at chosen event times. Pure: given a seed and an event time it
//! returns the same beat every time.
//!
//! This module names the faults and parses them from the command line; [`sim`] runs one
//! instance (its sequence, counters and liveness) and [`figures`] computes the figures of
//! each beat, healthy or moved by a fault.

mod figures;
mod sim;

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::shape::Shape;

pub use sim::{Baseline, InstanceSim, instance_rng, poison_bytes};

/// The kinds of fault the generator can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// No fault: listed so that a mix can name healthy apps explicitly.
    Steady,
    /// The instance stops beating; if the window ends, it comes back with a reset seq.
    Crash,
    /// The instance says STOPPING, then stops beating.
    CleanStop,
    /// The instance's seq resets (a restart between two beats).
    Restart,
    MemoryHigh,
    /// CPU above 90 % for the whole window.
    CpuHigh,
    PoolSaturation,
    SlowResponses,
    ErrorBurst,
    QueueBacklog,
    SlowQueries,
    DiskHigh,
    /// Memory grows while the workload is flat.
    Leak,
    ConnectionLeak,
    SessionLeak,
    /// Memory grows with the workload: not a leak.
    WorkloadRamp,
    /// Memory rises and falls back in a saw-tooth (shaped by `period`, `amplitude`, `drain`,
    /// `phase`): not a leak.
    GcSawtooth,
    /// Undecodable records, sent beside the app's real beats.
    Poison,
    /// Silent for 90 s of every 3 minutes (a flaky network or a crash loop that keeps its seq).
    Flapping,
    /// A deploy: the process restarts and its cache warms up (memory rises by a fifth of the
    /// limit, levelling off within 15 minutes): not a leak.
    StepChange,
    /// Traffic follows the time of day (a 24 h sine starting on its rising flank); memory and
    /// pool follow traffic: not a leak.
    Diurnal,
    /// The pool is busy (55 % ± 15 % of its size, swinging over 20 minutes) but returns
    /// every connection: not a leak.
    BusyPool,
    /// Memory wanders (each minute close to the last, no drift; `period`, `amplitude`): not
    /// a leak.
    Wander,
}

impl FaultKind {
    pub const ALL: [FaultKind; 23] = [
        FaultKind::Steady,
        FaultKind::Crash,
        FaultKind::CleanStop,
        FaultKind::Restart,
        FaultKind::MemoryHigh,
        FaultKind::CpuHigh,
        FaultKind::PoolSaturation,
        FaultKind::SlowResponses,
        FaultKind::ErrorBurst,
        FaultKind::QueueBacklog,
        FaultKind::SlowQueries,
        FaultKind::DiskHigh,
        FaultKind::Leak,
        FaultKind::ConnectionLeak,
        FaultKind::SessionLeak,
        FaultKind::WorkloadRamp,
        FaultKind::GcSawtooth,
        FaultKind::Poison,
        FaultKind::Flapping,
        FaultKind::StepChange,
        FaultKind::Diurnal,
        FaultKind::BusyPool,
        FaultKind::Wander,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Steady => "steady",
            FaultKind::Crash => "crash",
            FaultKind::CleanStop => "clean-stop",
            FaultKind::Restart => "restart",
            FaultKind::MemoryHigh => "memory-high",
            FaultKind::CpuHigh => "cpu-high",
            FaultKind::PoolSaturation => "pool-saturation",
            FaultKind::SlowResponses => "slow-responses",
            FaultKind::ErrorBurst => "error-burst",
            FaultKind::QueueBacklog => "queue-backlog",
            FaultKind::SlowQueries => "slow-queries",
            FaultKind::DiskHigh => "disk-high",
            FaultKind::Leak => "leak",
            FaultKind::ConnectionLeak => "connection-leak",
            FaultKind::SessionLeak => "session-leak",
            FaultKind::WorkloadRamp => "workload-ramp",
            FaultKind::GcSawtooth => "gc-sawtooth",
            FaultKind::Poison => "poison",
            FaultKind::Flapping => "flapping",
            FaultKind::StepChange => "step-change",
            FaultKind::Diurnal => "diurnal",
            FaultKind::BusyPool => "busy-pool",
            FaultKind::Wander => "wander",
        }
    }

    /// The alert kinds pulsewatch should raise for this fault: the ground truth for scoring.
    /// `whole_app`: every instance of the app is hit; `ends`: the fault has an end (a crashed
    /// instance then comes back as a new process).
    pub fn expected_alerts(self, whole_app: bool, ends: bool) -> Vec<&'static str> {
        let mut kinds = self.expected_while_active(whole_app);
        if self == FaultKind::Crash && ends {
            kinds.push("INSTANCE_RESTARTED");
        }
        kinds
    }

    fn expected_while_active(self, whole_app_down: bool) -> Vec<&'static str> {
        match self {
            FaultKind::Steady
            | FaultKind::CleanStop
            | FaultKind::WorkloadRamp
            | FaultKind::GcSawtooth
            | FaultKind::Diurnal
            | FaultKind::BusyPool
            | FaultKind::Wander => {
                vec![]
            }
            FaultKind::StepChange => vec!["INSTANCE_RESTARTED"],
            // Until FLAPPING holds them back, each outage of the whole app is an APP_DOWN.
            FaultKind::Flapping if whole_app_down => {
                vec!["INSTANCE_LATE", "INSTANCE_DOWN", "APP_DOWN", "FLAPPING"]
            }
            FaultKind::Flapping => vec!["INSTANCE_LATE", "INSTANCE_DOWN", "FLAPPING"],
            FaultKind::Poison => vec![],
            FaultKind::Crash if whole_app_down => vec!["INSTANCE_LATE", "INSTANCE_DOWN", "APP_DOWN"],
            FaultKind::Crash => vec!["INSTANCE_LATE", "INSTANCE_DOWN"],
            FaultKind::Restart => vec!["INSTANCE_RESTARTED"],
            FaultKind::MemoryHigh => vec!["MEMORY_HIGH"],
            FaultKind::CpuHigh => vec!["CPU_HIGH"],
            FaultKind::PoolSaturation => vec!["DB_POOL_SATURATED"],
            FaultKind::SlowResponses => vec!["SLOW_RESPONSES"],
            FaultKind::ErrorBurst => vec!["ERROR_RATE_HIGH"],
            FaultKind::QueueBacklog => vec!["QUEUE_BACKLOG"],
            FaultKind::SlowQueries => vec!["SLOW_QUERIES"],
            FaultKind::DiskHigh => vec!["DISK_HIGH"],
            FaultKind::Leak => vec!["MEMORY_LEAK_SUSPECTED"],
            FaultKind::ConnectionLeak => vec!["CONNECTION_LEAK_SUSPECTED"],
            FaultKind::SessionLeak => vec!["SESSION_LEAK_SUSPECTED"],
        }
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.as_str()).collect();
            format!("unknown scenario {s:?}; known: {}", names.join(", "))
        })
    }
}

/// One fault as given on the command line, `KIND[(PARAMS)]:APP[/INSTANCE]@START[+LENGTH]`
/// (see [`FaultParams`]), where APP is
/// an application's index (0-based) or full id, INSTANCE an instance index, START and LENGTH
/// durations from the start of the run's event time (`90s`, `5m`, `2h`). Without a length the
/// fault lasts to the end of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    pub kind: FaultKind,
    pub params: FaultParams,
    pub app: AppRef,
    pub instance: Option<usize>,
    pub start: Duration,
    pub length: Option<Duration>,
}

/// How strong a fault is: `KIND(exhaust=3h,noise=4)`, and how it shapes memory
/// (`period=20m,amplitude=0.3,drain=0.2,phase=0.5,sigma=0.02`: see [`Shape`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultParams {
    /// Leaks: the time the leak takes from the baseline to the limit (memory: default 6 h;
    /// connections: to the pool size, default one connection per 10 min).
    pub exhaust: Option<Duration>,
    /// Multiplies every figure's noise on the covered instances (default 1).
    pub noise: f64,
    /// How memory is shaped (saw-tooth, wander, warm-up, noise as a share of the limit).
    pub shape: Shape,
}

impl Default for FaultParams {
    fn default() -> Self {
        FaultParams { exhaust: None, noise: 1.0, shape: Shape::default() }
    }
}

impl FromStr for FaultParams {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut p = FaultParams::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.split_once('=') {
                Some(("exhaust", v)) => p.exhaust = Some(parse_duration(v)?).filter(|d| !d.is_zero()),
                Some(("noise", v)) => {
                    p.noise = v
                        .parse::<f64>()
                        .ok()
                        .filter(|n| n.is_finite() && *n >= 0.0)
                        .ok_or_else(|| format!("noise={v:?} is not a non-negative number"))?;
                }
                Some((k, v)) if p.shape.set(k, v)? => {}
                _ => {
                    return Err(format!(
                        "unknown fault parameter {item:?} (exhaust=DURATION, noise=FACTOR, period=DURATION, amplitude, drain, phase, sigma=SHARE)"
                    ));
                }
            }
        }
        Ok(p)
    }
}

/// How a fault names its application.
#[derive(Debug, Clone, PartialEq)]
pub enum AppRef {
    Index(usize),
    Id(String),
}

impl FromStr for FaultSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage =
            || format!("fault {s:?} is not KIND:APP[/INSTANCE]@START[+LENGTH], e.g. crash:3/0@10m+5m");
        let (kind, rest) = s.split_once(':').ok_or_else(usage)?;
        let (kind, params) = match kind.split_once('(') {
            Some((k, p)) => (k, p.strip_suffix(')').ok_or_else(usage)?.parse()?),
            None => (kind, FaultParams::default()),
        };
        let kind: FaultKind = kind.parse()?;
        let (target, when) = rest.split_once('@').ok_or_else(usage)?;
        let (app, instance) = match target.split_once('/') {
            Some((a, i)) => (a, Some(i.parse::<usize>().map_err(|_| usage())?)),
            None => (target, None),
        };
        if app.is_empty() {
            return Err(usage());
        }
        let app = app.parse::<usize>().map(AppRef::Index).unwrap_or_else(|_| AppRef::Id(app.to_owned()));
        let (start, length) = match when.split_once('+') {
            Some((a, b)) => (parse_duration(a)?, Some(parse_duration(b)?)),
            None => (parse_duration(when)?, None),
        };
        Ok(FaultSpec { kind, params, app, instance, start, length })
    }
}

/// Parses `500ms`, `90s`, `5m`, `2h`, `1d` (or a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 90s, 5m or 2h"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A fault resolved against the fleet: absolute event times in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveFault {
    pub kind: FaultKind,
    pub params: FaultParams,
    pub app: usize,
    pub instance: Option<usize>,
    pub from_ms: i64,
    /// Exclusive end; `i64::MAX` when it lasts to the end of the run.
    pub to_ms: i64,
}

impl ActiveFault {
    pub fn covers(&self, app: usize, instance: usize) -> bool {
        self.app == app && self.instance.is_none_or(|i| i == instance)
    }

    pub fn active_at(&self, t: i64) -> bool {
        t >= self.from_ms && t < self.to_ms
    }

    /// Event time since the fault started, in seconds (0 before it).
    fn elapsed_s(&self, t: i64) -> f64 {
        ((t - self.from_ms).max(0)) as f64 / 1000.0
    }

    /// Event time since the fault started or the process restarted, whichever is later:
    /// what a process accumulates (a leak) starts over with the process.
    fn process_elapsed_s(&self, t: i64, process_start: i64) -> f64 {
        ((t - self.from_ms.max(process_start)).max(0)) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fault_specs() {
        let f: FaultSpec = "crash:3/1@10m+5m".parse().unwrap();
        assert_eq!(f.kind, FaultKind::Crash);
        assert_eq!(f.app, AppRef::Index(3));
        assert_eq!(f.instance, Some(1));
        assert_eq!(f.start, Duration::from_secs(600));
        assert_eq!(f.length, Some(Duration::from_secs(300)));
        let f: FaultSpec = "leak:checkout@0s".parse().unwrap();
        assert_eq!(f.app, AppRef::Id("checkout".into()));
        assert_eq!(f.length, None);
        let f: FaultSpec = "leak(exhaust=2h,noise=3):4@10m".parse().unwrap();
        assert_eq!(
            f.params,
            FaultParams { exhaust: Some(Duration::from_secs(7200)), noise: 3.0, ..Default::default() }
        );
        let f: FaultSpec = "gc-sawtooth(period=20m,amplitude=0.4,drain=0.3,sigma=0.02):1@0s".parse().unwrap();
        assert_eq!(f.params.shape.period, Some(Duration::from_secs(1200)));
        assert_eq!((f.params.shape.amplitude, f.params.shape.sigma), (Some(0.4), Some(0.02)));
        assert!("leak(speed=2):4@1s".parse::<FaultSpec>().unwrap_err().contains("unknown fault parameter"));
        assert!("nope:1@1s".parse::<FaultSpec>().unwrap_err().contains("unknown scenario"));
        assert!("crash:1".parse::<FaultSpec>().is_err());
        assert!("crash:1@5parsecs".parse::<FaultSpec>().is_err());
    }
}
