//! An instance's request and error counts of its last minute, beat by beat, for its request
//! and error rates; and their compact persisted form.
//!
//! Persisted forms. State version 5 (binary): the number [`COMPACT_FORM`], then one byte
//! string: per delta its event time as a zigzag varint against the previous one's (the
//! first against 0), then the requests and the errors, each as a varint of twice the count
//! when it is a whole number below 2^52 (what counter deltas are), else the varint 1 and the
//! f64's 8 bytes. About 5 bytes a delta instead of 22. Version 4 and before (binary): the
//! deltas' count, then each as (i64, f64, f64). JSON (version 2): a list of such triples.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize};

use crate::trend::Bytes;

/// The first number of the compact binary form: no count of the older form reaches it.
const COMPACT_FORM: u32 = u32::MAX;

/// The largest count coded as a whole number: every integer up to it is an exact f64.
const WHOLE_BELOW: f64 = (1u64 << 52) as f64;

/// (event time, requests, errors) deltas, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateWindow(VecDeque<(i64, f64, f64)>);

impl Deref for RateWindow {
    type Target = VecDeque<(i64, f64, f64)>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for RateWindow {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

fn put_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Result<u64, &'static str> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first().ok_or("a rate window ends inside a number")?;
        *bytes = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("a rate window's number is too long")
}

fn put_count(v: f64, out: &mut Vec<u8>) {
    if (0.0..WHOLE_BELOW).contains(&v) && v.fract() == 0.0 && v.is_sign_positive() {
        put_varint((v as u64) << 1, out);
    } else {
        put_varint(1, out);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn take_count(bytes: &mut &[u8]) -> Result<f64, &'static str> {
    match take_varint(bytes)? {
        1 => {
            let (raw, rest) = bytes.split_first_chunk::<8>().ok_or("a rate window ends inside a count")?;
            *bytes = rest;
            Ok(f64::from_le_bytes(*raw))
        }
        v if v & 1 == 0 => Ok((v >> 1) as f64),
        _ => Err("a rate window's count has an unknown form"),
    }
}

impl RateWindow {
    /// The compact form's bytes.
    fn coded(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 * self.len());
        let mut previous = 0i64;
        for &(t, requests, errors) in self.iter() {
            let d = t.wrapping_sub(previous);
            put_varint(((d << 1) ^ (d >> 63)) as u64, &mut out);
            put_count(requests, &mut out);
            put_count(errors, &mut out);
            previous = t;
        }
        out
    }

    fn of_coded(mut bytes: &[u8]) -> Result<RateWindow, &'static str> {
        let mut window = VecDeque::new();
        let mut previous = 0i64;
        while !bytes.is_empty() {
            let z = take_varint(&mut bytes)?;
            let t = previous.wrapping_add(((z >> 1) as i64) ^ -((z & 1) as i64));
            window.push_back((t, take_count(&mut bytes)?, take_count(&mut bytes)?));
            previous = t;
        }
        Ok(RateWindow(window))
    }
}

impl Serialize for RateWindow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        if serializer.is_human_readable() {
            return self.0.serialize(serializer);
        }
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&COMPACT_FORM)?;
        t.serialize_element(&Bytes(Cow::Owned(self.coded())))?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for RateWindow {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            return VecDeque::deserialize(deserializer).map(RateWindow);
        }
        // The form's elements depend on its first number, so there is no fixed count.
        deserializer.deserialize_tuple(usize::MAX, BinaryVisitor)
    }
}

/// Reads the binary forms: version 5's compact one, or the count and triples before it.
struct BinaryVisitor;

impl<'de> serde::de::Visitor<'de> for BinaryVisitor {
    type Value = RateWindow;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a rate window")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RateWindow, A::Error> {
        use serde::de::Error;
        let ends = |what: &str| A::Error::custom(format!("a rate window ends before its {what}"));
        let head: u32 = seq.next_element()?.ok_or_else(|| ends("form"))?;
        if head == COMPACT_FORM {
            let bytes: Bytes<'_> = seq.next_element()?.ok_or_else(|| ends("deltas"))?;
            return RateWindow::of_coded(&bytes.0).map_err(A::Error::custom);
        }
        let mut window = VecDeque::with_capacity((head as usize).min(1024));
        for _ in 0..head {
            window.push_back(seq.next_element()?.ok_or_else(|| ends("deltas"))?);
        }
        Ok(RateWindow(window))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(deltas: &[(i64, f64, f64)]) -> RateWindow {
        RateWindow(deltas.iter().copied().collect())
    }

    #[test]
    fn the_compact_form_reads_back_every_delta_exactly() {
        let w = window(&[
            (1_800_000_000_000, 12.0, 0.0),
            (1_800_000_001_000, 0.0, 3.0),
            // Beats out of order, a fractional count, counts beyond a whole f64's range.
            (1_800_000_000_500, 2.5, f64::NAN),
            (1_800_000_002_000, 1e300, -4.0),
            (i64::MIN, (1u64 << 53) as f64, -0.0),
        ]);
        let bytes = postcard::to_allocvec(&w).unwrap();
        let back: RateWindow = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.len(), w.len());
        for (a, b) in back.iter().zip(w.iter()) {
            assert_eq!((a.0, a.1.to_bits(), a.2.to_bits()), (b.0, b.1.to_bits(), b.2.to_bits()));
        }
    }

    #[test]
    fn a_minute_of_one_second_beats_takes_a_few_bytes_a_delta() {
        let w = window(
            &(0..60).map(|i| (1_800_000_000_000 + i * 1_000, 40.0 + i as f64, 1.0)).collect::<Vec<_>>(),
        );
        let compact = postcard::to_allocvec(&w).unwrap().len();
        let triples = postcard::to_allocvec(&w.0).unwrap().len();
        assert!(compact * 3 < triples, "{compact} bytes against {triples}");
    }

    #[test]
    fn the_form_before_version_5_still_reads() {
        let w = window(&[(1_800_000_000_000, 12.0, 1.0), (1_800_000_005_000, 7.0, 0.0)]);
        let old = postcard::to_allocvec(&w.0).unwrap();
        assert_eq!(postcard::from_bytes::<RateWindow>(&old).unwrap(), w);
        let empty = postcard::to_allocvec(&VecDeque::<(i64, f64, f64)>::new()).unwrap();
        assert!(postcard::from_bytes::<RateWindow>(&empty).unwrap().is_empty());
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(json, serde_json::to_string(&w.0).unwrap(), "JSON keeps the list of triples");
        assert_eq!(serde_json::from_str::<RateWindow>(&json).unwrap(), w);
    }

    #[test]
    fn a_damaged_compact_form_is_an_error() {
        let w = window(&[(1_800_000_000_000, 12.0, 1.0)]);
        let mut bytes = postcard::to_allocvec(&w).unwrap();
        let last = bytes.len() - 1;
        bytes[last] = 0x80; // a number that never ends
        assert!(postcard::from_bytes::<RateWindow>(&bytes).is_err());
    }
}
