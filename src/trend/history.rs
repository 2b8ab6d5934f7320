//! The history an instance's leak judgement looks at, at two scales: the last
//! `lookback_minutes` (120) at one-minute resolution, and the last `history_hours` (24)
//! before them at [`COARSE_MINUTES`] resolution (the mean of each quarter hour's minute
//! points). The fine window shows a leak's onset and a saw-tooth's teeth up to an hour long;
//! the coarse one shows the teeth and troughs of the hours before, and growth too slow for
//! two hours to show. Both are [`Window`]s, coded as the engine keeps them.
//!
//! Persisted form (binary): the number 2, the fine window, the coarse window, each in its
//! own binary form. The earlier forms — a fine window alone, coded (1) or raw (state version
//! 3), or JSON's base64 points — still read back, the coarse history then rebuilt from the
//! fine points. JSON writes the fine points alone, as it always did.

use serde::{Deserialize, Serialize};

use super::window::{self, COLUMNS, Point, Window};
use super::{Resource, TrendConfig};

/// Minutes one coarse point covers.
pub const COARSE_MINUTES: u32 = 15;

/// The first number of the two-scale binary form.
const TWO_SCALES: u32 = 2;

/// An instance's minute points and the coarse points before them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    fine: Window,
    coarse: Window,
}

/// One point of a series: (minute, value, requests per second).
pub type SeriesPoint = (f64, f64, f64);

impl History {
    /// Minute points held (the fine window).
    pub fn len(&self) -> usize {
        self.fine.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fine.is_empty()
    }

    pub fn fine(&self) -> &Window {
        &self.fine
    }

    pub fn coarse(&self) -> &Window {
        &self.coarse
    }

    /// Bytes the coded points of both scales take, and their buffers hold.
    pub fn coded_bytes(&self) -> (usize, usize) {
        (
            self.fine.coded_bytes() + self.coarse.coded_bytes(),
            self.fine.coded_capacity() + self.coarse.coded_capacity(),
        )
    }

    /// Appends a closed minute; when it opens a new quarter hour, the quarter of the newest
    /// point before it becomes a coarse point.
    pub fn push(&mut self, p: Point, c: &TrendConfig) {
        if let Some(last) = self.fine.points().last()
            && last.minute / COARSE_MINUTES != p.minute / COARSE_MINUTES
        {
            let bucket = last.minute / COARSE_MINUTES;
            if let Some(q) = mean_of(self.fine.points().filter(|q| q.minute / COARSE_MINUTES == bucket)) {
                self.coarse.push(q, coarse_capacity(c));
            }
        }
        self.fine.push(p, c.lookback_minutes as usize);
    }

    pub fn clear(&mut self) {
        self.fine.clear();
        self.coarse.clear();
    }

    /// The minute of the newest point.
    pub fn newest_minute(&self) -> Option<u32> {
        self.fine.points().last().map(|p| p.minute)
    }

    /// The minute points of minute `from` or later, as a history of their own — a tail —
    /// whose statistics are those of the whole minute window (see [`History::extend`]).
    pub fn since(&self, from: u32) -> History {
        History { fine: self.fine.since(from), coarse: Window::default() }
    }

    /// Pushes the points of `tail` (taken by [`History::since`]) newer than the newest held,
    /// as each was pushed when its minute closed: the history becomes what it was when the
    /// tail was taken. The minute points are decoded and coded once, not at every push, and
    /// when every point of the tail is new, the minute window's statistics are the tail's (a
    /// restore adds a tail to every instance it reads).
    pub fn extend(&mut self, tail: &History, c: &TrendConfig) {
        let capacity = c.lookback_minutes as usize;
        let mut all: Vec<Point> = self.fine.points().collect();
        let held = all.len();
        let newest = all.last().map(|p| p.minute);
        all.extend(tail.fine.points().filter(|p| newest.is_none_or(|n| p.minute > n)));
        let known = (all.len() - held == tail.fine.len()).then_some(&tail.fine);
        if held > capacity || capacity < COARSE_MINUTES as usize {
            // A window wider than the settings keep, or narrower than a quarter: push by push.
            for &p in &all[held..] {
                self.push(p, c);
            }
            return;
        }
        for j in held.max(1)..all.len() {
            let (last, p) = (all[j - 1], all[j]);
            let bucket = last.minute / COARSE_MINUTES;
            if bucket != p.minute / COARSE_MINUTES {
                // As in `push`: the fine window then held the newest `capacity` points before p.
                let then = all[j.saturating_sub(capacity)..j].iter().copied();
                if let Some(q) = mean_of(then.filter(|q| q.minute / COARSE_MINUTES == bucket)) {
                    self.coarse.push(q, coarse_capacity(c));
                }
            }
        }
        self.fine.extend_decoded(&all, held, capacity, known);
    }

