//! Liveness: LATE, DOWN, APP_DOWN, restarts, FLAPPING, phi-accrual, and the watermark they
//! are judged on.

use super::*;

#[test]
fn an_instance_keeps_its_newest_beat_without_ids_and_labels() {
    let mut e = engine();
    let mut out = Vec::new();
    let mut b = beat("a", "i0", 1, T0);
    b.labels.insert("team".into(), "payments".into());
    b.cpu_ratio = Some(0.5);
    e.on_beat(b, 1, 0, &mut out);
    let app = e.app("a").unwrap();
    let last = &app.instances["a-i0"].last;
    assert_eq!((last.app_id.as_str(), last.instance_id.as_str(), last.labels.is_empty()), ("", "", true));
    assert_eq!((last.sent_at, last.cpu_ratio), (T0, Some(0.5)));
    assert_eq!(app.labels.get("team").map(String::as_str), Some("payments"), "the app keeps the labels");
    assert_eq!(app.snapshot("a", 0).last_figures.get("cpu_ratio"), Some(&0.5));
}

#[test]
fn steady_beats_raise_nothing() {
    let mut e = engine();
    let mut out = Vec::new();
    run_app(&mut e, "a", T0, T0 + 600 * S, 0, &mut out);
    assert!(alerts(&out).is_empty(), "{:?}", alerts(&out));
    assert_eq!(e.app("a").unwrap().snapshot("a", 0).status, "UP");
}

#[test]
fn a_silent_instance_goes_late_then_down_at_its_deadlines_and_resolves_on_return() {
    let mut e = engine();
    let mut out = Vec::new();
    // Two apps on the partition; "b" keeps beating and drives the watermark.
    run_app(&mut e, "a", T0, T0 + 20 * S, 0, &mut out);
    run_app(&mut e, "b", T0, T0 + 120 * S, 0, &mut out);
    let last = T0 + 20 * S;
    let late_at = last + 10 * S;
    let down_at = late_at + 30 * S;
    assert_eq!(
        alerts(&out),
        vec![
            (AlertKind::InstanceLate, AlertState::Firing, Severity::Warning, late_at, Some("a-i0".into())),
            (AlertKind::InstanceDown, AlertState::Firing, Severity::Critical, down_at, Some("a-i0".into())),
            (AlertKind::AppDown, AlertState::Firing, Severity::Critical, down_at, None),
        ]
    );
    assert_eq!(e.app("a").unwrap().snapshot("a", 0).status, "DOWN");
    out.clear();
    let back = T0 + 125 * S;
    e.on_beat(beat("a", "i0", 5, back), 100, 0, &mut out);
    let got = alerts(&out);
    assert!(got.contains(&(
        AlertKind::InstanceLate,
        AlertState::Resolved,
        Severity::Warning,
        back,
        Some("a-i0".into())
    )));
    assert!(got.contains(&(
        AlertKind::InstanceDown,
        AlertState::Resolved,
        Severity::Critical,
        back,
        Some("a-i0".into())
    )));
    assert!(got.contains(&(AlertKind::AppDown, AlertState::Resolved, Severity::Critical, back, None)));
    assert_eq!(got.len(), 3);
}

#[test]
fn app_down_waits_for_every_instance() {
    let mut e = engine();
    let mut out = Vec::new();
    for (i, t) in (0..5).map(|i| (i, T0 + i * 5 * S)) {
        e.on_beat(beat("a", "i0", i + 1, t), i, 0, &mut out);
        e.on_beat(beat("a", "i1", i + 1, t), i, 0, &mut out);
    }
    // i0 goes silent; i1 keeps beating.
    for i in 5..40 {
        e.on_beat(beat("a", "i1", i + 1, T0 + i * 5 * S), i, 0, &mut out);
    }
    let kinds: Vec<AlertKind> = alerts(&out).iter().map(|a| a.0).collect();
    assert_eq!(kinds, vec![AlertKind::InstanceLate, AlertKind::InstanceDown]);
    assert_eq!(e.app("a").unwrap().snapshot("a", 0).status, "DEGRADED");
}

