//! A map kept as one vector sorted by key: the instances of an application and its open
//! rollup minutes, a handful each.
//!
//! A B-tree map allocates a node with room for 11 entries whatever it holds; here an entry
//! takes its own size (the memory per application is in `docs/benchmarks.md`). Lookups are
//! binary searches; an insert or a removal shifts the entries after it, which stays cheap for
//! the tens of entries an application has. It iterates, compares and is persisted as a B-tree
//! map would be (in key order, as a map), so the state's forms are unchanged.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Entries sorted by key, each key once.
#[derive(Clone, PartialEq)]
pub struct VecMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap { entries: Vec::new() }
    }
}

impl<K: Ord, V> VecMap<K, V> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Where `key` is, or where it would go.
    fn find<Q>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).ok().map(|i| &self.entries[i].1)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).ok().map(|i| &mut self.entries[i].1)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).is_ok()
    }

    /// Sets `key`'s value; returns the one it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// `key`'s value, made by `make` if it has none yet; the key is copied only then.
    pub fn get_or_insert_with<Q>(&mut self, key: &Q, make: impl FnOnce() -> V) -> &mut V
    where
        K: Borrow<Q>,
        Q: Ord + ToOwned<Owned = K> + ?Sized,
    {
        let i = match self.find(key) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, (key.to_owned(), make()));
                i
            }
        };
        &mut self.entries[i].1
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.find(key).ok().map(|i| self.entries.remove(i).1)
    }
}

impl<K, V> VecMap<K, V> {
    /// The entries in key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn iter_mut(&mut self) -> impl DoubleEndedIterator<Item = (&K, &mut V)> + ExactSizeIterator {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for VecMap<K, V> {
    /// As a B-tree map collects: in key order, the last value of a key repeated wins.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(items: I) -> Self {
        let mut entries: Vec<(K, V)> = items.into_iter().collect();
        // Stable, so that equal keys keep their order and the last of them can be kept.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut kept: Vec<(K, V)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            match kept.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => kept.push((k, v)),
            }
        }
        VecMap { entries: kept }
    }
}

impl<K, Q, V> std::ops::Index<&Q> for VecMap<K, V>
where
    K: Ord + Borrow<Q>,
    Q: Ord + ?Sized,
{
    type Output = V;

    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry for the key")
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for VecMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Serialize, V: Serialize> Serialize for VecMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (k, v) in &self.entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K, V> Deserialize<'de> for VecMap<K, V>
where
    K: Ord + Deserialize<'de>,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<K, V>(PhantomData<(K, V)>);

        impl<'de, K, V> Visitor<'de> for EntriesVisitor<K, V>
        where
            K: Ord + Deserialize<'de>,
            V: Deserialize<'de>,
        {
            type Value = VecMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                // The persisted forms hold their keys in order: collected as they come, sorted
                // only should they not be.
                let mut entries: Vec<(K, V)> = Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = access.next_entry()? {
                    entries.push(entry);
                }
                if entries.windows(2).all(|w| w[0].0 < w[1].0) {
                    return Ok(VecMap { entries });
                }
                Ok(entries.into_iter().collect())
            }
        }

        deserializer.deserialize_map(EntriesVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn it_answers_as_a_btree_map_does_for_any_sequence_of_inserts_and_removals() {
        // A fixed pseudo-random walk over a small key space, so keys come and go often.
        let mut ours: VecMap<u8, u32> = VecMap::default();
        let mut reference: BTreeMap<u8, u32> = BTreeMap::new();
        let mut x: u32 = 12345;
        for step in 0..5_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let key = (x >> 16) as u8 % 24;
            match (x >> 8) % 4 {
                0 => assert_eq!(ours.remove(&key), reference.remove(&key)),
                1 => {
                    *ours.get_or_insert_with(&key, || step) += 1;
                    *reference.entry(key).or_insert(step) += 1;
                }
                _ => assert_eq!(ours.insert(key, step), reference.insert(key, step)),
            }
            assert_eq!(ours.len(), reference.len());
            assert_eq!(ours.get(&key), reference.get(&key));
            assert_eq!(ours.contains_key(&key), reference.contains_key(&key));
        }
        assert!(ours.iter().eq(reference.iter()));
        assert_eq!(format!("{ours:?}"), format!("{reference:?}"));
    }

    #[test]
    fn its_persisted_forms_are_a_btree_maps() {
        let reference: BTreeMap<i64, String> = [(3, "c".into()), (-1, "a".into()), (2, "b".into())].into();
        let ours: VecMap<i64, String> = reference.clone().into_iter().collect();
        let binary = postcard::to_stdvec(&reference).unwrap();
        assert_eq!(postcard::to_stdvec(&ours).unwrap(), binary);
        assert_eq!(postcard::from_bytes::<VecMap<i64, String>>(&binary).unwrap(), ours);
        let json = serde_json::to_string(&reference).unwrap();
        assert_eq!(serde_json::to_string(&ours).unwrap(), json);
        assert_eq!(serde_json::from_str::<VecMap<i64, String>>(&json).unwrap(), ours);
        // Keys out of order, and one twice: read as a B-tree map reads them.
        let unordered = r#"{"2":"b","-1":"a","2":"B"}"#;
        let read: VecMap<i64, String> = serde_json::from_str(unordered).unwrap();
        let expected: BTreeMap<i64, String> = serde_json::from_str(unordered).unwrap();
        assert!(read.iter().eq(expected.iter()));
    }
}
