//! What the simulated fleet does: each instance's healthy figures, and the faults injected
//! into chosen applications at chosen event times. Pure: given a seed and an event time it
//! returns the same beat every time.

use std::str::FromStr;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::shape::{self, Shape};
use crate::heartbeat::{Heartbeat, InstanceStatus};

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

/// The healthy figures of one instance, fixed by the seed.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub memory_limit: i64,
    pub memory_ratio: f64,
    pub cpu: f64,
    pub pool_size: i32,
    pub pool_in_use: f64,
    pub requests_per_s: f64,
    pub sessions: f64,
    pub threads: f64,
    pub fds: f64,
    pub disk: f64,
}

impl Baseline {
    pub fn new(seed: u64, app: usize, instance: usize) -> Baseline {
        let mut rng = instance_rng(seed, app, instance, 0);
        Baseline {
            memory_limit: [512i64, 1024, 2048, 4096][rng.random_range(0..4)] * 1024 * 1024,
            memory_ratio: rng.random_range(0.30..0.50),
            cpu: rng.random_range(0.15..0.40),
            pool_size: [10, 20, 40][rng.random_range(0..3)],
            pool_in_use: rng.random_range(0.15..0.35),
            requests_per_s: rng.random_range(5.0..60.0),
            sessions: rng.random_range(100.0..1000.0),
            threads: rng.random_range(20.0..60.0),
            fds: rng.random_range(100.0..400.0),
            disk: rng.random_range(0.30..0.60),
        }
    }
}

/// A deterministic generator for one instance and one purpose.
pub fn instance_rng(seed: u64, app: usize, instance: usize, salt: u64) -> ChaCha8Rng {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    for x in [app as u64, instance as u64, salt] {
        h = (h ^ x).wrapping_mul(0x1000_0000_01b3).rotate_left(29);
    }
    ChaCha8Rng::seed_from_u64(h)
}

/// The running state of one simulated instance: its counters and sequence number.
#[derive(Debug, Clone)]
pub struct InstanceSim {
    pub app: usize,
    pub instance: usize,
    pub app_id: String,
    pub instance_id: String,
    pub baseline: Baseline,
    pub seq: i64,
    /// Offset of this instance's beats within each interval, so the fleet's beats spread out.
    pub phase_ms: i64,
    requests: f64,
    errors: f64,
    slow: f64,
    hits: f64,
    misses: f64,
    /// Set once the instance left (crash without end, clean stop): it sends nothing more.
    gone: bool,
    /// Set while a crash or clean stop keeps it silent, to reset seq when it returns.
    silent: bool,
    restarted_for: Option<i64>,
    /// Event time the current process started (0: before the run).
    process_start: i64,
    /// Draws the shapes that depend on the instance (a wander).
    shape_seed: u64,
    rng: ChaCha8Rng,
}

impl InstanceSim {
    pub fn new(seed: u64, app: usize, instance: usize, app_id: String, interval_ms: i64) -> InstanceSim {
        let mut rng = instance_rng(seed, app, instance, 1);
        let phase_ms = rng.random_range(0..interval_ms.max(1));
        InstanceSim {
            app,
            instance,
            instance_id: format!("{app_id}-i{instance}"),
            app_id,
            baseline: Baseline::new(seed, app, instance),
            seq: 0,
            phase_ms,
            requests: 0.0,
            errors: 0.0,
            slow: 0.0,
            hits: 0.0,
            misses: 0.0,
            gone: false,
            silent: false,
            restarted_for: None,
            process_start: 0,
            shape_seed: instance_rng(seed, app, instance, 2).random(),
            rng,
        }
    }