#[test]
fn a_caught_up_partition_fires_on_wall_time_a_lagging_one_does_not() {
    let mut lagging = engine();
    let mut out = Vec::new();
    run_app(&mut lagging, "a", T0, T0 + 20 * S, 0, &mut out);
    lagging.on_tick(10_000_000, &mut out);
    assert!(alerts(&out).is_empty(), "no wall-time advance while lagging");

    let mut caught_up = engine();
    let mut out = Vec::new();
    let wall = 5_000_000;
    run_app(&mut caught_up, "a", T0, T0 + 20 * S, 0, &mut out);
    caught_up.on_end_of_partition(wall, &mut out);
    caught_up.on_tick(wall + 30 * S, &mut out);
    assert_eq!(alerts(&out).iter().map(|a| a.0).collect::<Vec<_>>(), vec![AlertKind::InstanceLate]);
    caught_up.on_tick(wall + 120 * S, &mut out);
    let got = alerts(&out);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[1].3, T0 + 20 * S + 40 * S, "event_at is the deadline, not the tick");
}

#[test]
fn stopping_leaves_cleanly_without_alerts() {
    let mut e = engine();
    let mut out = Vec::new();
    run_app(&mut e, "a", T0, T0 + 20 * S, 0, &mut out);
    let mut bye = beat("a", "i0", 6, T0 + 25 * S);
    bye.status = InstanceStatus::Stopping;
    e.on_beat(bye, 6, 0, &mut out);
    run_app(&mut e, "b", T0, T0 + 600 * S, 0, &mut out);
    assert!(alerts(&out).is_empty(), "{:?}", alerts(&out));
    let records = e.take_state_records();
    let of_a =
        |kind: fn(&StateRecordOut) -> bool| records.iter().find(|r| r.app_id == "a" && kind(r)).unwrap();
    let snapshot: AppSnapshot = serde_json::from_slice(&of_a(StateRecordOut::is_snapshot).value).unwrap();
    assert_eq!((snapshot.status.as_str(), snapshot.instances_total), ("STOPPED", 0));
    let state = of_a(StateRecordOut::is_state);
    assert_eq!(StateRecord::decode(&state.value, Some(&state.header)).unwrap().version, STATE_VERSION);
}

#[test]
fn a_seq_reset_fires_restarted_once_and_it_resolves_after_the_quiet_period() {
    let mut e = engine();
    let mut out = Vec::new();
    run_app(&mut e, "a", T0, T0 + 60 * S, 0, &mut out);
    let t = run_app(&mut e, "a", T0 + 65 * S, T0 + 70 * S, 0, &mut out);
    assert_eq!(t, 2);
    let got = alerts(&out);
    assert_eq!(
        got,
        vec![(
            AlertKind::InstanceRestarted,
            AlertState::Firing,
            Severity::Warning,
            T0 + 65 * S,
            Some("a-i0".into())
        )]
    );
    out.clear();
    run_app(&mut e, "a", T0 + 75 * S, T0 + 1_000 * S, 2, &mut out);
    assert_eq!(
        alerts(&out),
        vec![(
            AlertKind::InstanceRestarted,
            AlertState::Resolved,
            Severity::Warning,
            T0 + 665 * S,
            Some("a-i0".into())
        )]
    );
}

#[test]
fn a_restart_after_the_quiet_period_of_another_fires_anew_whatever_the_watermark_says() {
    let mut e = engine();
    let mut out = Vec::new();
    run_app(&mut e, "a", T0, T0 + 60 * S, 0, &mut out);
    // A restart at 65 s, whose quiet period ends at 665 s; beats until then.
    let seq = run_app(&mut e, "a", T0 + 65 * S, T0 + 665 * S, 0, &mut out);
    out.clear();
    // The next restart 2 s later: the watermark, 5 s of lateness behind the newest beat, has
    // not passed 665 s, but the first alert's quiet period ended before this beat all the same.
    e.on_beat(beat("a", "i0", 1, T0 + 667 * S), seq + 1, 0, &mut out);
    let restarted =
        |state, at| (AlertKind::InstanceRestarted, state, Severity::Warning, at, Some("a-i0".to_owned()));
    assert_eq!(
        alerts(&out),
        vec![restarted(AlertState::Resolved, T0 + 665 * S), restarted(AlertState::Firing, T0 + 667 * S)]
    );
    // The first alert's timer, due later, finds nothing left to resolve.
    out.clear();
    run_app(&mut e, "a", T0 + 670 * S, T0 + 1_300 * S, 1, &mut out);
    assert_eq!(alerts(&out), vec![restarted(AlertState::Resolved, T0 + 1_267 * S)]);
}

