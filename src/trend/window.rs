//! The window of minute points a leak judgement looks at: bounded, kept coded in memory
//! (each point against the one before it, about 60 % of the raw size for real series), with
//! the Mann–Kendall S of each column kept up to date; and its persisted forms.
//!
//! A point is coded as three control bytes, then each column's f32 bits XOR the previous
//! point's, without their high zero bytes (a column that did not change takes none). The
//! control bytes hold, per column, how many bytes follow (3 bits each), and in their top 6
//! bits the distance in minutes from the previous point when it is 1 to 63 (else 0, and the
//! distance follows as a varint). The first point is coded against minute 0 and zero bits.
//!
//! Persisted forms. State version 4 (binary): the number 1, the coded points, their count,
//! the statistics. Version 3 (binary): the points raw (per point the minute, then the
//! columns, little-endian u32 and f32), then the statistics; its length, the first number of
//! the form, is a multiple of 28, so never 1. JSON (version 2): the raw points in base64,
//! the statistics recomputed when read back.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::Resource;
use super::stats::{mk_variance, mk_z, sign};

/// Columns of a minute point: the five resources, then the request rate.
pub const COLUMNS: usize = 6;
/// The request rate's column.
pub const RPS: usize = 5;

/// One closed minute of one instance. f32 keeps the window small; NaN = not reported.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Minutes since the epoch.
    pub minute: u32,
    pub values: [f32; COLUMNS],
}

/// Bytes of one raw point: the minute, then the columns.
pub const POINT_BYTES: usize = 4 + 4 * COLUMNS;

/// Most bytes one coded point takes: the control, a varint distance, every column whole.
const MAX_CODED_POINT: usize = 3 + 5 + 4 * COLUMNS;

/// Room added when the coded points outgrow their buffer: a few points' worth, so that a
/// window neither reallocates every minute nor keeps much more than it holds.
const GROWTH_BYTES: usize = 4 * MAX_CODED_POINT;

/// The first number of the version-4 binary form.
const CODED_FORM: u32 = 1;

/// Codes points one after another: the previous point, which the next is coded against.
#[derive(Debug, Clone, Copy, Default)]
struct Coder {
    minute: u32,
    bits: [u32; COLUMNS],
}

/// How many points report each column.
fn valid_of(points: &[Point]) -> [u32; COLUMNS] {
    let mut valid = [0; COLUMNS];
    for p in points {
        for (n, v) in valid.iter_mut().zip(p.values) {
            *n += u32::from(!v.is_nan());
        }
    }
    valid
}

/// Adds `weight` times what the pair of an earlier point and a later one contributes to the
/// statistics (1 when the later one comes, -1 when the earlier one goes).
fn add_signs(s: &mut [i64; COLUMNS], earlier: &Point, later: &Point, weight: i64) {
    for ((s, old), v) in s.iter_mut().zip(earlier.values).zip(later.values) {
        if !old.is_nan() && !v.is_nan() {
            *s += weight * sign(f64::from(old), f64::from(v));
        }
    }
}

impl Coder {
    fn encode(&mut self, p: &Point, out: &mut Vec<u8>) {
        let mut bytes = [0u8; MAX_CODED_POINT];
        let n = self.encode_into(p, &mut bytes);
        out.extend_from_slice(&bytes[..n]);
    }

    /// Codes `p` into `out`; returns the bytes it took.
    fn encode_into(&mut self, p: &Point, out: &mut [u8; MAX_CODED_POINT]) -> usize {
        let distance = p.minute.wrapping_sub(self.minute);
        let mut control: u32 = if (1..64).contains(&distance) { distance << 18 } else { 0 };
        let mut xors = [0u32; COLUMNS];
        for (c, v) in p.values.iter().enumerate() {
            let bits = v.to_bits();
            xors[c] = bits ^ self.bits[c];
            self.bits[c] = bits;
            control |= significant_bytes(xors[c]) << (3 * c);
        }
        out[..3].copy_from_slice(&control.to_le_bytes()[..3]);
        let mut at = 3;
        if control >> 18 == 0 {
            at += put_varint(distance, &mut out[at..]);
        }
        for (c, x) in xors.iter().enumerate() {
            let n = (control >> (3 * c) & 7) as usize;
            out[at..at + n].copy_from_slice(&x.to_le_bytes()[..n]);
            at += n;
        }
        self.minute = p.minute;
        at
    }

    /// Moves `at` past the point coded at `bytes[*at..]` without decoding it; `None` if it
    /// is not whole.
    fn skip(bytes: &[u8], at: &mut usize) -> Option<()> {
        let head = bytes.get(*at..*at + 3)?;
        let control = u32::from_le_bytes([head[0], head[1], head[2], 0]);
        let mut i = *at + 3;
        if control >> 18 == 0 {
            take_varint(bytes, &mut i)?;
        }
        for c in 0..COLUMNS {
            let n = (control >> (3 * c) & 7) as usize;
            if n > 4 {
                return None;
            }
            i += n;
        }
        (i <= bytes.len()).then(|| *at = i)
    }

