use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::heartbeat::Heartbeat;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// `minutes` points of `f(minute) × (1 ± noise)` with a flat request rate of 20/s.
fn series(minutes: usize, noise: f64, seed: u64, f: impl Fn(f64) -> f64) -> Vec<(f64, f64, f64)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..minutes)
        .map(|m| {
            let m = m as f64;
            let jitter = 1.0 + rng.random_range(-noise..=noise);
            (m, f(m) * jitter, 20.0 * (1.0 + rng.random_range(-0.02..=0.02)))
        })
        .collect()
}

/// Memory growing from 40 % of 1 GiB to the limit in `hours`.
fn leak(hours: f64) -> impl Fn(f64) -> f64 {
    move |m| 0.4 * GIB + 0.6 * GIB * m / (hours * 60.0)
}

/// What the engine concludes on a window of minute points, without older history.
fn judge_window(s: &[(f64, f64, f64)], c: &TrendConfig) -> Option<Growth> {
    assess(s, &[], c)
}

#[test]
fn a_six_hour_leak_is_found_within_twenty_minutes_and_warns() {
    let c = TrendConfig::default();
    for seed in 0..20 {
        let s = series(20, 0.01, seed, leak(6.0));
        let g = judge(&s, &c).unwrap_or_else(|| panic!("seed {seed}: leak not found"));
        let v = verdict(g, Some(GIB), &c).unwrap();
        assert_eq!(v.severity, Severity::Warning);
        let hours = v.exhaustion_in_ms.unwrap() as f64 / 3_600_000.0;
        assert!((5.0..6.5).contains(&hours), "seed {seed}: exhausts in {hours} h");
        assert!((g.slope_per_min * 60.0 / GIB - 0.1).abs() < 0.02, "{g:?}");
    }
}

#[test]
fn a_fast_leak_is_critical_and_a_slow_one_beyond_the_horizon_is_quiet() {
    let c = TrendConfig::default();
    let g = judge(&series(30, 0.01, 1, leak(0.9)), &c).unwrap();
    assert_eq!(verdict(g, Some(GIB), &c).unwrap().severity, Severity::Critical);
    // Exhausts in 100 h: a real trend, but far beyond the 24 h horizon.
    let g = judge(&series(60, 0.001, 1, leak(100.0)), &c).unwrap();
    assert_eq!(verdict(g, Some(GIB), &c), None);
}

#[test]
fn flat_noise_is_never_a_leak() {
    let c = TrendConfig::default();
    let found =
        (0..200).filter(|&seed| judge_window(&series(60, 0.05, seed, |_| 0.5 * GIB), &c).is_some()).count();
    assert_eq!(found, 0);
}

#[test]
fn a_leak_that_begins_in_a_steady_process_is_found_on_the_newest_points() {
    let c = TrendConfig::default();
    let onset = 40usize;
    for seed in 0..20 {
        // Steady for 40 minutes, then a 6 h leak; judged each minute on the last 60 points.
        let f = |m: f64| 0.4 * GIB + 0.6 * GIB * (m - onset as f64).max(0.0) / 360.0;
        let s = series(100, 0.01, seed, f);
        let window = |end: usize| &s[end.saturating_sub(60)..end];
        assert!(judge(window(onset + 20), &c).is_none(), "seed {seed}: the whole window is not persistent");
        let found = (onset..100).find(|&end| judge_window(window(end), &c).is_some());
        let found = found.unwrap_or_else(|| panic!("seed {seed}: late leak not found"));
        // In 1 % noise a 6 h leak stands out within minutes; never before it began.
        assert!(found >= onset + 5, "seed {seed}: judged on {} points of the leak", found - onset);
        assert!(found <= onset + 25, "seed {seed}: found {} min after it began", found - onset);
        // Once twenty minutes of it are seen, its slope is measured on them.
        let g = (onset + 20..onset + 30).find_map(|end| judge_window(window(end), &c)).unwrap();
        assert!((g.slope_per_min * 60.0 / GIB - 0.1).abs() < 0.03, "seed {seed}: {g:?}");
    }
}