#[test]
fn an_alert_id_fires_at_most_once_until_resolved() {
    for kind in [FaultKind::Crash, FaultKind::MemoryHigh, FaultKind::ErrorBurst, FaultKind::Restart] {
        let got = simulate(kind, 60);
        assert!(!got.is_empty(), "{kind:?}");
        let mut open: HashMap<String, Severity> = HashMap::new();
        for a in &got {
            match a.state {
                AlertState::Firing => {
                    if let Some(prev) = open.insert(a.alert_id.clone(), a.severity) {
                        assert!(
                            a.severity > prev,
                            "{kind:?}: {} fired twice at {:?}",
                            a.alert_id,
                            a.severity
                        );
                    }
                }
                AlertState::Resolved => {
                    assert!(open.remove(&a.alert_id).is_some(), "{kind:?}: resolved without firing: {a:?}");
                }
            }
        }
    }
}

#[test]
fn a_crashed_app_goes_down_instance_by_instance_then_app_down() {
    let got = simulate(FaultKind::Crash, 45);
    let fired: Vec<(AlertKind, Option<String>, AlertState)> =
        got.iter().map(|a| (a.kind, a.instance_id.clone(), a.state)).collect();
    for inst in ["app-0-i0", "app-0-i1"] {
        for kind in [AlertKind::InstanceLate, AlertKind::InstanceDown] {
            for state in [AlertState::Firing, AlertState::Resolved] {
                assert!(
                    fired.contains(&(kind, Some(inst.into()), state)),
                    "{kind:?} {state:?} {inst} missing: {fired:#?}"
                );
            }
        }
    }
    assert!(fired.contains(&(AlertKind::AppDown, None, AlertState::Firing)), "{fired:#?}");
    assert!(fired.contains(&(AlertKind::AppDown, None, AlertState::Resolved)), "{fired:#?}");
}

#[test]
fn a_gap_in_an_apps_own_beats_is_late_and_down_even_when_the_watermark_is_clamped() {
    // The app is alone on its partition, so its return ten minutes later is clamped as a
    // clock jump: its own gap must still count.
    let mut e = engine();
    let mut out = Vec::new();
    for i in 0..10 {
        e.on_beat(beat("solo", "i0", i + 1, T0 + i * 5 * S), i, 0, &mut out);
        e.on_beat(beat("solo", "i1", i + 1, T0 + i * 5 * S + 500), i, 0, &mut out);
    }
    let back = T0 + 45 * S + 600 * S;
    e.on_beat(beat("solo", "i0", 1, back), 20, 0, &mut out);
    e.on_beat(beat("solo", "i1", 1, back + 500), 21, 0, &mut out);
    let got = alerts(&out);
    let firing = |kind, inst: Option<&str>| {
        got.iter().any(|a| a.0 == kind && a.1 == AlertState::Firing && a.4.as_deref() == inst)
    };
    assert!(firing(AlertKind::InstanceLate, Some("solo-i0")), "{got:#?}");
    assert!(firing(AlertKind::InstanceDown, Some("solo-i0")), "{got:#?}");
    assert!(firing(AlertKind::InstanceDown, Some("solo-i1")), "{got:#?}");
    assert!(firing(AlertKind::AppDown, None), "{got:#?}");
    let app_down: Vec<_> = got.iter().filter(|a| a.0 == AlertKind::AppDown).collect();
    assert_eq!(app_down.len(), 2, "fires, then resolves on the first return: {got:#?}");
    assert_eq!(app_down[0].3, T0 + 45 * S + 500 + 40 * S, "APP_DOWN at the last instance's down deadline");
    assert_eq!((app_down[1].1, app_down[1].3), (AlertState::Resolved, back));
}

