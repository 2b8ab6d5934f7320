//! Idempotent retries: recently delivered (app_id, instance_id, seq), in a bounded moka
//! cache with a TTL.
//!
//! A beat is *claimed* before it is produced. A second request for the same beat waits for
//! the first one's outcome: delivered, it is a duplicate (answered 202 without producing);
//! failed, the claim is gone and the second request produces the beat itself. Claims being
//! produced sit in small sharded maps beside the cache, so that a new beat costs the cache
//! one lookup and one insert, not its guarded entry initialisation. A batch's beats are
//! claimed together and settled together ([`Claims`]), with one outcome for others to wait
//! on, and each key is hashed once, with a key of this process, for the maps and the cache.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use tokio::sync::watch;

/// What identifies a beat for retries: its app_id, instance_id and seq in one allocation,
/// with their hash (see [`Dedup::key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeatKey {
    hash: u64,
    bytes: Box<[u8]>,
}

impl Hash for BeatKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Passes a [`BeatKey`]'s own hash through: it is already keyed and spread.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached by a BeatKey, which writes one u64; kept correct for anything else.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Keyed = BuildHasherDefault<Prehashed>;

/// Settled claims as others see them: `false` while their beats are being produced.
type Outcome = watch::Receiver<bool>;

/// Shards of the claims in flight: enough that requests rarely wait on one another.
const SHARDS: usize = 32;

/// The beats recently delivered, and those being produced with their outcome to come.
#[derive(Clone)]
pub struct Dedup(Arc<Remembered>);

struct Remembered {
    delivered: Cache<BeatKey, (), Keyed>,
    in_flight: InFlight,
    /// Hashes the keys; random per process, so that no client can aim at one bucket.
    keys: RandomState,
}

/// The claims being produced, by shard of their key's hash.
struct InFlight {
    shards: [Mutex<HashMap<BeatKey, Outcome, Keyed>>; SHARDS],
}

impl InFlight {
    fn shard(&self, key: &BeatKey) -> MutexGuard<'_, HashMap<BeatKey, Outcome, Keyed>> {
        // The high bits: the maps' buckets are chosen by the low ones.
        let i = (key.hash >> 48) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What [`Claims::claim`] found.
#[derive(Debug)]
pub enum Claimed {
    /// Claimed: this set produces the beat.
    Mine,
    /// Delivered already: a duplicate.
    Delivered,
    /// Being produced by other claims (or earlier in this set): wait for them, then claim
    /// again.
    Theirs(Outcome),
}

/// The right, and the duty, to produce a set of beats: [`Claims::finish`] tells their
/// outcomes; claims dropped unfinished count as failed.
pub struct Claims {
    /// The keys claimed, in order.
    keys: Vec<BeatKey>,
    settled: watch::Sender<bool>,
    dedup: Dedup,
}

impl Claims {
    /// Claims `key` for this set unless it was delivered or is claimed already.
    pub fn claim(&mut self, key: BeatKey) -> Claimed {
        let mut claims = self.dedup.0.in_flight.shard(&key);
        if let Some(theirs) = claims.get(&key) {
            return Claimed::Theirs(theirs.clone());
        }
        if self.dedup.0.delivered.contains_key(&key) {
            return Claimed::Delivered;
        }
        claims.insert(key.clone(), self.settled.subscribe());
        drop(claims);
        self.keys.push(key);
        Claimed::Mine
    }

    /// Records the outcomes, in the order claimed (one missing: failed); a failed beat is
    /// forgotten, so that a retry produces it.
    pub fn finish(mut self, delivered: impl IntoIterator<Item = bool>) {
        self.settle(delivered.into_iter());
    }

    fn settle(&mut self, delivered: impl Iterator<Item = bool>) {
        let mut delivered = delivered.chain(std::iter::repeat(false));
        for key in std::mem::take(&mut self.keys) {
            let ok = delivered.next().unwrap_or(false);
            // Under the shard's lock, so that a request finds the beat in the claims or,
            // once it left them, remembered as delivered.
            let mut claims = self.dedup.0.in_flight.shard(&key);
            let claimed = claims.remove_entry(&key).map(|(k, _)| k);
            if ok {
                self.dedup.0.delivered.insert(claimed.unwrap_or(key), ());
            }
        }
        self.settled.send_replace(true);
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        self.settle(std::iter::empty());
    }
}

impl Dedup {
    /// At most `capacity` beats, each remembered for `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Dedup {
        let in_flight = InFlight { shards: std::array::from_fn(|_| Mutex::default()) };
        // Sized up front: the cache fills to its capacity within seconds under load, and
        // growing its table costs every insert meanwhile.
        let initial = usize::try_from(capacity).unwrap_or(usize::MAX).min(1 << 20);
        // LRU: when full, the oldest beat is forgotten. TinyLFU's admission would refuse a
        // new beat, seen as often as the oldest, and its retry would be produced again.
        let delivered = Cache::builder()
            .eviction_policy(EvictionPolicy::lru())
            .max_capacity(capacity)
            .initial_capacity(initial)
            .time_to_live(ttl)
            .build_with_hasher(Keyed::default());
        Dedup(Arc::new(Remembered { delivered, in_flight, keys: RandomState::new() }))
    }

