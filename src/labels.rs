//! [`Labels`]: the small map of strings a heartbeat carries and an application keeps, in
//! one sorted vector: the engine keeps one per application and one per instance, and a
//! `BTreeMap<String, String>` takes a whole node however few its pairs are (a vector takes a
//! fifth to a half of that for the usual two to five labels). It is read and written as a
//! map, in the same JSON and binary forms as the B-tree map it replaced.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Pairs sorted by key, each key once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    pub fn new() -> Labels {
        Labels(Vec::new())
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok().map(|i| &self.0[i].1)
    }

    /// Sets `key` to `value`; returns the value it had.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

/// Of pairs given more than once, the last one counts (as in a map they are inserted into).
impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Labels {
        let mut pairs: Vec<(String, String)> = pairs.into_iter().collect();
        // Stable: of equal keys the later pair stays later, and wins below.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        pairs.shrink_to_fit();
        Labels(pairs)
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a String, &'a String);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, (String, String)>, fn(&'a (String, String)) -> Self::Item>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Labels, D::Error> {
        struct LabelsVisitor;
        impl<'de> Visitor<'de> for LabelsVisitor {
            type Value = Labels;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
                // The hint comes from the input: trust it only so far.
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(pair) = map.next_entry::<String, String>()? {
                    pairs.push(pair);
                }
                Ok(pairs.into_iter().collect())
            }
        }
        deserializer.deserialize_map(LabelsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn keeps_keys_sorted_and_once_with_the_last_value() {
        let l = labels(&[("team", "a"), ("env", "prod"), ("team", "b")]);
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            [(&"env".to_string(), &"prod".to_string()), (&"team".into(), &"b".into())]
        );
        let mut m = Labels::new();
        assert_eq!(m.insert("z".into(), "1".into()), None);
        assert_eq!(m.insert("a".into(), "2".into()), None);
        assert_eq!(m.insert("z".into(), "3".into()), Some("1".into()));
        assert_eq!(
            (m.get("a").map(String::as_str), m.get("z").map(String::as_str), m.get("q")),
            (Some("2"), Some("3"), None)
        );
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn reads_and_writes_as_the_map_it_replaced() {
        let map: BTreeMap<String, String> =
            [("region", "eu"), ("env", "prod"), ("version", "1.2")].map(|(k, v)| (k.into(), v.into())).into();
        let l: Labels = map.clone().into_iter().collect();
        assert_eq!(serde_json::to_string(&l).unwrap(), serde_json::to_string(&map).unwrap());
        assert_eq!(postcard::to_stdvec(&l).unwrap(), postcard::to_stdvec(&map).unwrap());
        let back: Labels = postcard::from_bytes(&postcard::to_stdvec(&map).unwrap()).unwrap();
        assert_eq!(back, l);
        let back: Labels =
            serde_json::from_str(r#"{"version":"1.2","env":"x","env":"prod","region":"eu"}"#).unwrap();
        assert_eq!(back, l);
        assert!(serde_json::from_str::<Labels>(r#"{"k":1}"#).is_err());
    }
}