/// One instance beating every 5 s, silent for 90 s of every 3 min during `flap_minutes`,
/// then steady (or, with `dies`, silent for good); a second app keeps the watermark moving.
fn run_flapping(flap_minutes: i64, total_minutes: i64, dies: bool) -> Vec<Alert> {
    let mut e = engine();
    let mut out = Vec::new();
    let mut seq = 0;
    let mut t = T0;
    while t < T0 + total_minutes * 60 * S {
        let m = (t - T0) / S;
        let silent = t < T0 + flap_minutes * 60 * S && m % 180 >= 90;
        let dead = dies && t >= T0 + flap_minutes * 60 * S;
        seq += 1;
        if !silent && !dead {
            e.on_beat(beat("web", "i0", seq, t), seq, 0, &mut out);
        }
        e.on_beat(beat("other", "i0", seq, t), seq, 0, &mut out);
        t += 5 * S;
    }
    into_alerts(out).into_iter().filter(|a| a.app_id == "web").collect()
}

#[test]
fn flapping_fires_once_holds_back_liveness_alerts_and_resolves_after_a_quiet_window() {
    let got = run_flapping(30, 60, false);
    let flap: Vec<&Alert> = got.iter().filter(|a| a.kind == AlertKind::Flapping).collect();
    assert_eq!(flap.len(), 2, "{got:#?}");
    assert_eq!((flap[0].state, flap[1].state), (AlertState::Firing, AlertState::Resolved));
    // Six transitions (three outages and their returns) within 15 min.
    assert_eq!(flap[0].value, Some(6.0));
    let (from, to) = (flap[0].event_at, flap[1].event_at);
    let liveness_fired_meanwhile = got.iter().any(|a| {
        matches!(a.kind, AlertKind::InstanceLate | AlertKind::InstanceDown)
            && a.state == AlertState::Firing
            && a.event_at > from
            && a.event_at < to
    });
    assert!(!liveness_fired_meanwhile, "{got:#?}");
    // The last outage (28.5 to 30 min) ends with a return at 30 min; 15 min later it ends.
    assert_eq!(to, T0 + 30 * 60 * S + 15 * 60 * S);
    // Every LATE/DOWN that fired before the flapping resolved.
    let fired = got.iter().filter(|a| a.kind != AlertKind::Flapping && a.state == AlertState::Firing).count();
    let resolved =
        got.iter().filter(|a| a.kind != AlertKind::Flapping && a.state == AlertState::Resolved).count();
    assert_eq!(fired, resolved, "{got:#?}");
}

#[test]
fn an_instance_down_when_the_flapping_ends_is_announced_down_then() {
    let got = run_flapping(30, 60, true);
    let resolved = got
        .iter()
        .find(|a| a.kind == AlertKind::Flapping && a.state == AlertState::Resolved)
        .expect("flapping resolves");
    let down = got
        .iter()
        .rfind(|a| a.kind == AlertKind::InstanceDown && a.state == AlertState::Firing)
        .expect("down announced");
    assert_eq!(down.event_at, resolved.event_at, "{got:#?}");
}

/// An instance declaring 10 s whose beats come every 5 to 25 s, then stop at minute 30.
fn run_jittery(phi_threshold: f64) -> Vec<Alert> {
    let c = DetectionConfig { phi_threshold, ..DetectionConfig::default() };
    let rules = CompiledRules::new(&RuleSet::default(), &c, &TrendConfig::default()).unwrap();
    let mut e = Engine::new(0, c, rules);
    let mut out = Vec::new();
    let mut rng = crate::loadgen::scenario::instance_rng(1, 2, 3, 4);
    let mut t = T0;
    let mut seq = 0;
    while t < T0 + 30 * 60 * S {
        seq += 1;
        let mut b = beat("jitter", "i0", seq, t);
        b.interval_ms = 10_000;
        e.on_beat(b, seq, 0, &mut out);
        t += rand::Rng::random_range(&mut rng, 5..=25) * S;
    }
    e.on_tick(T0 + 40 * 60 * S, &mut out);
    e.on_end_of_partition(T0 + 40 * 60 * S, &mut out);
    e.on_tick(T0 + 45 * 60 * S, &mut out);
    into_alerts(out)
}

