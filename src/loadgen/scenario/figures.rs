//! The figures of one beat: an instance's healthy figures with their noise, and what each
//! family of fault (resource, leak, workload) does to them. Liveness faults decide whether
//! there is a beat at all; they are the instance's ([`super::sim`]).
//!
//! Every figure draws from the instance's generator in a fixed order: the same seed gives the
//! same beats, so a new draw goes after the existing ones.

use std::f64::consts::TAU;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::sim::Baseline;
use super::{ActiveFault, FaultKind};
use crate::loadgen::shape;

/// Noise on the figures: factors around 1 drawn from the instance's generator, their spread
/// multiplied by the `noise` of the faults active.
pub(super) struct Noise<'a> {
    rng: &'a mut ChaCha8Rng,
    scale: f64,
}

impl<'a> Noise<'a> {
    pub(super) fn new(rng: &'a mut ChaCha8Rng, scale: f64) -> Noise<'a> {
        Noise { rng, scale }
    }

    /// A factor within 1 ± `spread` (times the scale); exactly 1 without spread.
    fn draw(&mut self, spread: f64) -> f64 {
        let spread = spread * self.scale;
        if spread > 0.0 { 1.0 + self.rng.random_range(-spread..spread) } else { 1.0 }
    }
}

/// When a beat is: its event time, the current process's start, and the instance's seed for
/// shapes of its own.
#[derive(Clone, Copy)]
pub(super) struct Moment {
    pub t: i64,
    pub process_start: i64,
    pub shape_seed: u64,
}

/// What one beat reports, before it is rounded into a heartbeat: gauges, and the ratios
/// and rate that the instance's counters grow by.
pub(super) struct Figures {
    pub memory: f64,
    /// The factor of the memory level's own noise (±2 %), for a fault that states its noise
    /// otherwise.
    pub memory_jitter: f64,
    pub cpu: f64,
    pub in_use: f64,
    pub waiting: f64,
    /// Requests per second.
    pub rps: f64,
    pub error_ratio: f64,
    pub slow_ratio: f64,
    pub p95: f64,
    pub queue: f64,
    pub query_p95: f64,
    pub disk: f64,
    pub sessions: f64,
    pub threads: f64,
    pub fds: f64,
}

impl Figures {
    /// The instance's healthy figures, with noise.
    pub(super) fn healthy(b: &Baseline, noise: &mut Noise) -> Figures {
        let limit = b.memory_limit as f64;
        let memory_jitter = noise.draw(0.02);
        Figures {
            memory: limit * b.memory_ratio * memory_jitter,
            memory_jitter,
            cpu: b.cpu * noise.draw(0.10),
            in_use: f64::from(b.pool_size) * b.pool_in_use * noise.draw(0.2),
            waiting: 0.0,
            rps: b.requests_per_s * noise.draw(0.05),
            error_ratio: 0.004,
            slow_ratio: 0.01,
            p95: 120.0 * noise.draw(0.15),
            queue: 2.0 * noise.draw(0.5),
            query_p95: 20.0 * noise.draw(0.2),
            disk: b.disk,
            sessions: b.sessions * noise.draw(0.03),
            threads: b.threads,
            fds: b.fds * noise.draw(0.02),
        }
    }

    /// Moves the figures as fault `f`, active at `t`, does; `process_start` is when the
    /// current process started (what a process accumulates starts over with it);
    /// `shape_seed` draws the shapes that depend on the instance (a wander).
    pub(super) fn apply(&mut self, f: &ActiveFault, at: Moment, b: &Baseline, noise: &mut Noise) {
        let Moment { t, process_start, shape_seed } = at;
        use FaultKind::*;
        let lived = f.process_elapsed_s(t, process_start);
        match f.kind {
            MemoryHigh | CpuHigh | PoolSaturation | SlowResponses | ErrorBurst | QueueBacklog
            | SlowQueries | DiskHigh => self.resource_fault(f.kind, b, noise),
            Leak | ConnectionLeak | SessionLeak => self.leak(f, lived, b),
            StepChange | Diurnal | BusyPool | WorkloadRamp | GcSawtooth => {
                self.workload(f, f.elapsed_s(t), lived, b, noise)
            }
            Wander => {
                let limit = b.memory_limit as f64;
                self.memory += limit * shape::wander(&f.params.shape, shape_seed, f.elapsed_s(t));
            }
            // Liveness faults and poison leave the figures alone.
            Steady | Crash | CleanStop | Restart | Poison | Flapping => {}
        }
    }

