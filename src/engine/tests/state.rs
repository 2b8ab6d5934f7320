//! The engine's state records: an engine rebuilt from them goes on as the original.

use std::collections::HashMap;

use super::*;

/// What an output says, without when it was emitted or the offset it points at (a restored
/// engine has read no record yet when its first timer fires).
fn comparable(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .map(|e| match e {
            Effect::Alert(a) => {
                let mut a = a.clone();
                a.emitted_at = 0;
                a.source_offset = 0;
                format!("{a:?}")
            }
            Effect::Rollup(r) => format!("{r:?}"),
        })
        .collect()
}

/// The newest windows base and tail of each application.
type WindowsWritten = HashMap<String, (WindowsRecord, Option<WindowsRecord>)>;

/// A state record read back as written, or after rewriting it in the form of version 2
/// (the whole state in the JSON value, with the windows of the app's newest windows base and
/// tail written before it, as a processor of that version held them).
fn read_back(r: &StateRecordOut, version: u32, windows: &WindowsWritten) -> StateRecord {
    let mut record = StateRecord::decode(&r.value, Some(&r.header)).unwrap();
    if version == STATE_VERSION {
        return record;
    }
    assert_eq!(version, 2);
    if let (Some(state), Some((base, tail))) = (record.state.as_mut(), windows.get(&r.app_id)) {
        let tail = tail.as_ref().filter(|t| t.extends(base)).map(|t| t.windows.clone());
        state.put_windows_of(base.windows.clone(), tail, &TrendConfig::default());
    }
    #[derive(serde::Serialize)]
    struct V2<'a> {
        #[serde(flatten)]
        snapshot: &'a AppSnapshot,
        version: u32,
        state: Option<&'a AppState>,
    }
    let snapshot = match &record.state {
        Some(state) => state.snapshot(&record.app_id, record.updated_at_ms),
        None => AppSnapshot::gone(&record.app_id, record.updated_at_ms),
    };
    let json = serde_json::to_vec(&V2 { snapshot: &snapshot, version: 2, state: record.state.as_ref() });
    let old = StateRecord::decode(&json.unwrap(), None).unwrap();
    assert_eq!((old.version, old.updated_at_ms), (2, record.updated_at_ms));
    assert_eq!(old.state.is_some(), record.state.is_some());
    old
}

/// An engine rebuilt from what the records restore.
fn rebuilt(restored: RestoredApps) -> Engine {
    let c = DetectionConfig::default();
    let rules = CompiledRules::new(&RuleSet::default(), &c, &TrendConfig::default()).unwrap();
    Engine::restore_apps(0, c, rules, restored)
}

/// An engine rebuilt from `records` as written, or with every state record rewritten in the
/// form of `version` 2.
fn restore_all(records: &[StateRecordOut], version: u32) -> Engine {
    let mut parsed = RestoredApps::default();
    let mut windows = WindowsWritten::new();
    for r in records {
        if r.is_windows() {
            let w = WindowsRecord::decode(&r.header).unwrap();
            match w.tail {
                true => windows.get_mut(&r.app_id).expect("a tail follows its base").1 = Some(w),
                false => drop(windows.insert(r.app_id.clone(), (w, None))),
            }
            if version == STATE_VERSION {
                parsed.add_written(r).unwrap();
            }
        } else if r.is_partition() {
            if version == STATE_VERSION {
                parsed.add_written(r).unwrap();
            }
        } else if r.is_state() {
            parsed.add(read_back(r, version, &windows));
        }
    }
    rebuilt(parsed)
}

/// An engine rebuilt from `records` (as in [`restore_all`]) that has read again the beats of
/// `read` from offset `from` on, as a new owner reads them from the committed offset; it
/// publishes nothing meanwhile.
fn restore_and_replay(
    records: &[StateRecordOut],
    version: u32,
    read: &[(i64, Heartbeat)],
    from: i64,
) -> Engine {
    let mut back = restore_all(records, version);
    let mut replayed = Vec::new();
    for (o, b) in read.iter().filter(|(o, _)| *o >= from) {
        back.on_beat(b.clone(), *o, 0, &mut replayed);
    }
    assert!(replayed.is_empty(), "a replay publishes nothing: {replayed:?}");
    back
}