    /// The key of a beat.
    pub fn key(&self, app_id: &str, instance_id: &str, seq: i64) -> BeatKey {
        let mut bytes = Vec::with_capacity(8 + app_id.len() + instance_id.len() + 8);
        // app_id's length first: ("ab", "c") and ("a", "bc") differ.
        bytes.extend_from_slice(&(app_id.len() as u64).to_le_bytes());
        bytes.extend_from_slice(app_id.as_bytes());
        bytes.extend_from_slice(instance_id.as_bytes());
        bytes.extend_from_slice(&seq.to_le_bytes());
        let hash = self.0.keys.hash_one(&bytes);
        BeatKey { hash, bytes: bytes.into_boxed_slice() }
    }

    /// An empty set of claims, to be settled together.
    pub fn claims(&self) -> Claims {
        let (settled, _) = watch::channel(false);
        Claims { keys: Vec::new(), settled, dedup: self.clone() }
    }

    /// `Some(claims)` holding this beat when it is to be produced by the caller, `None` when
    /// it was already delivered.
    pub async fn claim(&self, key: BeatKey) -> Option<Claims> {
        // Ends on a fresh claim or a delivered beat; each turn waits for one attempt.
        loop {
            let mut claims = self.claims();
            match claims.claim(key.clone()) {
                Claimed::Mine => return Some(claims),
                Claimed::Delivered => return None,
                // Settled: delivered, it is in the cache; failed, it can be claimed anew.
                Claimed::Theirs(mut theirs) => {
                    let _ = theirs.wait_for(|settled| *settled).await;
                }
            }
        }
    }

    /// Beats remembered as delivered (approximately: moka counts lazily).
    pub fn len(&self) -> u64 {
        self.0.delivered.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dedup: &Dedup, seq: i64) -> BeatKey {
        dedup.key("app", "i-1", seq)
    }

    #[tokio::test]
    async fn a_delivered_beat_is_a_duplicate_and_a_failed_one_is_not() {
        let dedup = Dedup::new(100, Duration::from_secs(60));
        dedup.claim(key(&dedup, 1)).await.expect("first").finish([true]);
        assert!(dedup.claim(key(&dedup, 1)).await.is_none(), "delivered: a retry is a duplicate");
        dedup.claim(key(&dedup, 2)).await.expect("first").finish([false]);
        assert!(dedup.claim(key(&dedup, 2)).await.is_some(), "failed: a retry produces it");
    }

    #[tokio::test]
    async fn a_retry_during_the_first_attempt_waits_for_its_outcome() {
        let dedup = Dedup::new(100, Duration::from_secs(60));
        let first = dedup.claim(key(&dedup, 3)).await.expect("first");
        let retry = tokio::spawn({
            let dedup = dedup.clone();
            async move { dedup.claim(key(&dedup, 3)).await.is_none() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!retry.is_finished(), "the retry waits");
        first.finish([true]);
        assert!(retry.await.unwrap(), "then it is a duplicate");
        let dropped = dedup.claim(key(&dedup, 4)).await.expect("first");
        drop(dropped);
        assert!(dedup.claim(key(&dedup, 4)).await.is_some(), "a claim dropped unfinished failed");
    }

    #[tokio::test]
    async fn a_set_settles_each_beat_with_its_own_outcome() {
        let dedup = Dedup::new(100, Duration::from_secs(60));
        let mut claims = dedup.claims();
        assert!(matches!(claims.claim(key(&dedup, 5)), Claimed::Mine));
        assert!(matches!(claims.claim(key(&dedup, 6)), Claimed::Mine));
        let Claimed::Theirs(mut again) = claims.claim(key(&dedup, 5)) else {
            panic!("a beat twice in one set waits for the first")
        };
        claims.finish([true, false]);
        assert!(*again.wait_for(|s| *s).await.unwrap());
        assert!(dedup.claim(key(&dedup, 5)).await.is_none(), "delivered");
        assert!(dedup.claim(key(&dedup, 6)).await.is_some(), "failed: claimed anew");
    }

    #[test]
    fn keys_tell_their_parts_apart() {
        let dedup = Dedup::new(100, Duration::from_secs(60));
        assert_ne!(dedup.key("ab", "c", 1), dedup.key("a", "bc", 1));
        assert_ne!(dedup.key("a", "b", 1), dedup.key("a", "b", 2));
        assert_eq!(dedup.key("a", "b", 1), dedup.key("a", "b", 1));
    }

    #[tokio::test]
    async fn a_full_memory_forgets_the_oldest_beats_not_the_newest() {
        let dedup = Dedup::new(100, Duration::from_secs(60));
        for seq in 0..300 {
            dedup.claim(key(&dedup, seq)).await.expect("new").finish([true]);
            dedup.0.delivered.run_pending_tasks();
        }
        for seq in 250..300 {
            assert!(dedup.claim(key(&dedup, seq)).await.is_none(), "beat {seq} is remembered");
        }
        assert!(dedup.claim(key(&dedup, 0)).await.is_some(), "the oldest is forgotten");
    }

    #[tokio::test]
    async fn beats_are_forgotten_after_the_ttl() {
        let dedup = Dedup::new(100, Duration::from_millis(100));
        dedup.claim(key(&dedup, 7)).await.expect("first").finish([true]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(dedup.claim(key(&dedup, 7)).await.is_some());
    }
}