#[test]
fn the_projection_of_a_leak_that_begins_late_rests_on_every_point_since_its_onset() {
    let c = TrendConfig::default();
    let onset = 60usize;
    let truth = 0.6 * GIB / 1440.0;
    let mut errors = Vec::new();
    for seed in 0..20 {
        // Steady for an hour, then a 24 h leak, in 1 % noise; judged on the last 120 points,
        // from 45 minutes into the leak.
        let f = |m: f64| 0.4 * GIB + 0.6 * GIB * (m - onset as f64).max(0.0) / 1440.0;
        let s = series(200, 0.01, seed, f);
        let window = |end: usize| &s[end.saturating_sub(120)..end];
        let (end, g) = (onset + 45..200)
            .find_map(|end| judge_window(window(end), &c).map(|g| (end, g)))
            .unwrap_or_else(|| panic!("seed {seed}: not found"));
        let seen = end - onset;
        // The onset is found: the projection is fitted on the points since, not on the
        // window's start nor on the stretch judged.
        assert!(g.projection.points.abs_diff(seen) <= 10, "seed {seed}: {seen} min seen, {g:?}");
        let error = g.projection.slope_per_min / truth - 1.0;
        assert!(error.abs() < 0.2, "seed {seed}: {g:?}");
        errors.push(error);
    }
    // Unbiased: the stretch judged, flat points and all, puts the slope 7 % low on average.
    let mean = errors.iter().sum::<f64>() / errors.len() as f64;
    assert!(mean.abs() < 0.03, "{errors:?}");
}

#[test]
fn fewer_points_than_the_minimum_are_not_judged() {
    let c = TrendConfig::default();
    assert!(judge(&series(c.min_points as usize - 1, 0.0, 1, leak(1.0)), &c).is_none());
}

#[test]
fn a_gc_saw_tooth_is_judged_on_its_troughs() {
    let c = TrendConfig::default();
    // Rises 30 % of the limit over five minutes, then collected back to the floor.
    let saw = |floor: fn(f64) -> f64| move |m: f64| floor(m) + 0.3 * GIB * ((m % 5.0) / 5.0);
    for seed in 0..20 {
        assert!(judge_window(&series(60, 0.01, seed, saw(|_| 0.4 * GIB)), &c).is_none(), "seed {seed}");
    }
    // The same saw-tooth whose floor rises: a leak under the garbage collector.
    let s = series(60, 0.005, 3, saw(|m| 0.3 * GIB + 0.004 * GIB * m));
    let g = judge_window(&s, &c).unwrap();
    assert!(g.troughs.unwrap() >= 10, "{g:?}");
    assert!((g.slope_per_min / GIB - 0.004).abs() < 0.001, "{g:?}");
}

#[test]
fn a_slow_diurnal_rise_in_noisy_traffic_is_not_a_leak() {
    let c = TrendConfig::default();
    for seed in 0..50 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // The third hour of a 24 h sine: traffic +9 % over the hour, hidden in ±4 % per
        // minute; memory follows it with an elasticity of 0.3, ±1 % noise.
        let s: Vec<(f64, f64, f64)> = (0..60)
            .map(|m| {
                let factor = 1.0 + 0.6 * ((120.0 + m as f64) / 1440.0 * std::f64::consts::TAU).sin();
                let rps = 30.0 * factor * (1.0 + rng.random_range(-0.04..0.04));
                let memory = 0.4 * GIB * (1.0 + 0.3 * (factor - 1.0)) * (1.0 + rng.random_range(-0.01..0.01));
                (m as f64, memory, rps)
            })
            .collect();
        assert!(judge_window(&s, &c).is_none(), "seed {seed}");
    }
}