    /// The point coded at `bytes[*at..]`, moving `at` past it; `None` if it is not whole.
    fn decode(&mut self, bytes: &[u8], at: &mut usize) -> Option<Point> {
        let head = bytes.get(*at..*at + 3)?;
        let control = u32::from_le_bytes([head[0], head[1], head[2], 0]);
        let mut i = *at + 3;
        let distance = match control >> 18 {
            0 => take_varint(bytes, &mut i)?,
            d => d,
        };
        let mut values = [0f32; COLUMNS];
        for (c, v) in values.iter_mut().enumerate() {
            let n = (control >> (3 * c) & 7) as usize;
            if n > 4 {
                return None;
            }
            let mut word = [0u8; 4];
            word[..n].copy_from_slice(bytes.get(i..i + n)?);
            i += n;
            self.bits[c] ^= u32::from_le_bytes(word);
            *v = f32::from_bits(self.bits[c]);
        }
        self.minute = self.minute.wrapping_add(distance);
        *at = i;
        Some(Point { minute: self.minute, values })
    }
}

/// Bytes of `x` up to its highest non-zero one.
fn significant_bytes(x: u32) -> u32 {
    (32 - x.leading_zeros()).div_ceil(8)
}

/// Writes `v` as a varint (at most 5 bytes) at the start of `out`; returns its length.
fn put_varint(mut v: u32, out: &mut [u8]) -> usize {
    let mut n = 0;
    while v >= 0x80 {
        out[n] = v as u8 | 0x80;
        v >>= 7;
        n += 1;
    }
    out[n] = v as u8;
    n + 1
}

fn take_varint(bytes: &[u8], at: &mut usize) -> Option<u32> {
    let mut v: u32 = 0;
    for shift in (0..35).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u32::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The points of a window, oldest first, decoded as they are read.
pub struct Points<'a> {
    bytes: &'a [u8],
    at: usize,
    left: u32,
    coder: Coder,
}

impl Points<'_> {
    fn of(bytes: &[u8], len: u32) -> Points<'_> {
        Points { bytes, at: 0, left: len, coder: Coder::default() }
    }
}

impl Iterator for Points<'_> {
    type Item = Point;

    fn next(&mut self) -> Option<Point> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        self.coder.decode(self.bytes, &mut self.at)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left as usize))
    }
}

/// A bounded window of minute points with the Mann–Kendall S of each column kept up to date.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    coded: Vec<u8>,
    len: u32,
    pub(super) s: [i64; COLUMNS],
    pub(super) valid: [u32; COLUMNS],
}