    /// The Mann–Kendall z of a resource over the fine window: the cheap first look.
    pub fn quick_z(&self, r: Resource) -> f64 {
        self.fine.quick_z(r)
    }

    /// The fine series of a resource.
    pub fn series(&self, r: Resource) -> Vec<SeriesPoint> {
        self.fine.series(r)
    }

    /// The quarter-hour series of a resource, the newest closed quarter last.
    pub fn coarse_series(&self, r: Resource) -> Vec<SeriesPoint> {
        self.coarse.series(r)
    }

    /// A history of `fine` points, the coarse one rebuilt from them (older forms).
    fn of_fine(fine: Window) -> History {
        let mut coarse = Window::default();
        let newest_bucket = fine.points().last().map(|p| p.minute / COARSE_MINUTES);
        let mut bucket: Vec<Point> = Vec::new();
        for p in fine.points() {
            if bucket.last().is_some_and(|q| q.minute / COARSE_MINUTES != p.minute / COARSE_MINUTES) {
                coarse.push(mean_of(bucket.drain(..)).expect("a bucket has points"), usize::MAX);
            }
            if Some(p.minute / COARSE_MINUTES) != newest_bucket {
                bucket.push(p);
            }
        }
        if let Some(q) = mean_of(bucket.into_iter()) {
            coarse.push(q, usize::MAX);
        }
        History { fine, coarse }
    }
}

/// Coarse points kept for `c`.
fn coarse_capacity(c: &TrendConfig) -> usize {
    (c.history_hours * 60 / COARSE_MINUTES) as usize
}

/// The mean of each column over `points` (NaN where none reported it), at the middle of
/// their quarter hour; `None` without points.
fn mean_of(points: impl Iterator<Item = Point>) -> Option<Point> {
    let mut sums = [0f64; COLUMNS];
    let mut counts = [0u32; COLUMNS];
    let mut minute = None;
    for p in points {
        minute.get_or_insert(p.minute / COARSE_MINUTES * COARSE_MINUTES + COARSE_MINUTES / 2);
        for (c, v) in p.values.iter().enumerate().filter(|(_, v)| !v.is_nan()) {
            sums[c] += f64::from(*v);
            counts[c] += 1;
        }
    }
    let mut values = [f32::NAN; COLUMNS];
    for (c, v) in values.iter_mut().enumerate().filter(|(c, _)| counts[*c] > 0) {
        *v = (sums[c] / f64::from(counts[c])) as f32;
    }
    Some(Point { minute: minute?, values })
}

impl Serialize for History {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        if serializer.is_human_readable() {
            return self.fine.serialize(serializer);
        }
        let mut t = serializer.serialize_tuple(3)?;
        t.serialize_element(&TWO_SCALES)?;
        t.serialize_element(&self.fine)?;
        t.serialize_element(&self.coarse)?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for History {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if !deserializer.is_human_readable() {
            return deserializer.deserialize_tuple(usize::MAX, HistoryVisitor);
        }
        let text = String::deserialize(deserializer)?;
        Ok(History::of_fine(Window::of_text(&text).map_err(D::Error::custom)?))
    }
}

/// Reads the two-scale form, or a fine window alone in one of its older forms.
struct HistoryVisitor;

impl<'de> serde::de::Visitor<'de> for HistoryVisitor {
    type Value = History;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a trend history")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<History, A::Error> {
        use serde::de::Error;
        let missing = |what: &str| Error::custom(format!("a trend history ends before its {what}"));
        let head: u32 = seq.next_element()?.ok_or_else(|| missing("form"))?;
        if head != TWO_SCALES {
            return Ok(History::of_fine(window::read_form(head, &mut seq)?));
        }
        let fine: Window = seq.next_element()?.ok_or_else(|| missing("minute points"))?;
        let coarse: Window = seq.next_element()?.ok_or_else(|| missing("coarse points"))?;
        Ok(History { fine, coarse })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(minute: u32, memory: f32) -> Point {
        Point { minute, values: [memory, 1.0, f32::NAN, 3.0, 4.0, 20.0] }
    }