#[test]
fn growth_that_follows_the_workload_is_not_a_leak() {
    let c = TrendConfig::default();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    // Traffic doubles in an hour; memory is a base plus a per-request share.
    let ramp: Vec<(f64, f64, f64)> = (0..60)
        .map(|m| {
            let rps = 20.0 * (1.0 + m as f64 / 60.0) * (1.0 + rng.random_range(-0.03..0.03));
            (m as f64, 0.3 * GIB + 0.01 * GIB * rps * (1.0 + rng.random_range(-0.01..0.01)), rps)
        })
        .collect();
    assert!(judge(&ramp, &c).is_none());
    // Diurnal traffic on its rising flank, memory following it.
    let diurnal: Vec<(f64, f64, f64)> = (0..60)
        .map(|m| {
            let rps = 50.0 + 40.0 * ((m as f64 + 300.0) / 1440.0 * std::f64::consts::TAU).sin();
            (m as f64, 0.3 * GIB + 0.002 * GIB * rps * (1.0 + rng.random_range(-0.01..0.01)), rps)
        })
        .collect();
    assert!(judge(&diurnal, &c).is_none());
    // Traffic that rises for 20 minutes, then levels off, while memory leaks all along.
    // While the window holds the ramp, growth and traffic cannot be told apart and the
    // detector stays quiet; once the traffic is level it finds the leak.
    let levelled: Vec<(f64, f64, f64)> = (0..120)
        .map(|m| {
            let m = m as f64;
            let rps = 20.0 * (1.0 + m.min(20.0) / 20.0) * (1.0 + rng.random_range(-0.03..0.03));
            (m, 0.3 * GIB + 0.01 * GIB * rps + 0.002 * GIB * m, rps)
        })
        .collect();
    let first = (60..=120).find(|&end| judge(&levelled[end - 60..end], &c).is_some());
    assert!(first.is_some_and(|end| end <= 20 + 60), "{first:?}");
}

#[test]
fn a_step_change_is_not_a_leak() {
    let c = TrendConfig::default();
    for step_at in [10.0, 30.0, 50.0] {
        for seed in 0..10 {
            // A cache warming after a deploy: +20 % of the limit over three minutes.
            let s = series(60, 0.01, seed, |m| 0.4 * GIB + 0.2 * GIB * ((m - step_at) / 3.0).clamp(0.0, 1.0));
            assert!(judge_window(&s, &c).is_none(), "step at {step_at}, seed {seed}");
        }
    }
}

#[test]
fn a_cache_warming_up_after_a_deploy_is_not_a_leak() {
    let c = TrendConfig::default();
    for tau in [3.0, 5.0, 10.0] {
        for seed in 0..5 {
            // A new process: its series starts with the warm-up.
            let s = series(60, 0.01, seed, |m| 0.4 * GIB + 0.2 * GIB * (1.0 - (-m / tau).exp()));
            for end in c.min_points as usize..=60 {
                assert!(judge_window(&s[..end], &c).is_none(), "tau {tau}, seed {seed}, {end} points");
            }
        }
    }
}

#[test]
fn a_resource_without_limit_warns_when_it_doubles_within_a_day() {
    let c = TrendConfig::default();
    let fast = judge(&series(30, 0.01, 1, |m| 500.0 + 500.0 * m / 60.0), &c).unwrap();
    let v = verdict(fast, None, &c).unwrap();
    assert_eq!((v.severity, v.exhaustion_in_ms), (Severity::Warning, None));
    let slow = judge(&series(60, 0.0005, 1, |m| 500.0 + 0.2 * m), &c).unwrap();
    assert_eq!(verdict(slow, None, &c), None);
}

#[test]
fn the_incremental_statistic_equals_the_batch_one() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut w = Window::default();
    let mut all = Vec::new();
    for m in 0..150u32 {
        let mut values = [f32::NAN; COLUMNS];
        values[0] = (rng.random_range(0..20) + m as i32 / 10) as f32;
        if m % 7 != 0 {
            values[2] = rng.random_range(0.0..5.0);
        }
        all.push(values);
        w.push(Point { minute: m, values }, 40);
        let start = all.len().saturating_sub(40);
        for (col, r) in [(0, Resource::Memory), (2, Resource::Sessions)] {
            let ys: Vec<f64> =
                all[start..].iter().map(|v| f64::from(v[col])).filter(|v| !v.is_nan()).collect();
            assert_eq!(w.s[col], stats::mann_kendall(&ys).s, "minute {m}, column {col}");
            assert_eq!(w.series(r).len(), ys.len());
        }
        assert!(w.len() <= 40);
    }
    // Persisted and read back: the same points, and the statistics recomputed.
    let json = serde_json::to_string(&w).unwrap();
    let back: Window = serde_json::from_str(&json).unwrap();
    assert_eq!((back.s, back.valid, back.len()), (w.s, w.valid, w.len()));
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
    assert!(json.len() < 40 * 40, "{} bytes for 40 points", json.len());
    assert!(serde_json::from_str::<Window>("\"AAAA\"").is_err(), "a partial point is refused");
    // In binary: points and statistics as they are.
    let bytes = postcard::to_stdvec(&w).unwrap();
    let back: Window = postcard::from_bytes(&bytes).unwrap();
    assert_eq!((back.s, back.valid, back.len()), (w.s, w.valid, w.len()));
    assert_eq!(postcard::to_stdvec(&back).unwrap(), bytes, "(points hold NaN, so compared as bytes)");
    assert!(bytes.len() < 40 * POINT_BYTES + 100, "{} bytes for 40 points", bytes.len());
    // A full window read back makes room for its next points, a few at a time.
    let mut back = back;
    for m in 150..200 {
        back.push(Point { minute: m, values: [m as f32; COLUMNS] }, 40);
        assert_eq!(back.len(), 40);
        assert!(back.coded_capacity() <= back.coded_bytes() + 8 * 32, "{} bytes kept", back.coded_capacity());
    }
}