/// The faults of the restore test: one kind an app, from minute 20 to 60.
const RESTORE_FAULTS: [FaultKind; 9] = {
    use FaultKind::*;
    [Crash, Leak, CpuHigh, Restart, ErrorBurst, Flapping, GcSawtooth, PoolSaturation, ConnectionLeak]
};

/// Where the restore test cuts: after `minute`, from records of `version`, anywhere or only
/// after a commit that closed a minute.
struct Cut {
    minute: i64,
    version: u32,
    anywhere: bool,
}

/// What the original engine and the one restored at `cut` published after it, for 90
/// minutes of the [`RESTORE_FAULTS`] fleet, committed every five beats.
fn run_with_cut(cut: &Cut) -> (Engine, Vec<Effect>, Engine, Vec<Effect>) {
    let interval = 5_000;
    let faults: Vec<ActiveFault> = RESTORE_FAULTS
        .iter()
        .enumerate()
        .map(|(app, &kind)| ActiveFault {
            kind,
            params: FaultParams::default(),
            app,
            instance: None,
            from_ms: T0 + 20 * 60 * S,
            to_ms: T0 + 60 * 60 * S,
        })
        .collect();
    let mut original = match cut.version {
        STATE_VERSION => engine(),
        _ => engine_writing_every(0),
    };
    let mut restored: Option<Engine> = None;
    let mut records: Vec<StateRecordOut> = Vec::new();
    // Every beat read, for the replay after the cut.
    let mut read: Vec<(i64, Heartbeat)> = Vec::new();
    let (mut out_original, mut out_restored) = (Vec::new(), Vec::new());
    let mut sims: Vec<InstanceSim> = (0..RESTORE_FAULTS.len())
        .flat_map(|app| (0..2).map(move |i| (app, i)))
        .map(|(app, i)| InstanceSim::new(9, app, i, format!("app-{app}"), interval))
        .collect();
    let (mut offset, mut batch_from) = (0, 0);
    for round in 0..(90 * 12) {
        for sim in sims.iter_mut() {
            let t = T0 + round * interval + sim.phase_ms;
            let active: Vec<&ActiveFault> =
                faults.iter().filter(|f| f.covers(sim.app, sim.instance)).collect();
            let Some(b) = sim.beat(t, interval as i32, &active) else { continue };
            offset += 1;
            match restored.as_mut() {
                Some(r) => r.on_beat(b.clone(), offset, 0, &mut out_restored),
                None => read.push((offset, b.clone())),
            }
            original.on_beat(b, offset, 0, &mut out_original);
            // A commit every few beats, so that a commit may hold some apps of a round and
            // not others: an app's minute then closes in a batch that has no beat of it.
            if offset % 5 != 0 {
                continue;
            }
            records.extend(original.take_state_records());
            if let Some(r) = restored.as_mut() {
                r.take_state_records();
            } else if round >= cut.minute * 12
                && (cut.anywhere || out_original[batch_from..].iter().any(|e| matches!(e, Effect::Rollup(_))))
            {
                // The cut, right after a commit: a new owner restores what was committed
                // so far, and reads the partition from the committed offset, which the
                // beats some states do not hold hold back.
                let from = original.unwritten_from().unwrap_or(offset + 1);
                let back = restore_and_replay(&records, cut.version, &read, from);
                assert_eq!(back.stats.replay_effects, 0, "cut at {}", cut.minute);
                if cut.anywhere {
                    assert!(back.stats.replayed > 0, "cut at {}: some beats replayed", cut.minute);
                }
                restored = Some(back);
                out_original.clear();
            }
            batch_from = out_original.len();
        }
    }
    (original, out_original, restored.expect("the cut came"), out_restored)
}

