//! Idempotent retries: recently delivered (app_id, instance_id, seq), in a bounded moka
//! cache with a TTL.
//!
//! A beat is *claimed* before it is produced. A second request for the same beat waits for
//! the first one's outcome: delivered, it is a duplicate (answered 202 without producing);
//! failed, the claim is gone and the second request produces the beat itself. Claims being
//! produced sit in small sharded maps beside the cache, so that a new beat costs the cache
//! one lookup and one insert, not its guarded entry initialisation.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::sync::Cache;
use tokio::sync::watch;

/// What identifies a beat for retries.
pub type BeatKey = (String, String, i64);

/// A claim's outcome as others see it: `None` while it is being produced.
type Outcome = watch::Receiver<Option<bool>>;

/// Shards of the claims in flight: enough that requests rarely wait on one another.
const SHARDS: usize = 32;

/// The beats recently delivered, and those being produced with their outcome to come.
#[derive(Clone)]
pub struct Dedup(Arc<Remembered>);

struct Remembered {
    delivered: Cache<BeatKey, ()>,
    in_flight: InFlight,
}

/// The claims being produced, by shard of their key's hash.
struct InFlight {
    shards: [Mutex<HashMap<BeatKey, Outcome>>; SHARDS],
    hasher: RandomState,
}

impl InFlight {
    fn shard(&self, key: &BeatKey) -> std::sync::MutexGuard<'_, HashMap<BeatKey, Outcome>> {
        let i = self.hasher.hash_one(key) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The right, and the duty, to produce a beat: [`Claim::finish`] tells the outcome; a
/// claim dropped unfinished counts as failed.
pub struct Claim {
    key: Option<BeatKey>,
    outcome: watch::Sender<Option<bool>>,
    dedup: Dedup,
}

impl Claim {
    /// Records the outcome; a failed beat is forgotten, so that a retry produces it.
    pub fn finish(mut self, delivered: bool) {
        self.settle(delivered);
    }

    fn settle(&mut self, delivered: bool) {
        let Some(key) = self.key.take() else { return };
        // Remembered as delivered before it leaves the claims: a request in between finds it
        // in one or the other.
        if delivered {
            self.dedup.0.delivered.insert(key.clone(), ());
        }
        self.dedup.0.in_flight.shard(&key).remove(&key);
        self.outcome.send_replace(Some(delivered));
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.settle(false);
    }
}

impl Dedup {
    /// At most `capacity` beats, each remembered for `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Dedup {
        let in_flight =
            InFlight { shards: std::array::from_fn(|_| Mutex::default()), hasher: RandomState::new() };
        let delivered = Cache::builder().max_capacity(capacity).time_to_live(ttl).build();
        Dedup(Arc::new(Remembered { delivered, in_flight }))
    }

    /// `Some(claim)` when this beat is to be produced by the caller, `None` when it was
    /// already delivered.
    pub async fn claim(&self, key: BeatKey) -> Option<Claim> {
        // Ends on a fresh claim or a delivered beat; each turn waits for one attempt.
        loop {
            let mut theirs = {
                let mut claims = self.0.in_flight.shard(&key);
                match claims.get(&key) {
                    Some(outcome) => outcome.clone(),
                    None if self.0.delivered.contains_key(&key) => return None,
                    None => {
                        let (sender, receiver) = watch::channel(None);
                        claims.insert(key.clone(), receiver);
                        return Some(Claim { key: Some(key), outcome: sender, dedup: self.clone() });
                    }
                }
            };
            match theirs.wait_for(Option::is_some).await.map(|v| *v) {
                Ok(Some(true)) => return None,
                // Failed: its claimant removed the claim before telling; claim it anew.
                _ => continue,
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

    fn key(seq: i64) -> BeatKey {
        ("app".into(), "i-1".into(), seq)
    }

    #[tokio::test]
    async fn a_delivered_beat_is_a_duplicate_and_a_failed_one_is_not() {
        let dedup = Dedup::new(100, Duration::from_secs(60));
        dedup.claim(key(1)).await.expect("first").finish(true);
        assert!(dedup.claim(key(1)).await.is_none(), "delivered: a retry is a duplicate");
        dedup.claim(key(2)).await.expect("first").finish(false);
        assert!(dedup.claim(key(2)).await.is_some(), "failed: a retry produces it");
    }

    #[tokio::test]
    async fn a_retry_during_the_first_attempt_waits_for_its_outcome() {
        let dedup = Dedup::new(100, Duration::from_secs(60));
        let first = dedup.claim(key(3)).await.expect("first");
        let retry = tokio::spawn({
            let dedup = dedup.clone();
            async move { dedup.claim(key(3)).await.is_none() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!retry.is_finished(), "the retry waits");
        first.finish(true);
        assert!(retry.await.unwrap(), "then it is a duplicate");
        let dropped = dedup.claim(key(4)).await.expect("first");
        drop(dropped);
        assert!(dedup.claim(key(4)).await.is_some(), "a claim dropped unfinished failed");
    }

    #[tokio::test]
    async fn beats_are_forgotten_after_the_ttl() {
        let dedup = Dedup::new(100, Duration::from_millis(100));
        dedup.claim(key(5)).await.expect("first").finish(true);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(dedup.claim(key(5)).await.is_some());
    }
}
