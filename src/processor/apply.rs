//! Applying what a batch read to the engines: each partition's records and ends in the order
//! they were read, by one engine that nothing else touches meanwhile, so partitions can be
//! spread over threads without changing a decision. At the batch's end each engine is also
//! ticked and its changed states taken as records, on the same threads.

use std::collections::HashMap;

use super::batch::{Batch, Pending};
use crate::app_state::StateRecordOut;
use crate::engine::{Effect, Engine};
use crate::metrics::METRICS;

/// Below this many held events a batch is applied on the calling thread: starting threads
/// would cost more than it saves.
const PARALLEL_FROM: usize = 2_000;

/// One partition's share of a batch.
struct Share<'a> {
    engine: &'a mut Engine,
    /// What it is to be given, in the order read.
    events: Vec<Pending>,
    /// Its effects so far.
    effects: Vec<Effect>,
    /// Its changed states, once it was ticked.
    records: Vec<StateRecordOut>,
}

/// Gives each engine the events `batch` holds for it, on up to `threads` threads, and puts
/// their effects in the batch.
pub fn apply(engines: &mut HashMap<i32, Engine>, batch: &mut Batch, threads: usize) {
    run(engines, batch, threads, None);
}

/// As [`apply`], then ticks every engine at wall time `wall` and puts the records of the
/// states it changed in the batch.
pub fn apply_and_tick(engines: &mut HashMap<i32, Engine>, batch: &mut Batch, threads: usize, wall: i64) {
    run(engines, batch, threads, Some(wall));
}

fn run(engines: &mut HashMap<i32, Engine>, batch: &mut Batch, threads: usize, tick: Option<i64>) {
    let mut held = std::mem::take(&mut batch.pending);
    let total: usize = held.values().map(Vec::len).sum();
    if total == 0 && tick.is_none() {
        return;
    }
    // Events of a partition without an engine (revoked meanwhile) go with the batch's share
    // of it: its next owner reads those records again.
    let mut shares: Vec<Share<'_>> = engines
        .iter_mut()
        .filter_map(|(p, engine)| {
            let events = held.remove(p);
            if events.is_none() && tick.is_none() {
                return None;
            }
            let effects = batch.effects.remove(p).unwrap_or_default();
            Some(Share { engine, events: events.unwrap_or_default(), effects, records: Vec::new() })
        })
        .collect();
    let work = |share: &mut Share<'_>| {
        give(share);
        if let Some(wall) = tick {
            share.engine.on_tick(wall, &mut share.effects);
            share.records = share.engine.take_state_records();
        }
    };
    if threads <= 1 || total < PARALLEL_FROM || shares.len() < 2 {
        shares.iter_mut().for_each(work);
    } else {
        let groups = balanced(&mut shares, threads);
        std::thread::scope(|scope| {
            for group in groups {
                scope.spawn(move || group.into_iter().for_each(work));
            }
        });
    }
    for share in shares {
        let p = share.engine.partition();
        batch.effects.insert(p, share.effects);
        if !share.records.is_empty() {
            batch.state_records.insert(p, share.records);
        }
    }
}

/// Applies one partition's events in order.
fn give(share: &mut Share<'_>) {
    let Share { engine, events, effects, .. } = share;
    let before = engine.stats;
    for event in events.drain(..) {
        match event {
            Pending::Beat { beat, offset, broker_ms, wall } => {
                engine.on_record(beat, offset, broker_ms, wall, effects)
            }
            Pending::End { wall } => engine.on_end_of_partition(wall, effects),
            Pending::Skipped { offset, wall } => engine.on_skipped(offset, wall),
        }
    }
    let replayed = engine.stats.replayed - before.replayed;
    if replayed > 0 {
        METRICS.replayed.with_label_values(&["beats"]).inc_by(replayed);
        let dropped = engine.stats.replay_effects - before.replay_effects;
        METRICS.replayed.with_label_values(&["dropped_effects"]).inc_by(dropped);
    }
}