/// The bits of a window's points (NaN compares unequal to itself).
fn bits(points: impl Iterator<Item = Point>) -> Vec<(u32, [u32; COLUMNS])> {
    points.map(|p| (p.minute, p.values.map(f32::to_bits))).collect()
}

#[test]
fn a_window_keeps_its_points_bit_for_bit_in_fewer_bytes() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut w = Window::default();
    let mut all: Vec<Point> = Vec::new();
    let mut minute = 29_000_000u32;
    for i in 0..400 {
        // Mostly the next minute; sometimes a gap, a long one, or the same minute again.
        minute += match i % 37 {
            5 => 7,
            11 => 500,
            17 => 0,
            _ => 1,
        };
        let level = 700e6 + f64::from(i) * 1e5;
        let values = [
            (level + rng.random_range(-3e6..3e6)) as f32,
            rng.random_range(0..60) as f32 / 12.0,
            if i % 9 == 0 { f32::NAN } else { 820.0 + rng.random_range(0..100) as f32 / 12.0 },
            44.0,
            if i % 50 == 3 { f32::INFINITY } else { -0.0 },
            rng.random_range(0.0..40.0),
        ];
        all.push(Point { minute, values });
        w.push(Point { minute, values }, 60);
        let start = all.len().saturating_sub(60);
        assert_eq!(bits(w.points()), bits(all[start..].iter().copied()), "after point {i}");
    }
    let raw = w.len() * POINT_BYTES;
    assert!(w.coded_bytes() * 10 < raw * 8, "{} coded bytes for {raw} raw", w.coded_bytes());
    let back: Window = postcard::from_bytes(&postcard::to_stdvec(&w).unwrap()).unwrap();
    assert_eq!(bits(back.points()), bits(w.points()));
    assert_eq!((back.s, back.valid), (w.s, w.valid));
}

#[test]
fn a_window_in_the_raw_form_of_state_version_3_reads_back() {
    let mut w = Window::default();
    for m in 0..30u32 {
        let values = [1e8 + m as f32 * 1e5, f32::NAN, 3.5, 44.0, 220.0 + m as f32, 12.25];
        w.push(Point { minute: 1_000 + m, values }, 20);
    }
    // Version 3 wrote the points raw (minute, then the columns) as bytes, then S and counts.
    let raw: Vec<u8> = w
        .points()
        .flat_map(|p| {
            let mut b = p.minute.to_le_bytes().to_vec();
            b.extend(p.values.iter().flat_map(|v| v.to_le_bytes()));
            b
        })
        .collect();
    struct RawBytes(Vec<u8>);
    impl serde::Serialize for RawBytes {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }
    let v3 = postcard::to_stdvec(&(RawBytes(raw.clone()), w.s, w.valid)).unwrap();
    let back: Window = postcard::from_bytes(&v3).unwrap();
    assert_eq!(bits(back.points()), bits(w.points()));
    assert_eq!((back.s, back.valid, back.len()), (w.s, w.valid, 20));
    // A length that is not a whole number of points is refused, as is one cut short.
    let mut bad = raw;
    bad.pop();
    assert!(
        postcard::from_bytes::<Window>(&postcard::to_stdvec(&(RawBytes(bad), w.s, w.valid)).unwrap())
            .is_err()
    );
    assert!(postcard::from_bytes::<Window>(&v3[..v3.len() / 2]).is_err());
}