    /// A resource past its threshold for as long as the fault lasts.
    fn resource_fault(&mut self, kind: FaultKind, b: &Baseline, noise: &mut Noise) {
        let limit = b.memory_limit as f64;
        match kind {
            FaultKind::MemoryHigh => self.memory = limit * 0.94 * noise.draw(0.01),
            FaultKind::CpuHigh => self.cpu = 0.95 * noise.draw(0.02),
            FaultKind::PoolSaturation => {
                self.in_use = f64::from(b.pool_size);
                self.waiting = 6.0;
                self.p95 *= 8.0;
                self.query_p95 *= 3.0;
            }
            FaultKind::SlowResponses => {
                self.p95 = 7_500.0 * noise.draw(0.05);
                self.slow_ratio = 0.4;
            }
            FaultKind::ErrorBurst => self.error_ratio = 0.15,
            FaultKind::QueueBacklog => self.queue = 150.0 * noise.draw(0.1),
            FaultKind::SlowQueries => self.query_p95 = 6_000.0 * noise.draw(0.05),
            FaultKind::DiskHigh => self.disk = 0.97,
            _ => {}
        }
    }

    /// A leak, grown for the `lived` seconds the current process has had the fault: a new
    /// process starts from the baseline again.
    fn leak(&mut self, f: &ActiveFault, lived: f64, b: &Baseline) {
        let limit = b.memory_limit as f64;
        let exhaust_s = f.params.exhaust.map(|d| d.as_secs_f64());
        match f.kind {
            // Grows from the baseline to the limit in six hours (or `exhaust`).
            FaultKind::Leak => {
                self.memory += limit * (1.0 - b.memory_ratio) * lived / exhaust_s.unwrap_or(6.0 * 3600.0);
            }
            // One more connection held every ten minutes (or the free ones in `exhaust`),
            // up to the pool size.
            FaultKind::ConnectionLeak => {
                let free = f64::from(b.pool_size) * (1.0 - b.pool_in_use);
                let per_s = exhaust_s.map_or(1.0 / 600.0, |e| free / e);
                self.in_use = (self.in_use + lived * per_s).min(f64::from(b.pool_size));
                self.fds += lived * per_s;
            }
            FaultKind::SessionLeak => {
                self.sessions += b.sessions * lived / 3600.0;
                self.memory += limit * 0.1 * lived / 3600.0;
            }
            _ => {}
        }
    }

    /// Workloads that move memory or the pool without leaking: the shapes a leak detector
    /// must not mistake for a leak. `s` is the time since the fault started, `lived` since
    /// the later of that and the process's start.
    fn workload(&mut self, f: &ActiveFault, s: f64, lived: f64, b: &Baseline, noise: &mut Noise) {
        let limit = b.memory_limit as f64;
        match f.kind {
            // The new process's cache fills: +20 % of the limit, time constant 5 min (or as shaped).
            FaultKind::StepChange => self.memory += limit * shape::warm_up(&f.params.shape, lived),
            FaultKind::Diurnal => {
                let factor = 1.0 + 0.6 * (s / 86_400.0 * TAU).sin();
                self.rps *= factor;
                self.memory *= 1.0 + 0.3 * (factor - 1.0);
                self.in_use *= factor;
                self.cpu = (self.cpu * factor).min(0.75);
            }
            FaultKind::BusyPool => {
                let swing = 0.15 * (s / 1200.0 * TAU).sin();
                self.in_use = f64::from(b.pool_size) * (0.55 + swing) * noise.draw(0.1);
            }
            // Traffic doubles per hour; memory and pool follow it.
            FaultKind::WorkloadRamp => {
                let factor = 1.0 + s / 3600.0;
                self.rps *= factor;
                self.memory *= 1.0 + 0.3 * (factor - 1.0).min(1.5);
                self.in_use = (self.in_use * factor).min(f64::from(b.pool_size) * 0.8);
                self.cpu = (self.cpu * factor).min(0.75);
            }
            // Rises 30 % of the limit over five minutes, then collected (or as shaped).
            FaultKind::GcSawtooth => self.memory += limit * shape::sawtooth(&f.params.shape, s),
            _ => {}
        }
    }
}