#[test]
fn an_engine_restored_from_its_state_records_goes_on_exactly_as_the_original() {
    // The second cut restores from records of version 2 (the state in JSON), which a
    // processor wrote at every change; the others restore states that leave beats unwritten
    // and replay those. The last two cut anywhere, the others after a minute closed.
    for (minute, version, anywhere) in [
        (25, STATE_VERSION, false),
        (47, 2, false),
        (70, STATE_VERSION, false),
        (33, STATE_VERSION, true),
        (58, STATE_VERSION, true),
    ] {
        let (original, out_original, restored, out_restored) =
            run_with_cut(&Cut { minute, version, anywhere });
        assert_eq!(restored.app_count(), original.app_count());
        let (a, b) = (comparable(&out_original), comparable(&out_restored));
        assert!(a.iter().any(|o| o.contains("Alert")), "cut at {minute}: the rest has alerts to compare");
        assert_eq!(a.len(), b.len(), "cut at {minute}");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "cut at {minute}");
        }
    }
}

#[test]
fn state_records_of_every_version_read_back_and_bad_ones_are_refused() {
    let mut e = engine();
    let mut out = Vec::new();
    run_app(&mut e, "a", T0, T0 + 120 * S, 0, &mut out);
    let records = e.take_state_records();
    let (r, snapshot) =
        (records.iter().rfind(|r| r.is_state()).unwrap(), records.iter().find(|r| r.is_snapshot()).unwrap());
    let back = StateRecord::decode(&r.value, Some(&r.header)).unwrap();
    assert_eq!((back.version, back.app_id.as_str()), (STATE_VERSION, "a"));
    assert_eq!(back.state.as_ref().map(|s| s.instances.len()), Some(1));
    // Version 1: the snapshot alone restores nothing, and is no error.
    let v1 = br#"{"app_id":"a","status":"UP","health":"healthy","instances_up":1,"instances_total":1,
        "last_seen_ms":1,"last_figures":{},"open_alerts":0,"labels":{},"updated_at_ms":5}"#;
    let old = StateRecord::decode(v1, None).unwrap();
    assert_eq!((old.version, old.updated_at_ms, old.state.is_none()), (1, 5, true));
    // A damaged header, a newer version, a value of version 3 on without its header, a value
    // that is no snapshot: refused, each with its reason.
    let half = &r.header[..r.header.len() / 2];
    let err = StateRecord::decode(&r.value, Some(half)).unwrap_err();
    assert!(matches!(err, StateRecordError::State { version: STATE_VERSION, .. }), "{err}");
    let mut newer = r.header.clone();
    newer[0] += 1;
    let err = StateRecord::decode(&r.value, Some(&newer)).unwrap_err();
    assert!(matches!(err, StateRecordError::Newer(v) if v == STATE_VERSION + 1), "{err}");
    let err = StateRecord::decode(&snapshot.value, None).unwrap_err();
    assert!(matches!(err, StateRecordError::MissingHeader(STATE_VERSION)), "{err}");
    assert!(matches!(StateRecord::decode(b"[1,2]", None), Err(StateRecordError::Value(_))));
}

#[test]
fn the_snapshot_of_an_application_gone_is_that_of_an_empty_state() {
    assert_eq!(AppSnapshot::gone("a", T0), AppState::default().snapshot("a", T0));
}

/// The trend windows of one application's instances after a restore, by instance.
fn window_lengths(e: &Engine, app: &str) -> Vec<usize> {
    e.app(app).unwrap().instances.values().map(|i| i.trend.window.len()).collect()
}

