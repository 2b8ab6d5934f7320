//! Threshold rules, rates from counters, rollups and per-application overrides.

use super::*;

fn run_cpu(minutes_high: i64) -> Vec<(AlertKind, AlertState, Severity, i64, Option<String>)> {
    let mut e = engine();
    let mut out = Vec::new();
    let mut seq = 0;
    let mut t = T0;
    while t < T0 + 20 * 60 * S {
        seq += 1;
        let mut b = beat("a", "i0", seq, t);
        let high = t >= T0 + 60 * S && t < T0 + (60 + minutes_high * 60) * S;
        b.cpu_ratio = Some(if high { 0.95 } else { 0.3 });
        e.on_beat(b, seq, 0, &mut out);
        t += 5 * S;
    }
    alerts(&out)
}

#[test]
fn cpu_above_90_for_4_minutes_fires_nothing_for_6_it_fires_critical() {
    assert!(run_cpu(4).is_empty(), "{:?}", run_cpu(4));
    let six = run_cpu(6);
    assert_eq!(six.len(), 2, "{six:?}");
    assert_eq!(
        (six[0].0, six[0].1, six[0].2, six[0].3),
        (AlertKind::CpuHigh, AlertState::Firing, Severity::Critical, T0 + 360 * S)
    );
    assert_eq!((six[1].1, six[1].3), (AlertState::Resolved, T0 + 420 * S));
}

#[test]
fn error_rate_comes_from_counter_deltas_and_survives_a_reset() {
    let mut e = engine();
    let mut out = Vec::new();
    let (mut req, mut err) = (10_000i64, 0i64);
    for i in 0..60 {
        let t = T0 + i * 5 * S;
        if i == 30 {
            // The process restarted: counters start over (seq too).
            req = 0;
            err = 0;
        }
        req += 100;
        err += if i >= 10 { 15 } else { 0 };
        let mut b = beat("a", "i0", if i >= 30 { i - 29 } else { i + 1 }, t);
        b.requests_total = Some(req);
        b.errors_total = Some(err);
        e.on_beat(b, i, 0, &mut out);
    }
    let got: Vec<_> = alerts(&out).into_iter().filter(|a| a.0 == AlertKind::ErrorRateHigh).collect();
    // 15 % errors: warning once the minute's rate passes 5 %, then critical past 10 %; the
    // counter reset at beat 30 neither resolves nor re-fires it.
    let states: Vec<(AlertState, Severity)> = got.iter().map(|a| (a.1, a.2)).collect();
    assert_eq!(
        states,
        vec![(AlertState::Firing, Severity::Warning), (AlertState::Firing, Severity::Critical)]
    );
}