    /// The beat this instance sends at event time `t`, or `None` if it is silent then.
    /// `faults` are the faults that cover this instance.
    pub fn beat(&mut self, t: i64, interval_ms: i32, faults: &[&ActiveFault]) -> Option<Heartbeat> {
        if self.gone {
            return None;
        }
        let mut status = InstanceStatus::Ok;
        for f in faults.iter().filter(|f| f.kind == FaultKind::Flapping && f.active_at(t)) {
            if f.elapsed_s(t) % 180.0 < 90.0 {
                return None;
            }
        }
        for f in faults.iter().filter(|f| matches!(f.kind, FaultKind::Crash | FaultKind::CleanStop)) {
            if f.active_at(t) {
                if f.kind == FaultKind::CleanStop && !self.silent {
                    // The last beat, saying goodbye.
                    self.silent = true;
                    status = InstanceStatus::Stopping;
                } else {
                    self.silent = true;
                    if f.to_ms == i64::MAX {
                        self.gone = f.kind == FaultKind::Crash;
                    }
                    return None;
                }
            } else if self.silent && t >= f.to_ms {
                self.silent = false;
                self.reset_process(t);
                status = InstanceStatus::Starting;
            }
        }
        for f in faults.iter().filter(|f| matches!(f.kind, FaultKind::Restart | FaultKind::StepChange)) {
            if f.active_at(t) && self.restarted_for != Some(f.from_ms) {
                self.restarted_for = Some(f.from_ms);
                self.reset_process(t);
                status = InstanceStatus::Starting;
            }
        }
        let dt = f64::from(interval_ms) / 1000.0;
        let scale: f64 = faults.iter().filter(|f| f.active_at(t)).map(|f| f.params.noise).product();
        let noise = |rng: &mut ChaCha8Rng, spread: f64| {
            let spread = spread * scale;
            if spread > 0.0 { 1.0 + rng.random_range(-spread..spread) } else { 1.0 }
        };
        let b = &self.baseline;
        let limit = b.memory_limit as f64;
        let jitter = noise(&mut self.rng, 0.02);
        let mut memory = limit * b.memory_ratio * jitter;
        let mut cpu = b.cpu * noise(&mut self.rng, 0.10);
        let mut in_use = f64::from(b.pool_size) * b.pool_in_use * noise(&mut self.rng, 0.2);
        let mut waiting = 0.0;
        let mut rps = b.requests_per_s * noise(&mut self.rng, 0.05);
        let mut error_ratio = 0.004;
        let mut slow_ratio = 0.01;
        let mut p95 = 120.0 * noise(&mut self.rng, 0.15);
        let mut queue = 2.0 * noise(&mut self.rng, 0.5);
        let mut query_p95 = 20.0 * noise(&mut self.rng, 0.2);
        let mut disk = b.disk;
        let mut sessions = b.sessions * noise(&mut self.rng, 0.03);
        let threads = b.threads;
        let mut fds = b.fds * noise(&mut self.rng, 0.02);
        for f in faults.iter().filter(|f| f.active_at(t)) {
            let s = f.elapsed_s(t);
            let lived = f.process_elapsed_s(t, self.process_start);
            let exhaust_s = f.params.exhaust.map(|d| d.as_secs_f64());
            match f.kind {
                FaultKind::MemoryHigh => memory = limit * 0.94 * noise(&mut self.rng, 0.01),
                FaultKind::CpuHigh => cpu = 0.95 * noise(&mut self.rng, 0.02),
                FaultKind::PoolSaturation => {
                    in_use = f64::from(b.pool_size);
                    waiting = 6.0;
                    p95 *= 8.0;
                    query_p95 *= 3.0;
                }
                FaultKind::SlowResponses => {
                    p95 = 7_500.0 * noise(&mut self.rng, 0.05);
                    slow_ratio = 0.4;
                }
                FaultKind::ErrorBurst => error_ratio = 0.15,
                FaultKind::QueueBacklog => queue = 150.0 * noise(&mut self.rng, 0.1),
                FaultKind::SlowQueries => query_p95 = 6_000.0 * noise(&mut self.rng, 0.05),
                FaultKind::DiskHigh => disk = 0.97,
                // Grows from the baseline to the limit in six hours (or `exhaust`); a new
                // process starts from the baseline again.
                FaultKind::Leak => {
                    memory += limit * (1.0 - b.memory_ratio) * lived / exhaust_s.unwrap_or(6.0 * 3600.0);
                }
                // One more connection held every ten minutes (or the free ones in `exhaust`),
                // up to the pool size.
                FaultKind::ConnectionLeak => {
                    let free = f64::from(b.pool_size) * (1.0 - b.pool_in_use);
                    let per_s = exhaust_s.map_or(1.0 / 600.0, |e| free / e);
                    in_use = (in_use + lived * per_s).min(f64::from(b.pool_size));
                    fds += lived * per_s;
                }
                FaultKind::SessionLeak => {
                    sessions += b.sessions * lived / 3600.0;
                    memory += limit * 0.1 * lived / 3600.0;
                }
                // The new process's cache fills: +20 % of the limit, time constant 5 min.
                FaultKind::StepChange => memory += limit * shape::warm_up(&f.params.shape, lived),
                FaultKind::Diurnal => {
                    let factor = 1.0 + 0.6 * (s / 86_400.0 * std::f64::consts::TAU).sin();
                    rps *= factor;
                    memory *= 1.0 + 0.3 * (factor - 1.0);
                    in_use *= factor;
                    cpu = (cpu * factor).min(0.75);
                }
                FaultKind::BusyPool => {
                    let swing = 0.15 * (s / 1200.0 * std::f64::consts::TAU).sin();
                    in_use = f64::from(b.pool_size) * (0.55 + swing) * noise(&mut self.rng, 0.1);
                }
                // Traffic doubles per hour; memory and pool follow it.
                FaultKind::WorkloadRamp => {
                    let factor = 1.0 + s / 3600.0;
                    rps *= factor;
                    memory *= 1.0 + 0.3 * (factor - 1.0).min(1.5);
                    in_use = (in_use * factor).min(f64::from(b.pool_size) * 0.8);
                    cpu = (cpu * factor).min(0.75);
                }
                // Rises 30 % of the limit over five minutes, then collected.
                FaultKind::GcSawtooth => memory += limit * shape::sawtooth(&f.params.shape, s),
                FaultKind::Wander => memory += limit * shape::wander(&f.params.shape, self.shape_seed, s),
                _ => {}
            }
        }
        memory = self.memory_noise(faults, t, memory, jitter).clamp(0.0, limit);
        self.requests += rps * dt;
        self.errors += rps * dt * error_ratio;
        self.slow += rps * dt * slow_ratio;
        self.hits += rps * dt * 0.85;
        self.misses += rps * dt * 0.15;
        self.seq += 1;
        let mut hb = Heartbeat::new(self.app_id.clone(), self.instance_id.clone(), self.seq, t);
        hb.interval_ms = interval_ms;
        hb.status = status;
        hb.memory_used_bytes = Some(memory as i64);
        hb.memory_limit_bytes = Some(b.memory_limit);
        hb.cpu_ratio = Some(cpu.clamp(0.0, 1.0) as f32);
        hb.disk_used_ratio = Some(disk.clamp(0.0, 1.0) as f32);
        hb.db_pool_size = Some(b.pool_size);
        hb.db_pool_in_use = Some((in_use.round() as i32).clamp(0, b.pool_size));
        hb.db_pool_waiting = Some(waiting as i32);
        hb.threads = Some(threads.round() as i32);
        hb.open_fds = Some(fds.round() as i32);
        hb.request_queue_depth = Some(queue.round().max(0.0) as i32);
        hb.sessions_active = Some(sessions.round() as i64);
        hb.requests_total = Some(self.requests as i64);
        hb.errors_total = Some(self.errors as i64);
        hb.slow_requests_total = Some(self.slow as i64);
        hb.cache_hits_total = Some(self.hits as i64);
        hb.cache_misses_total = Some(self.misses as i64);
        hb.latency_p95_ms = Some(p95 as f32);
        hb.latency_p99_ms = Some((p95 * 2.5) as f32);
        hb.db_query_p95_ms = Some(query_p95 as f32);
        hb.labels.insert("env".into(), "loadgen".into());
        hb.labels.insert("team".into(), format!("team-{}", self.app % 7));
        Some(hb)
    }