#[test]
fn the_trend_windows_are_written_apart_once_a_minute_and_restore_with_the_state() {
    let mut e = engine_writing_every(0);
    let mut out = Vec::new();
    // The first beat: the new instance's (empty) windows are written with its state, then
    // the partition's mark.
    let mut seq = run_app(&mut e, "a", T0, T0, 0, &mut out);
    let first = e.take_state_records();
    assert_eq!(first.iter().map(StateRecordOut::is_windows).collect::<Vec<_>>(), [false, true, false, false]);
    assert!(first[3].is_partition());
    let (mut states, mut windows) = (0, 0);
    let mut written = first;
    // Ten minutes of 5 s beats, committed at every beat.
    for k in 1..120 {
        seq = run_app(&mut e, "a", T0 + k * 5 * S, T0 + k * 5 * S, seq, &mut out);
        for r in e.take_state_records() {
            if r.is_windows() {
                windows += 1;
            } else if r.is_state() {
                states += 1;
                let back = StateRecord::decode(&r.value, Some(&r.header)).unwrap();
                let w = &back.state.unwrap().instances["a-i0"].trend.window;
                assert!(w.is_empty(), "a state record carries no windows");
            }
            written.push(r);
        }
    }
    assert_eq!(states, 119, "a state record per beat");
    assert_eq!(windows, 9, "a windows record per minute closed");
    let mut restored = RestoredApps::default();
    for r in &written {
        restored.add_written(r).unwrap();
    }
    let back = rebuilt(restored);
    assert_eq!(window_lengths(&back, "a"), window_lengths(&e, "a"));
    assert_eq!(window_lengths(&e, "a"), [9]);
}

#[test]
fn a_state_restored_from_a_record_that_held_its_windows_writes_them_apart_at_its_next_change() {
    let mut e = engine();
    let mut out = Vec::new();
    let seq = run_app(&mut e, "a", T0, T0 + 600 * S, 0, &mut out);
    e.take_state_records();
    // As processors before version 6 wrote it: the windows inside the state.
    let state = e.app("a").unwrap();
    let mut old = StateRecordOut::combined(&state.snapshot("a", T0 + 600 * S), Some(state));
    old.header[0] = 5;
    let mut restored = RestoredApps::default();
    restored.add(StateRecord::decode(&old.value, Some(&old.header)).unwrap());
    let mut back = rebuilt(restored);
    assert_eq!(window_lengths(&back, "a"), window_lengths(&e, "a"));
    run_app(&mut back, "a", T0 + 605 * S, T0 + 605 * S, seq, &mut out);
    let next = back.take_state_records();
    assert!(next.iter().any(StateRecordOut::is_windows), "the windows leave the state with their own record");
}

#[test]
fn a_state_record_that_holds_its_windows_is_newer_than_a_windows_record_read_before_it() {
    let mut e = engine();
    let mut out = Vec::new();
    let seq = run_app(&mut e, "a", T0, T0 + 300 * S, 0, &mut out);
    // A processor of this version had the partition: its windows record, five minutes.
    let early: Vec<StateRecordOut> = e.take_state_records();
    let seq = run_app(&mut e, "a", T0 + 305 * S, T0 + 600 * S, seq, &mut out);
    e.take_state_records();
    // Then one of version 5, which writes the windows inside the state: ten minutes.
    let state = e.app("a").unwrap();
    let mut v5 = StateRecordOut::combined(&state.snapshot("a", T0 + 600 * S), Some(state));
    v5.header[0] = 5;
    let mut restored = RestoredApps::default();
    for r in &early {
        restored.add_written(r).unwrap();
    }
    restored.add(StateRecord::decode(&v5.value, Some(&v5.header)).unwrap());
    let mut back = rebuilt(restored);
    assert_eq!(window_lengths(&back, "a"), window_lengths(&e, "a"));
    let early_windows = early.iter().find(|r| r.is_windows()).unwrap();
    let early_len = WindowsRecord::decode(&early_windows.header).unwrap().windows[0].1.len();
    assert!(window_lengths(&e, "a")[0] > early_len, "the later windows are longer");
    run_app(&mut back, "a", T0 + 605 * S, T0 + 605 * S, seq, &mut out);
    assert!(back.take_state_records().iter().any(StateRecordOut::is_windows));
}

