//! Runs over several seeds, side by side: per family and overall, each seed's precision,
//! recall and median time to detect, and whether every goal was met on every seed.

use std::fmt::Write as _;

use super::{Report, minutes};

/// The table a person reads after runs of several seeds.
pub fn summarise(runs: &[(u64, Report)]) -> String {
    let mut out = String::new();
    let Some((_, first)) = runs.first() else { return out };
    let seeds: Vec<String> = runs.iter().map(|(s, _)| format!("seed {s}")).collect();
    let _ = writeln!(out, "Per family, pulsewatch (baseline): found/leaks false-alarms [median detect]");
    let _ =
        writeln!(out, "{:<28} {}", "family", seeds.iter().map(|s| format!("{s:<30}")).collect::<String>());
    let names = first.families.iter().map(|f| f.family.clone()).chain(["overall".to_owned()]);
    for name in names {
        let mut row = format!("{name:<28} ");
        for (_, r) in runs {
            let f = r.families.iter().find(|f| f.family == name).unwrap_or(&r.overall);
            let (p, b) = (&f.pulsewatch, &f.baseline);
            let median = p.median_detect_ms.map_or("-".to_owned(), minutes);
            let cell = format!(
                "{}/{} {} ({}/{} {}) [{median}]",
                p.detected, p.leaks, p.false_alarms, b.detected, b.leaks, b.false_alarms
            );
            let _ = write!(row, "{cell:<30}");
        }
        let _ = writeln!(out, "{}", row.trim_end());
    }
    let _ = writeln!(out, "\nPrecision / recall per seed:");
    for (seed, r) in runs {
        let (p, b) = (&r.overall.pulsewatch, &r.overall.baseline);
        let unmet: Vec<&str> = r.goals.iter().filter(|g| !g.met).map(|g| g.goal).collect();
        let _ = writeln!(
            out,
            "  seed {seed}: pulsewatch {:.2} / {:.2}, baseline {:.2} / {:.2}; goals {}",
            p.precision,
            p.recall,
            b.precision,
            b.recall,
            if unmet.is_empty() { "all met".to_owned() } else { format!("NOT met: {}", unmet.join("; ")) }
        );
    }
    out
}