    /// `memory` with the noise a fault states as a share of the limit (`sigma`) in place of
    /// the level's own ±2 % (`jitter`, its factor), if one does.
    fn memory_noise(&self, faults: &[&ActiveFault], t: i64, memory: f64, jitter: f64) -> f64 {
        let Some(sigma) = faults.iter().filter(|f| f.active_at(t)).find_map(|f| f.params.shape.sigma) else {
            return memory;
        };
        let limit = self.baseline.memory_limit as f64;
        let own = limit * self.baseline.memory_ratio * (jitter - 1.0);
        memory - own + sigma * limit * shape::gaussian(self.shape_seed, t as u64)
    }

    /// A new process, started at `t`: counters and seq start over.
    fn reset_process(&mut self, t: i64) {
        self.process_start = t;
        self.seq = 0;
        self.requests = 0.0;
        self.errors = 0.0;
        self.slow = 0.0;
        self.hits = 0.0;
        self.misses = 0.0;
    }
}

/// Bytes no decoder accepts: never `C3`, `0` or `{` first.
pub fn poison_bytes(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let len = rng.random_range(1..64);
    let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    bytes[0] = b"!#%&*?~"[rng.random_range(0..7)];
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn fault(kind: FaultKind, from_ms: i64, to_ms: i64) -> ActiveFault {
        ActiveFault { kind, params: FaultParams::default(), app: 0, instance: None, from_ms, to_ms }
    }

    fn run(faults: &[ActiveFault], beats: usize) -> Vec<Option<Heartbeat>> {
        let mut sim = InstanceSim::new(7, 0, 0, "app-0".into(), 5_000);
        let refs: Vec<&ActiveFault> = faults.iter().collect();
        (0..beats).map(|i| sim.beat(i as i64 * 5_000, 5_000, &refs)).collect()
    }

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

    #[test]
    fn same_seed_same_beats() {
        let a = run(&[], 20);
        let b = run(&[], 20);
        assert_eq!(a, b);
    }

    #[test]
    fn steady_beats_are_valid_and_counters_grow() {
        let beats: Vec<Heartbeat> = run(&[], 50).into_iter().map(Option::unwrap).collect();
        for (i, b) in beats.iter().enumerate() {
            b.validate(b.sent_at, codec::DEFAULT_MAX_DRIFT_MS).unwrap();
            assert_eq!(b.seq, i as i64 + 1);
        }
        assert!(beats[49].requests_total > beats[0].requests_total);
    }

    #[test]
    fn crash_silences_then_restarts_with_a_reset_seq() {
        let beats = run(&[fault(FaultKind::Crash, 50_000, 100_000)], 30);
        assert!(beats[..10].iter().all(Option::is_some));
        assert!(beats[10..20].iter().all(Option::is_none));
        let back = beats[20].as_ref().unwrap();
        assert_eq!(back.seq, 1);
        assert_eq!(back.status, InstanceStatus::Starting);
    }

    #[test]
    fn crash_without_end_is_forever() {
        let beats = run(&[fault(FaultKind::Crash, 50_000, i64::MAX)], 30);
        assert!(beats[10..].iter().all(Option::is_none));
    }

    #[test]
    fn clean_stop_says_stopping_once() {
        let beats = run(&[fault(FaultKind::CleanStop, 50_000, i64::MAX)], 30);
        assert_eq!(beats[10].as_ref().unwrap().status, InstanceStatus::Stopping);
        assert!(beats[11..].iter().all(Option::is_none));
    }

    #[test]
    fn restart_resets_seq_once() {
        let beats: Vec<Heartbeat> =
            run(&[fault(FaultKind::Restart, 50_000, 55_000)], 20).into_iter().map(Option::unwrap).collect();
        assert_eq!(beats[9].seq, 10);
        assert_eq!(beats[10].seq, 1);
        assert_eq!(beats[11].seq, 2);
    }

    #[test]
    fn faults_move_their_figures() {
        let beats = run(&[fault(FaultKind::MemoryHigh, 0, i64::MAX)], 3);
        let b = beats[2].as_ref().unwrap();
        assert!(b.memory_used_bytes.unwrap() as f64 / b.memory_limit_bytes.unwrap() as f64 > 0.9);
        let beats = run(&[fault(FaultKind::CpuHigh, 0, i64::MAX)], 3);
        assert!(beats[2].as_ref().unwrap().cpu_ratio.unwrap() > 0.9);
        let beats = run(&[fault(FaultKind::Leak, 0, i64::MAX)], 720);
        let first = beats[1].as_ref().unwrap().memory_used_bytes.unwrap();
        let last = beats[719].as_ref().unwrap().memory_used_bytes.unwrap();
        assert!(last > first, "memory grows under a leak");
    }

    #[test]
    fn poison_is_never_decodable() {
        let mut rng = instance_rng(1, 2, 3, 4);
        for _ in 0..1000 {
            assert!(codec::decode(&poison_bytes(&mut rng), 0, i64::MAX).is_err());
        }
    }
}