/// The snapshots `e` publishes with its next records.
fn published(e: &mut Engine) -> Vec<AppSnapshot> {
    let records = e.take_state_records();
    records.iter().filter(|r| r.is_snapshot()).map(|r| serde_json::from_slice(&r.value).unwrap()).collect()
}

#[test]
fn a_snapshot_is_published_when_what_it_shows_changes_and_otherwise_once_per_interval() {
    let mut e = engine_writing_every(0);
    let mut out = Vec::new();
    let (mut seen, mut seq, mut written) = (Vec::new(), 0, Vec::new());
    for k in 0..13 {
        seq = run_app(&mut e, "a", T0 + k * 5 * S, T0 + k * 5 * S, seq, &mut out);
        let records = e.take_state_records();
        for r in records.iter().filter(|r| r.is_snapshot()) {
            let s: AppSnapshot = serde_json::from_slice(&r.value).unwrap();
            seen.push(s.last_seen_ms.unwrap() - T0);
        }
        assert!(records.iter().any(StateRecordOut::is_state), "a state record at every change");
        written.extend(records);
    }
    assert_eq!(seen, [0, 30 * S, 60 * S], "the first, then once its newest beat is 30 s newer");

    let mut relabelled = beat("a", "i0", seq + 1, T0 + 65 * S);
    relabelled.labels.insert("team".into(), "payments".into());
    e.on_beat(relabelled, seq + 1, 0, &mut out);
    let now = published(&mut e);
    assert_eq!(now.len(), 1, "a label change is published at once");
    assert_eq!(now[0].labels.get("team").map(String::as_str), Some("payments"));

    // Another application's beats move the watermark past a's deadline: LATE, at once.
    run_app(&mut e, "b", T0 + 70 * S, T0 + 90 * S, 0, &mut out);
    let late: Vec<AppSnapshot> = published(&mut e).into_iter().filter(|s| s.app_id == "a").collect();
    assert_eq!(late.len(), 1);
    assert_eq!((late[0].status.as_str(), late[0].last_seen_ms), ("LATE", Some(T0 + 65 * S)));

    // A restored engine does not know what was published: its first change publishes.
    let mut restored = RestoredApps::default();
    for r in &written {
        restored.add_written(r).unwrap();
    }
    let mut back = rebuilt(restored);
    run_app(&mut back, "a", T0 + 70 * S, T0 + 70 * S, seq + 1, &mut out);
    assert_eq!(published(&mut back).len(), 1);
}

#[test]
fn a_state_only_beats_changed_is_written_once_its_first_unwritten_beat_is_the_interval_old() {
    // One application beating every 5 s for ten minutes, a commit after every beat.
    let states_written = |interval_ms: i64| {
        let mut e = engine_writing_every(interval_ms);
        let mut out = Vec::new();
        let (mut states, mut committed) = (0, 0);
        for k in 0..120 {
            let t = T0 + k * 5 * S;
            run_app(&mut e, "a", t, t, k, &mut out);
            let records = e.take_state_records();
            states += records.iter().filter(|r| r.is_state()).count();
            assert!(records.last().is_some_and(StateRecordOut::is_partition), "a mark with every commit");
            // The offsets committed hold back no beat older than the interval, the allowed
            // lateness and a beat.
            if let Some(from) = e.unwritten_from() {
                assert!(from <= k + 1);
                assert!((k + 1 - from) * 5 * S <= interval_ms + 10 * S, "beat {k}: unwritten from {from}");
            }
            // (Asked only when it moved.)
            committed = e.offset_to_commit().unwrap_or(committed);
            assert_eq!(committed, e.unwritten_from().unwrap_or(k + 2));
        }
        assert!(out.iter().all(|e| matches!(e, Effect::Rollup(_))), "a steady app raises nothing");
        states
    };
    assert_eq!(states_written(0), 120, "at every change");
    let deferred = states_written(30_000);
    // Its first beat (a new instance), each minute closed (a rollup), and the beats between.
    assert!((10..=30).contains(&deferred), "{deferred} state records for 120 beats");
}