    #[test]
    fn quarter_hours_become_coarse_points_beyond_the_fine_window() {
        let c = TrendConfig { lookback_minutes: 30, history_hours: 2, ..TrendConfig::default() };
        let mut h = History::default();
        for m in 0..300u32 {
            h.push(point(1_000_005 + m, m as f32), &c);
        }
        assert_eq!(h.len(), 30);
        assert_eq!(h.coarse().len(), 8, "two hours of quarters");
        let coarse = h.coarse_series(Resource::Memory);
        assert!(coarse.windows(2).all(|w| w[1].0 - w[0].0 == 15.0), "{coarse:?}");
        // A quarter's mean sits at its middle, as the line does; the newest closed quarter
        // is the one before the minute being judged.
        let (x, y, _) = coarse[7];
        assert!((y - (x - 1_000_005.0)).abs() < 1.0, "{x} {y}");
        assert_eq!(x, f64::from(1_000_005 + 285 - 15 + 7));
        assert!(h.coarse().points().all(|p| p.values[2].is_nan()), "a column never reported stays NaN");
    }

    #[test]
    fn a_tail_extends_a_history_exactly_as_its_points_were_pushed() {
        for lookback in [120, 30, 8] {
            let c = TrendConfig { lookback_minutes: lookback, history_hours: 3, ..TrendConfig::default() };
            let mut pushed = History::default();
            let mut minute = 3_000_007u32;
            for k in 0..400u32 {
                // Gaps now and then, values that wander, a column that comes and goes.
                minute += 1 + (k % 7 == 3) as u32 * (k % 5);
                let mut p = point(minute, 100.0 + ((k * 37) % 23) as f32 + k as f32 * 0.1);
                p.values[4] = if k % 11 < 4 { f32::NAN } else { (k % 13) as f32 };
                let base = pushed.clone();
                let mut taken = base.clone();
                taken.push(p, &c);
                // A tail holds fewer points than half the window (as the engine writes it).
                for later in 0..(k % 25).min(lookback / 2 - 1) {
                    let q = point(minute + 1 + later, 90.0 + ((later * 53) % 17) as f32);
                    taken.push(q, &c);
                }
                let tail = taken.since(base.newest_minute().map_or(0, |m| m + 1));
                let mut extended = base.clone();
                extended.extend(&tail, &c);
                assert_eq!(extended, taken, "lookback {lookback}, after {k} points");
                // A tail that holds the newest point of the base too: its statistics are
                // not the window's, which counts its pairs itself.
                let overlapping = taken.since(base.newest_minute().unwrap_or(0));
                let mut extended = base.clone();
                extended.extend(&overlapping, &c);
                assert_eq!(extended, taken, "lookback {lookback}, after {k} points, overlapping");
                pushed.push(p, &c);
            }
        }
    }

    #[test]
    fn a_tail_taken_under_other_settings_is_added_as_the_settings_now_keep_points() {
        let old = TrendConfig { lookback_minutes: 30, history_hours: 2, ..TrendConfig::default() };
        let now = TrendConfig { lookback_minutes: 60, ..old.clone() };
        let p = |m: u32| point(1_000_000 + m, (m % 7) as f32 + m as f32 * 0.3);
        let mut base = History::default();
        (0..40).for_each(|m| base.push(p(m), &old));
        let mut taken = base.clone();
        (40..50).for_each(|m| taken.push(p(m), &old));
        let tail = taken.since(base.newest_minute().unwrap() + 1);
        // The window kept 30 points when the tail was taken; with 60 kept, none is dropped.
        let mut expected = base.clone();
        (40..50).for_each(|m| expected.push(p(m), &now));
        let mut extended = base.clone();
        extended.extend(&tail, &now);
        assert_eq!(extended.len(), 40);
        assert_eq!(extended, expected);
    }

    #[test]
    fn every_persisted_form_reads_back() {
        let c = TrendConfig::default();
        let mut h = History::default();
        for m in 0..400u32 {
            h.push(point(2_000_000 + m, 100.0 + m as f32), &c);
        }
        let bytes = postcard::to_stdvec(&h).unwrap();
        let back: History = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, h);
        // A fine window alone (state version 4): the coarse history rebuilt from it.
        let old = postcard::to_stdvec(h.fine()).unwrap();
        let back: History = postcard::from_bytes(&old).unwrap();
        assert_eq!(back.fine(), h.fine());
        assert_eq!(back.coarse().len(), 7, "the 120 minutes' complete quarters");
        // JSON: the fine points, as before.
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, serde_json::to_string(h.fine()).unwrap());
        let back: History = serde_json::from_str(&json).unwrap();
        assert_eq!(back.len(), h.len());
        assert!(postcard::from_bytes::<History>(&bytes[..bytes.len() - 3]).is_err());
    }
}