impl Window {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn points(&self) -> Points<'_> {
        Points::of(&self.coded, self.len)
    }

    /// Bytes the coded points take.
    pub fn coded_bytes(&self) -> usize {
        self.coded.len()
    }

    /// Bytes the coded points' buffer holds.
    pub fn coded_capacity(&self) -> usize {
        self.coded.capacity()
    }

    /// Appends a point, dropping the oldest beyond `capacity`; one pass over the points.
    pub fn push(&mut self, p: Point, capacity: usize) {
        if capacity == 0 {
            self.clear();
            return;
        }
        while self.len() > capacity {
            self.drop_oldest(None);
        }
        if self.len() == capacity {
            self.drop_oldest(Some(&p));
        } else {
            let mut points = Points::of(&self.coded, self.len);
            for q in &mut points {
                add_signs(&mut self.s, &q, &p, 1);
            }
            let coder = points.coder;
            self.append(coder, &p);
        }
    }

    /// What [`Window::push`]ing each point of `all` after the first `held` would leave,
    /// `all` being the window's points (the first `held`, decoded) and those to add: the
    /// points decoded and coded once instead of at every push. The statistics are those
    /// `known` of the window that was pushed, if it held the same points (its counts of
    /// values say so); or else gain each pair that ends at a point added and lose each that
    /// starts at a point dropped (the oldest).
    pub(super) fn extend_decoded(
        &mut self,
        all: &[Point],
        held: usize,
        capacity: usize,
        known: Option<&Window>,
    ) {
        debug_assert!(held == self.len() && held <= capacity && capacity > 0);
        let dropped = all.len().saturating_sub(capacity);
        let kept = &all[dropped..];
        let valid = valid_of(kept);
        match known.filter(|w| w.valid == valid) {
            Some(w) => self.s = w.s,
            None => self.count_pairs(all, held, dropped),
        }
        self.valid = valid;
        self.recode(kept);
    }

    /// The Mann–Kendall S of [`Window::extend_decoded`], pair by pair.
    fn count_pairs(&mut self, all: &[Point], held: usize, dropped: usize) {
        for (j, p) in all.iter().enumerate().skip(held) {
            for q in &all[..j] {
                add_signs(&mut self.s, q, p, 1);
            }
        }
        for (i, p) in all.iter().enumerate().take(dropped) {
            for q in &all[i + 1..] {
                add_signs(&mut self.s, p, q, -1);
            }
        }
    }

    /// Codes `points` as the window's, in place of those it held.
    fn recode(&mut self, points: &[Point]) {
        self.coded.clear();
        self.coded.reserve(points.len() * MAX_CODED_POINT / 2);
        let mut coder = Coder::default();
        for p in points {
            coder.encode(p, &mut self.coded);
        }
        self.len = points.len() as u32;
    }

    /// The window of the points of `self` from minute `from` on, with the statistics of the
    /// whole of `self`: what a tail carries, so that the window it extends need not count
    /// them again.
    pub(super) fn since(&self, from: u32) -> Window {
        let points: Vec<Point> = self.points().filter(|p| p.minute >= from).collect();
        let mut tail = Window { s: self.s, valid: self.valid, ..Window::default() };
        tail.recode(&points);
        tail
    }

    /// Removes the oldest point and its part of the statistics, the next one coded anew as
    /// the first; then appends `next`, if given, in the same pass over the points.
    fn drop_oldest(&mut self, next: Option<&Point>) {
        let mut points = Points::of(&self.coded, self.len);
        let Some(oldest) = points.next() else { return };
        // The second point, and where the points after it begin.
        let mut second = None;
        while let Some(q) = points.next() {
            second.get_or_insert((q, points.at));
            add_signs(&mut self.s, &oldest, &q, -1);
            if let Some(p) = next {
                add_signs(&mut self.s, &q, p, 1);
            }
        }
        let mut coder = points.coder;
        for (c, v) in oldest.values.iter().enumerate() {
            if !v.is_nan() {
                self.valid[c] -= 1;
            }
        }
        self.len -= 1;
        match second {
            None => {
                debug_assert_eq!(self.len, 0, "a window's points are whole");
                self.coded.clear();
                coder = Coder::default();
            }
            Some((second, rest_at)) => {
                let mut first = [0u8; MAX_CODED_POINT];
                let n = Coder::default().encode_into(&second, &mut first);
                self.coded.splice(..rest_at, first[..n].iter().copied());
            }
        }
        if let Some(p) = next {
            self.append(coder, p);
        }
    }

    /// Codes `p` after the newest point (`coder` holds it) and counts its values.
    fn append(&mut self, mut coder: Coder, p: &Point) {
        for (c, v) in p.values.iter().enumerate() {
            if !v.is_nan() {
                self.valid[c] += 1;
            }
        }
        if self.coded.capacity() - self.coded.len() < MAX_CODED_POINT {
            self.coded.reserve_exact(GROWTH_BYTES);
        }
        coder.encode(p, &mut self.coded);
        self.len += 1;
    }

    /// The Mann–Kendall z of a resource (no tie correction): the cheap first look.
    pub fn quick_z(&self, r: Resource) -> f64 {
        let c = r.index();
        mk_z(self.s[c], mk_variance(self.valid[c] as usize))
    }

    pub fn clear(&mut self) {
        self.coded.clear();
        self.len = 0;
        self.s = [0; COLUMNS];
        self.valid = [0; COLUMNS];
    }

    /// The series of a resource: (minute, value, requests per second) where it was reported.
    pub fn series(&self, r: Resource) -> Vec<(f64, f64, f64)> {
        let c = r.index();
        self.points()
            .filter(|p| !p.values[c].is_nan())
            .map(|p| (f64::from(p.minute), f64::from(p.values[c]), f64::from(p.values[RPS])))
            .collect()
    }

    /// A window of `points`, oldest first, its statistics computed.
    pub(super) fn of_points(points: impl ExactSizeIterator<Item = Point>) -> Window {
        let count = points.len();
        let mut window = Window::default();
        for point in points {
            window.push(point, count);
        }
        window
    }

    /// A window read back in the coded form: the points must decode, exactly `len` of them
    /// filling the bytes.
    fn of_coded(
        coded: Vec<u8>,
        len: u32,
        s: [i64; COLUMNS],
        valid: [u32; COLUMNS],
    ) -> Result<Window, String> {
        let mut at = 0;
        let whole = (0..len).all(|_| Coder::skip(&coded, &mut at).is_some());
        if !whole || at != coded.len() {
            return Err(format!("a trend window of {len} coded points does not decode to them"));
        }
        Ok(Window { coded, len, s, valid })
    }

    /// A window of the JSON form: its points raw, in base64.
    pub(super) fn of_text(text: &str) -> Result<Window, String> {
        use base64::Engine as _;
        let bytes =
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(text).map_err(|e| e.to_string())?;
        Ok(Window::of_points(of_raw(&bytes)?))
    }

    /// The points raw: per point the minute, then the columns, little-endian.
    fn raw_points(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.len() * POINT_BYTES);
        for p in self.points() {
            bytes.extend_from_slice(&p.minute.to_le_bytes());
            for v in p.values {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
        bytes
    }
}