#[test]
fn the_windows_are_written_whole_now_and_then_and_as_tails_between_and_restore_exactly_from_both() {
    let mut e = engine_writing_every(0);
    let mut out = Vec::new();
    let mut written: Vec<StateRecordOut> = Vec::new();
    let (mut bases, mut tails, mut written_bytes, mut whole_bytes) = (0, 0, 0, 0);
    let mut seq = [0i64; 2];
    // Three hours of two instances beating every 20 s, their memory wandering; the second
    // restarts (its seq goes back) after 100 minutes, which its next windows record must
    // write whole.
    for k in 0..540i64 {
        let t = T0 + k * 20 * S;
        for (i, seq) in seq.iter_mut().enumerate() {
            *seq = if i == 1 && k == 300 { 1 } else { *seq + 1 };
            let mut b = beat("a", &format!("i{i}"), *seq, t);
            b.memory_used_bytes = Some(500_000_000 + ((k * 7_919 + i as i64 * 104_729) % 65_536) * 997);
            e.on_beat(b, 2 * k + i as i64, 0, &mut out);
        }
        for r in e.take_state_records() {
            if r.is_windows() {
                let tail = WindowsRecord::decode(&r.header).unwrap().tail;
                assert_eq!(r.key_suffix, if tail { WINDOWS_TAIL_KEY_SUFFIX } else { WINDOWS_KEY_SUFFIX });
                assert_eq!(r.kind(), if tail { "windows_tail" } else { "windows" });
                (bases, tails) = if tail { (bases, tails + 1) } else { (bases + 1, tails) };
                written_bytes += r.header.len();
                whole_bytes += e.app("a").unwrap().records("a", 0)[0].header.len();
            }
            written.push(r);
        }
        if k % 17 == 16 {
            // Restored from what was written so far, the state is the original's, windows
            // and the point its tails start from included.
            let back = restore_all(&written, STATE_VERSION);
            assert_eq!(back.app("a"), e.app("a"), "restored after {k} beats");
        }
    }
    assert_eq!(bases + tails, 1 + 179, "the new instances' windows, then a record per minute closed");
    // The first minute, every 10 to 20 minutes after (when a tail would hold that many
    // points, by the app id), and after the restart.
    assert!((9..=20).contains(&bases), "{bases} bases");
    assert!(written_bytes * 2 < whole_bytes, "{written_bytes} bytes written, {whole_bytes} as whole windows");
}

#[test]
fn a_windows_record_of_version_8_restores_as_a_base_and_the_next_windows_are_written_whole() {
    let mut e = engine_writing_every(0);
    let mut out = Vec::new();
    let seq = run_app(&mut e, "a", T0, T0 + 600 * S, 0, &mut out);
    let [_, _, state] = e.app("a").unwrap().records("a", T0 + 600 * S);
    let windows: Vec<(&str, &crate::trend::History)> =
        e.app("a").unwrap().instances.iter().map(|(id, i)| (id.as_str(), &i.trend.window)).collect();
    let v8 = postcard::to_extend(&("a", &windows), vec![8]).unwrap();
    let read = WindowsRecord::decode(&v8).unwrap();
    assert_eq!((read.base, read.tail), (None, false));
    let mut restored = RestoredApps::default();
    restored.add(StateRecord::decode(&state.value, Some(&state.header)).unwrap());
    restored.add_windows(read);
    let mut back = rebuilt(restored);
    assert_eq!(window_lengths(&back, "a"), window_lengths(&e, "a"));
    run_app(&mut back, "a", T0 + 605 * S, T0 + 665 * S, seq, &mut out);
    let next: Vec<_> = back.take_state_records().into_iter().filter(StateRecordOut::is_windows).collect();
    assert_eq!(next.len(), 1);
    assert!(!WindowsRecord::decode(&next[0].header).unwrap().tail, "a base, not a tail of a base unnamed");
}