#[test]
fn rollups_close_when_the_watermark_passes_the_minute_and_add_up() {
    let mut e = engine();
    let mut out = Vec::new();
    let start = T0 - T0 % 60_000;
    run_app(&mut e, "a", start, start + 300 * S - 1, 0, &mut out);
    e.on_end_of_partition(0, &mut out);
    e.on_tick(120 * S, &mut out);
    let rollups: Vec<&Rollup> = out
        .iter()
        .filter_map(|e| match e {
            Effect::Rollup(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rollups.len(), 5);
    assert!(rollups.iter().all(|r| r.beats == 12));
    assert_eq!(
        rollups.iter().map(|r| r.minute).collect::<Vec<_>>(),
        (0..5).map(|m| start + m * 60_000).collect::<Vec<_>>()
    );
}

#[test]
fn each_threshold_scenario_yields_its_alert_on_its_app_only_and_resolves() {
    for (kind, expected) in [
        (FaultKind::MemoryHigh, AlertKind::MemoryHigh),
        (FaultKind::CpuHigh, AlertKind::CpuHigh),
        (FaultKind::PoolSaturation, AlertKind::DbPoolSaturated),
        (FaultKind::SlowResponses, AlertKind::SlowResponses),
        (FaultKind::ErrorBurst, AlertKind::ErrorRateHigh),
        (FaultKind::QueueBacklog, AlertKind::QueueBacklog),
        (FaultKind::SlowQueries, AlertKind::SlowQueries),
        (FaultKind::DiskHigh, AlertKind::DiskHigh),
    ] {
        let got = simulate(kind, 45);
        let of_kind: Vec<&Alert> = got.iter().filter(|a| a.kind == expected).collect();
        assert!(!of_kind.is_empty(), "{kind:?}: no {expected:?} in {got:#?}");
        assert!(got.iter().all(|a| a.app_id == "app-0"), "{kind:?}: an alert on a healthy app: {got:#?}");
        for inst in ["app-0-i0", "app-0-i1"] {
            let mine: Vec<&&Alert> =
                of_kind.iter().filter(|a| a.instance_id.as_deref() == Some(inst)).collect();
            assert_eq!(mine.first().map(|a| a.state), Some(AlertState::Firing), "{kind:?} {inst}");
            assert_eq!(mine.last().map(|a| a.state), Some(AlertState::Resolved), "{kind:?} {inst} resolves");
            assert!(mine.last().unwrap().event_at >= T0 + 30 * 60 * S);
            assert!(!mine[0].recommendations.is_empty(), "{kind:?} explains itself");
        }
    }
}

#[test]
fn non_faults_raise_nothing() {
    for kind in [FaultKind::Steady, FaultKind::WorkloadRamp, FaultKind::GcSawtooth, FaultKind::CleanStop] {
        let got = simulate(kind, 45);
        assert!(got.is_empty(), "{kind:?}: {got:#?}");
    }
}

#[test]
fn per_app_overrides_change_liveness_and_thresholds() {
    let mut rules = RuleSet::default();
    rules.overrides.push(crate::rules::RuleOverride {
        app: Some("batch-*".into()),
        late_factor: Some(10.0),
        disk: Some(crate::rules::ThresholdsOverride {
            warning: Some(0.97),
            critical: Some(0.99),
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = DetectionConfig::default();
    let compiled = CompiledRules::new(&rules, &c, &TrendConfig::default()).unwrap();
    let mut out = Vec::new();
    for (app, gap) in [("batch-1", 30 * S), ("web", 30 * S)] {
        let mut e = Engine::new(0, c.clone(), compiled.clone());
        let mut b = beat(app, "i0", 1, T0);
        b.disk_used_ratio = Some(0.96);
        e.on_beat(b, 1, 0, &mut out);
        let mut b = beat(app, "i0", 2, T0 + gap);
        b.disk_used_ratio = Some(0.96);
        e.on_beat(b, 2, 0, &mut out);
    }
    let kinds = |app: &str| -> Vec<AlertKind> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Alert(a) if a.app_id == app && a.state == AlertState::Firing => Some(a.kind),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        kinds("batch-1"),
        Vec::<AlertKind>::new(),
        "a 30 s gap is fine at 10 x 5 s, 96 % disk below 97 %"
    );
    assert_eq!(kinds("web"), vec![AlertKind::DiskHigh, AlertKind::InstanceLate]);
}

#[test]
fn the_rate_window_stays_bounded_when_beats_share_a_timestamp() {
    let mut e = engine();
    let mut out = Vec::new();
    for i in 0..1_000 {
        let mut b = beat("a", "i0", i + 1, T0);
        b.requests_total = Some(i * 10);
        e.on_beat(b, i, 0, &mut out);
    }
    let window = &e.app("a").unwrap().instances["a-i0"].rate_window;
    assert!(window.len() <= 121, "{} samples kept", window.len());
}

#[test]
fn a_rate_window_read_back_from_a_state_record_does_not_grow_at_the_next_beat() {
    let mut e = engine();
    let mut out = Vec::new();
    for i in 0..40 {
        let mut b = beat("a", "i0", i + 1, T0 + i * 5 * S);
        b.requests_total = Some(i * 10);
        e.on_beat(b, i, 0, &mut out);
    }
    let inst = &e.app("a").unwrap().instances["a-i0"];
    let mut back: InstanceState = postcard::from_bytes(&postcard::to_stdvec(inst.as_ref()).unwrap()).unwrap();
    let room = back.rate_window.capacity();
    let mut b = beat("a", "i0", 41, T0 + 40 * 5 * S);
    b.requests_total = Some(400);
    let d = back.deltas_to(&b);
    back.observe_rates(&b, &d);
    assert_eq!(back.rate_window.len(), inst.rate_window.len(), "a minute of 5 s beats");
    assert!(
        back.rate_window.capacity() <= room,
        "room for {} after a beat, {room} before",
        back.rate_window.capacity()
    );
}
