//! One simulated instance: its healthy figures (fixed by the seed), its sequence number and
//! counters, and the liveness faults that silence it, stop it or restart it. What the other
//! faults do to a beat's figures is in [`super::figures`].

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::figures::{Figures, Moment, Noise};
use super::{ActiveFault, FaultKind};
use crate::heartbeat::{Heartbeat, InstanceStatus};
use crate::loadgen::shape;

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

/// A deterministic generator for one instance and one purpose. Each input is mixed in
/// whole before the next: were the seed merely XORed with the application's index, seed `s`
/// and application `a` would draw what seed `s ^ d` draws for application `a ^ d`, and the
/// runs of neighbouring seeds would share their series.
pub fn instance_rng(seed: u64, app: usize, instance: usize, salt: u64) -> ChaCha8Rng {
    let h = [app as u64, instance as u64, salt].into_iter().fold(mix(seed), |h, x| mix(h ^ x));
    ChaCha8Rng::seed_from_u64(h)
}

/// SplitMix64's finaliser over `z` plus its increment: every bit of the input moves about
/// half of the output's.
fn mix(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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
        let status = self.liveness(t, faults)?;
        let scale: f64 = faults.iter().filter(|f| f.active_at(t)).map(|f| f.params.noise).product();
        let mut noise = Noise::new(&mut self.rng, scale);
        let mut figures = Figures::healthy(&self.baseline, &mut noise);
        let at = Moment { t, process_start: self.process_start, shape_seed: self.shape_seed };
        for f in faults.iter().filter(|f| f.active_at(t)) {
            figures.apply(f, at, &self.baseline, &mut noise);
        }
        let memory = self.memory_noise(faults, t, &figures);
        figures.memory = memory.clamp(0.0, self.baseline.memory_limit as f64);
        self.count_requests(&figures, interval_ms);
        self.seq += 1;
        Some(self.heartbeat(t, interval_ms, status, &figures))
    }

    /// Whether the instance beats at `t` under the liveness faults, and with which status:
    /// `None` while flapping, crashed or stopped; `Starting` for the first beat of a new process.
    fn liveness(&mut self, t: i64, faults: &[&ActiveFault]) -> Option<InstanceStatus> {
        let flapping_off = |f: &&ActiveFault| {
            f.kind == FaultKind::Flapping && f.active_at(t) && f.elapsed_s(t) % 180.0 < 90.0
        };
        if faults.iter().any(flapping_off) {
            return None;
        }
        let mut status = self.stop_or_return(t, faults)?;
        if self.restart(t, faults) {
            status = InstanceStatus::Starting;
        }
        Some(status)
    }

    /// Crashes and clean stops: silent while one is active (a clean stop says STOPPING
    /// first; one without an end leaves for good), back as a new process when it ends.
    fn stop_or_return(&mut self, t: i64, faults: &[&ActiveFault]) -> Option<InstanceStatus> {
        let mut status = InstanceStatus::Ok;
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
        Some(status)
    }

    /// Restarts and deploys: the process starts over once, at the first beat of the fault.
    /// Whether it did at `t`.
    fn restart(&mut self, t: i64, faults: &[&ActiveFault]) -> bool {
        let mut restarted = false;
        for f in faults.iter().filter(|f| matches!(f.kind, FaultKind::Restart | FaultKind::StepChange)) {
            if f.active_at(t) && self.restarted_for != Some(f.from_ms) {
                self.restarted_for = Some(f.from_ms);
                self.reset_process(t);
                restarted = true;
            }
        }
        restarted
    }

    /// Adds one interval's requests, errors, slow requests and cache lookups to the counters.
    fn count_requests(&mut self, figures: &Figures, interval_ms: i32) {
        let dt = f64::from(interval_ms) / 1000.0;
        let rps = figures.rps;
        self.requests += rps * dt;
        self.errors += rps * dt * figures.error_ratio;
        self.slow += rps * dt * figures.slow_ratio;
        self.hits += rps * dt * 0.85;
        self.misses += rps * dt * 0.15;
    }

    /// The heartbeat that carries `figures` and the counters at `t`.
    fn heartbeat(&self, t: i64, interval_ms: i32, status: InstanceStatus, figures: &Figures) -> Heartbeat {
        let b = &self.baseline;
        let f = figures;
        let mut hb = Heartbeat::new(self.app_id.clone(), self.instance_id.clone(), self.seq, t);
        hb.interval_ms = interval_ms;
        hb.status = status;
        hb.memory_used_bytes = Some(f.memory as i64);
        hb.memory_limit_bytes = Some(b.memory_limit);
        hb.cpu_ratio = Some(f.cpu.clamp(0.0, 1.0) as f32);
        hb.disk_used_ratio = Some(f.disk.clamp(0.0, 1.0) as f32);
        hb.db_pool_size = Some(b.pool_size);
        hb.db_pool_in_use = Some((f.in_use.round() as i32).clamp(0, b.pool_size));
        hb.db_pool_waiting = Some(f.waiting as i32);
        hb.threads = Some(f.threads.round() as i32);
        hb.open_fds = Some(f.fds.round() as i32);
        hb.request_queue_depth = Some(f.queue.round().max(0.0) as i32);
        hb.sessions_active = Some(f.sessions.round() as i64);
        hb.requests_total = Some(self.requests as i64);
        hb.errors_total = Some(self.errors as i64);
        hb.slow_requests_total = Some(self.slow as i64);
        hb.cache_hits_total = Some(self.hits as i64);
        hb.cache_misses_total = Some(self.misses as i64);
        hb.latency_p95_ms = Some(f.p95 as f32);
        hb.latency_p99_ms = Some((f.p95 * 2.5) as f32);
        hb.db_query_p95_ms = Some(f.query_p95 as f32);
        hb.labels.insert("env".into(), "loadgen".into());
        hb.labels.insert("team".into(), format!("team-{}", self.app % 7));
        hb
    }

    /// The memory figure with the noise a fault states as a share of the limit (`sigma`) in
    /// place of the level's own ±2 %, if one does.
    fn memory_noise(&self, faults: &[&ActiveFault], t: i64, figures: &Figures) -> f64 {
        let Some((sigma, from_ms)) =
            faults.iter().filter(|f| f.active_at(t)).find_map(|f| Some((f.params.shape.sigma?, f.from_ms)))
        else {
            return figures.memory;
        };
        let limit = self.baseline.memory_limit as f64;
        let own = limit * self.baseline.memory_ratio * (figures.memory_jitter - 1.0);
        // Drawn on the time since the fault began, so that a seed gives the same noise
        // whenever it runs.
        let k = (t - from_ms).max(0) as u64;
        figures.memory - own + sigma * limit * shape::gaussian(self.shape_seed, k)
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
    use crate::loadgen::scenario::FaultParams;

    fn fault(kind: FaultKind, from_ms: i64, to_ms: i64) -> ActiveFault {
        ActiveFault { kind, params: FaultParams::default(), app: 0, instance: None, from_ms, to_ms }
    }

    fn run(faults: &[ActiveFault], beats: usize) -> Vec<Option<Heartbeat>> {
        let mut sim = InstanceSim::new(7, 0, 0, "app-0".into(), 5_000);
        let refs: Vec<&ActiveFault> = faults.iter().collect();
        (0..beats).map(|i| sim.beat(i as i64 * 5_000, 5_000, &refs)).collect()
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
    fn neighbouring_seeds_draw_other_numbers_for_every_application() {
        let first = |seed: u64, app: usize| instance_rng(seed, app, 0, 2).random::<u64>();
        // 73 ^ 108 == 74 ^ 111: once, these two drew the same series.
        assert_ne!(first(73, 108), first(74, 111));
        let mut seen = std::collections::HashSet::new();
        for seed in 1..=80 {
            for app in 0..128 {
                assert!(seen.insert(first(seed, app)), "seed {seed}, app {app}");
            }
        }
        assert_eq!(first(5, 7), first(5, 7));
    }

    #[test]
    fn poison_is_never_decodable() {
        let mut rng = instance_rng(1, 2, 3, 4);
        for _ in 0..1000 {
            assert!(codec::decode(&poison_bytes(&mut rng), 0, i64::MAX).is_err());
        }
    }
}