/// Raw points read back: the minute, then the columns, per point.
fn of_raw(bytes: &[u8]) -> Result<impl ExactSizeIterator<Item = Point> + '_, &'static str> {
    if !bytes.len().is_multiple_of(POINT_BYTES) {
        return Err("a trend window is a whole number of points");
    }
    let word = |b: &[u8]| [b[0], b[1], b[2], b[3]];
    Ok(bytes.chunks_exact(POINT_BYTES).map(move |chunk| {
        let mut values = [f32::NAN; COLUMNS];
        for (c, v) in values.iter_mut().enumerate() {
            *v = f32::from_le_bytes(word(&chunk[4 + 4 * c..]));
        }
        Point { minute: u32::from_le_bytes(word(chunk)), values }
    }))
}

/// Bytes, borrowed from the input where the format allows (serde's bytes: in postcard, a
/// length, then the bytes).
pub(crate) struct Bytes<'a>(pub(crate) Cow<'a, [u8]>);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Bytes<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = Bytes<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Bytes<'a>, E> {
                Ok(Bytes(Cow::Borrowed(v)))
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes<'a>, E> {
                Ok(Bytes(Cow::Owned(v.to_vec())))
            }
        }
        deserializer.deserialize_bytes(Visitor(std::marker::PhantomData))
    }
}

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        use serde::ser::SerializeTuple;
        if serializer.is_human_readable() {
            let text = base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.raw_points());
            return serializer.serialize_str(&text);
        }
        let mut t = serializer.serialize_tuple(5)?;
        t.serialize_element(&CODED_FORM)?;
        t.serialize_element(&Bytes(Cow::Borrowed(&self.coded)))?;
        t.serialize_element(&self.len)?;
        t.serialize_element(&self.s)?;
        t.serialize_element(&self.valid)?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if !deserializer.is_human_readable() {
            // The form's elements depend on its first number, so there is no fixed count.
            return deserializer.deserialize_tuple(usize::MAX, BinaryVisitor);
        }
        let text = String::deserialize(deserializer)?;
        Window::of_text(&text).map_err(D::Error::custom)
    }
}

/// Reads the binary forms: version 4's coded points, or version 3's raw ones.
struct BinaryVisitor;

impl<'de> serde::de::Visitor<'de> for BinaryVisitor {
    type Value = Window;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a trend window")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Window, A::Error> {
        let head: u32 = seq.next_element()?.ok_or_else(|| ends_before::<A::Error>("form"))?;
        read_form(head, &mut seq)
    }
}

fn ends_before<E: serde::de::Error>(what: &str) -> E {
    E::custom(format!("a trend window ends before its {what}"))
}

/// Reads the rest of a binary window whose first number, `head`, was read: version 4's
/// coded points, or version 3's raw ones.
pub(super) fn read_form<'de, A: serde::de::SeqAccess<'de>>(
    head: u32,
    seq: &mut A,
) -> Result<Window, A::Error> {
    use serde::de::Error;
    let next = ends_before::<A::Error>;
    if head == CODED_FORM {
        let coded: Bytes<'_> = seq.next_element()?.ok_or_else(|| next("points"))?;
        let len: u32 = seq.next_element()?.ok_or_else(|| next("point count"))?;
        let s = seq.next_element()?.ok_or_else(|| next("statistics"))?;
        let valid = seq.next_element()?.ok_or_else(|| next("statistics"))?;
        return Window::of_coded(coded.0.into_owned(), len, s, valid).map_err(Error::custom);
    }
    // Version 3: `head` raw bytes of points, then the statistics.
    if !(head as usize).is_multiple_of(POINT_BYTES) {
        return Err(Error::custom(format!("a trend window of unknown form {head}")));
    }
    let mut raw = Vec::with_capacity(head as usize);
    for _ in 0..head {
        raw.push(seq.next_element::<u8>()?.ok_or_else(|| next("points"))?);
    }
    let s: [i64; COLUMNS] = seq.next_element()?.ok_or_else(|| next("statistics"))?;
    let valid: [u32; COLUMNS] = seq.next_element()?.ok_or_else(|| next("statistics"))?;
    let points = of_raw(&raw).map_err(Error::custom)?;
    let mut window = Window { coded: Vec::new(), len: 0, s, valid };
    let mut coder = Coder::default();
    for p in points {
        coder.encode(&p, &mut window.coded);
        window.len += 1;
    }
    window.coded.shrink_to_fit();
    Ok(window)
}