#[test]
fn phi_accrual_tolerates_jitter_that_the_fixed_rule_calls_late_and_still_finds_a_stop() {
    let fixed = run_jittery(0.0);
    let late_fixed =
        fixed.iter().filter(|a| a.kind == AlertKind::InstanceLate && a.state == AlertState::Firing);
    assert!(late_fixed.count() > 3, "the fixed 2 x 10 s rule fires on 25 s gaps");
    // Until ten gaps are known, the fixed rule applies; after that only the real stop.
    let phi = run_jittery(8.0);
    let late: Vec<&Alert> = phi
        .iter()
        .filter(|a| a.kind == AlertKind::InstanceLate && a.state == AlertState::Firing)
        .filter(|a| a.event_at > T0 + 5 * 60 * S)
        .collect();
    assert_eq!(late.len(), 1, "only the real stop: {phi:#?}");
    assert!(late[0].event_at >= T0 + 30 * 60 * S - 25 * S);
    assert!(phi.iter().any(|a| a.kind == AlertKind::InstanceDown), "{phi:#?}");
}

#[test]
fn live_a_missed_beat_is_late_the_append_slack_after_its_deadline() {
    // "silent" beats every 5 s until T0, "busy" every 100 ms on; the broker appends each
    // beat 20 ms after it was sent. LATE is due at T0 + 10 s.
    let (mut e, mut out) = (engine(), Vec::new());
    let mut offset = 0;
    let mut feed = |e: &mut Engine, app: &str, seq: i64, t: i64, out: &mut Vec<Effect>| {
        offset += 1;
        e.on_record(beat(app, "i0", seq, t), offset, Some(t + 20), t + 30, out);
    };
    for (seq, t) in (T0 - 30 * S..=T0).step_by(5_000).enumerate() {
        feed(&mut e, "silent", seq as i64 + 1, t, &mut out);
    }
    let late_at = |out: &[Effect]| {
        into_alerts(out.to_vec())
            .into_iter()
            .find(|a| a.kind == AlertKind::InstanceLate && a.app_id == "silent")
    };
    let mut fired_by = None;
    for (seq, t) in (T0..T0 + 20 * S).step_by(100).enumerate() {
        feed(&mut e, "busy", seq as i64 + 1, t, &mut out);
        if fired_by.is_none() && late_at(&out).is_some() {
            fired_by = Some(t);
        }
    }
    let alert = late_at(&out).expect("the silent instance is late");
    assert_eq!(alert.event_at, T0 + 10 * S, "at its deadline");
    let by = fired_by.unwrap();
    assert!(
        by + 20 >= T0 + 10 * S + 500,
        "not before the broker's clock passed the deadline and the slack: {by}"
    );
    assert!(by < T0 + 10 * S + 700, "the slack after its deadline, not the allowed lateness: {by}");
}

#[test]
fn in_a_backfill_a_missed_beat_waits_for_the_allowed_lateness() {
    let (mut e, mut out) = (engine(), Vec::new());
    let appended = T0 + 3_600 * S;
    let mut offset = 0;
    for (seq, t) in (T0 - 30 * S..=T0).step_by(5_000).enumerate() {
        offset += 1;
        e.on_record(beat("silent", "i0", seq as i64 + 1, t), offset, Some(appended), 0, &mut out);
    }
    let mut fired_by = None;
    for (seq, t) in (T0..T0 + 20 * S).step_by(100).enumerate() {
        offset += 1;
        e.on_record(beat("busy", "i0", seq as i64 + 1, t), offset, Some(appended), 0, &mut out);
        let late = alerts(&out).iter().any(|a| a.0 == AlertKind::InstanceLate);
        if fired_by.is_none() && late {
            fired_by = Some(t);
        }
    }
    assert_eq!(fired_by, Some(T0 + 15 * S), "the deadline plus the allowed lateness of event time");
}