#[test]
fn a_coded_window_that_does_not_decode_is_refused() {
    let mut w = Window::default();
    for m in 0..10u32 {
        w.push(Point { minute: m + 1, values: [m as f32; COLUMNS] }, 10);
    }
    let bytes = postcard::to_stdvec(&w).unwrap();
    // The form, the coded points, their count, the statistics: the count changed.
    let tail = postcard::to_stdvec(&(w.len() as u32, w.s, w.valid)).unwrap();
    let (count_at, len) = (bytes.len() - tail.len(), w.len() as u8);
    assert_eq!(bytes[count_at], len, "the point count where this test expects it");
    let mut more = bytes.clone();
    more[count_at] = len + 1;
    assert!(postcard::from_bytes::<Window>(&more).is_err());
    let mut fewer = bytes.clone();
    fewer[count_at] = len - 1;
    assert!(postcard::from_bytes::<Window>(&fewer).is_err());
    let mut unknown = bytes;
    unknown[0] = 2;
    assert!(postcard::from_bytes::<Window>(&unknown).is_err(), "a form neither coded nor raw");
}

fn beat(t: i64, memory: f64, seq: i64) -> Heartbeat {
    let mut b = Heartbeat::new("app", "app-i0", seq, t);
    b.memory_used_bytes = Some(memory as i64);
    b.memory_limit_bytes = Some(GIB as i64);
    b.requests_total = Some(seq * 100);
    b
}

#[test]
fn an_instance_fires_once_escalates_and_resolves_after_a_calm_period() {
    let c = TrendConfig::default();
    let mut trend = InstanceTrend::default();
    let mut out = Vec::new();
    let mut fired_at = None;
    // 6 h leak for 40 minutes, beats every 10 s.
    let mut seq = 0;
    for step in 0..240 {
        seq += 1;
        let t = step * 10_000;
        trend.observe(&beat(t, leak(6.0)(t as f64 / 60_000.0), seq), 100.0, &c, &mut out);
        if fired_at.is_none() && !out.is_empty() {
            fired_at = Some(t);
        }
    }
    // A new series is judged once it spans young_minutes (29).
    let fired_at = fired_at.expect("fires") as f64 / 60_000.0;
    assert!((29.0..=30.0).contains(&fired_at), "fired after {fired_at} min");
    assert!(matches!(out[..], [LeakChange::Fire { resource: Resource::Memory, .. }]), "{out:?}");
    assert_eq!(trend.open_alerts().count(), 1);
    out.clear();
    // The leak stops (memory flat at its level): resolves after the calm period, once.
    let plateau = leak(6.0)(40.0);
    for step in 240..600 {
        seq += 1;
        trend.observe(&beat(step * 10_000, plateau, seq), 100.0, &c, &mut out);
    }
    assert!(matches!(out[..], [LeakChange::Resolve { resource: Resource::Memory, .. }]), "{out:?}");
    assert_eq!(trend.open_alerts().count(), 0);
}

#[test]
fn a_restart_starts_a_new_series_and_resolves() {
    let c = TrendConfig::default();
    let mut trend = InstanceTrend::default();
    let mut out = Vec::new();
    for step in 0..240 {
        let t = step * 10_000;
        trend.observe(&beat(t, leak(2.0)(t as f64 / 60_000.0), step + 1), 100.0, &c, &mut out);
    }
    assert_eq!(trend.open_alerts().count(), 1);
    out.clear();
    trend.restart(&mut out);
    assert!(matches!(out[..], [LeakChange::Resolve { .. }]));
    assert!(trend.window.is_empty());
}

#[test]
fn the_defaults_are_valid_and_bad_values_name_their_key() {
    assert_eq!(TrendConfig::default().validate(), Ok(()));
    let c = TrendConfig { min_points: 200, ..TrendConfig::default() };
    assert_eq!(c.validate().unwrap_err().0, "trend.min_points");
    let c = TrendConfig { sessions_limit: -1.0, ..TrendConfig::default() };
    assert_eq!(c.validate().unwrap_err().0, "trend.sessions_limit");
}