/// Splits the shares into `threads` groups of about as many events each (the largest share
/// first, each to the lightest group).
fn balanced<'s, 'a>(shares: &'s mut [Share<'a>], threads: usize) -> Vec<Vec<&'s mut Share<'a>>> {
    let mut order: Vec<&mut Share<'a>> = shares.iter_mut().collect();
    order.sort_by_key(|s| std::cmp::Reverse(s.events.len()));
    let mut groups: Vec<(usize, Vec<&mut Share<'a>>)> = (0..threads).map(|_| (0, Vec::new())).collect();
    for share in order {
        let lightest = groups.iter_mut().min_by_key(|g| g.0).expect("at least one thread");
        lightest.0 += share.events.len();
        lightest.1.push(share);
    }
    groups.into_iter().map(|g| g.1).filter(|g| !g.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::alert::AlertKind;
    use crate::config::Config;
    use crate::loadgen::scenario::{ActiveFault, FaultKind, FaultParams, InstanceSim};

    const T0: i64 = 1_800_000_000_000;
    const INTERVAL: i64 = 5_000;

    /// Four partitions of one application each, two instances, 30 minutes of beats; the
    /// application of partition 1 crashes, that of partition 2 runs out of memory. Applied on
    /// `threads` threads, then ticked an hour later when `tick`: the batch, and how many
    /// events were held.
    fn applied(threads: usize, tick: bool) -> (Batch, usize) {
        let config = Config::default();
        let rules = config.compiled_rules().unwrap();
        let mut engines: HashMap<i32, Engine> =
            (0..4).map(|p| (p, Engine::new(p, config.detection.clone(), rules.clone()))).collect();
        let fault = |kind, app| ActiveFault {
            kind,
            params: FaultParams::default(),
            app,
            instance: None,
            from_ms: T0 + 10 * 60_000,
            to_ms: T0 + 20 * 60_000,
        };
        let faults = [fault(FaultKind::Crash, 1), fault(FaultKind::MemoryHigh, 2)];
        let mut batch = Batch::default();
        for p in 0..4 {
            let mut sims: Vec<InstanceSim> =
                (0..2).map(|i| InstanceSim::new(7, p, i, format!("app-{p}"), INTERVAL)).collect();
            for round in 0..30 * 60_000 / INTERVAL {
                for sim in &mut sims {
                    let t = T0 + round * INTERVAL + sim.phase_ms;
                    let active: Vec<&ActiveFault> =
                        faults.iter().filter(|f| f.covers(sim.app, sim.instance)).collect();
                    if let Some(beat) = sim.beat(t, INTERVAL as i32, &active) {
                        let event = Pending::Beat { beat, offset: round, broker_ms: Some(t), wall: t };
                        batch.hold(p as i32, event);
                    }
                }
            }
            batch.hold(p as i32, Pending::End { wall: T0 + 31 * 60_000 });
        }
        let held = batch.pending.values().map(Vec::len).sum();
        match tick {
            true => apply_and_tick(&mut engines, &mut batch, threads, T0 + 90 * 60_000),
            false => apply(&mut engines, &mut batch, threads),
        }
        assert!(batch.pending.is_empty(), "everything held was given");
        (batch, held)
    }

    /// A state record as its key, header and value.
    type Written = (String, Vec<u8>, Vec<u8>);

    /// Each partition's state records.
    fn records(batch: &Batch) -> BTreeMap<i32, Vec<Written>> {
        let of = |r: &StateRecordOut| (r.key(), r.header.clone(), r.value.clone());
        batch.state_records.iter().map(|(p, rs)| (*p, rs.iter().map(of).collect())).collect()
    }

    #[test]
    fn partitions_spread_over_threads_decide_what_one_thread_does() {
        let (one, held) = applied(1, false);
        assert!(held >= PARALLEL_FROM, "enough events to be spread: {held}");
        let (two, _) = applied(2, false);
        assert_eq!(one.effects, two.effects);
        assert!(one.state_records.is_empty(), "states are taken only with a tick");
        let alerts = |p: i32| one.effects[&p].iter().filter(|e| matches!(e, Effect::Alert(_))).count();
        assert_eq!(alerts(0), 0, "the steady application raises nothing");
        assert!(alerts(1) > 0 && alerts(2) > 0, "the crash and the memory fault are found");
    }

    #[test]
    fn engines_ticked_on_threads_decide_and_record_what_one_thread_does() {
        let (one, _) = applied(1, true);
        let (two, _) = applied(2, true);
        assert_eq!(one.effects, two.effects);
        assert_eq!(records(&one), records(&two));
        assert_eq!(one.state_records.len(), 4, "every partition's application changed");
        let (untimed, _) = applied(1, false);
        let down = |b: &Batch| {
            b.effects[&0]
                .iter()
                .filter(|e| matches!(e, Effect::Alert(a) if a.kind == AlertKind::AppDown))
                .count()
        };
        assert_eq!(down(&untimed), 0, "without the tick the steady application is up");
        assert_eq!(down(&one), 1, "an hour of silence later the tick finds it down");
    }
}
