//! The hot reads' cache: a bounded moka cache with a short TTL holding rendered answers by
//! route and query, each with its `ETag` (a hash of the body), and the hit ratio exported
//! as `api_cache_hit_ratio` beside `api_cache_requests_total{result}`.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::{Gauge, IntCounterVec, Opts};
use sha2::{Digest, Sha256};

use crate::metrics::METRICS;

/// Most answers kept (route and query pairs).
const CAPACITY: u64 = 1_000;

/// A rendered answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub body: String,
    /// A strong validator, quoted as the header carries it.
    pub etag: String,
}

impl Cached {
    pub fn new(body: String) -> Cached {
        let digest = Sha256::digest(body.as_bytes());
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        Cached { body, etag: format!("\"{hex}\"") }
    }

    /// Whether an `If-None-Match` header's value names this answer (`*` names any).
    pub fn matches(&self, if_none_match: &str) -> bool {
        if_none_match.split(',').map(str::trim).any(|t| t == "*" || t.trim_start_matches("W/") == self.etag)
    }
}

struct CacheMetrics {
    requests: IntCounterVec,
    hit_ratio: Gauge,
}

static CACHE_METRICS: LazyLock<CacheMetrics> = LazyLock::new(|| {
    let requests = IntCounterVec::new(
        Opts::new("api_cache_requests_total", "API hot reads, by whether the cache answered (hit or miss)"),
        &["result"],
    )
    .expect("valid metric");
    let hit_ratio =
        Gauge::new("api_cache_hit_ratio", "Share of API hot reads answered from the cache since the start")
            .expect("valid metric");
    METRICS.registry.register(Box::new(requests.clone())).expect("registered once");
    METRICS.registry.register(Box::new(hit_ratio.clone())).expect("registered once");
    CacheMetrics { requests, hit_ratio }
});

/// Answers by key, for `ttl`.
#[derive(Clone)]
pub struct AnswerCache {
    inner: moka::sync::Cache<String, Arc<Cached>>,
    pub ttl: Duration,
}

impl AnswerCache {
    pub fn new(ttl: Duration) -> AnswerCache {
        LazyLock::force(&CACHE_METRICS);
        AnswerCache {
            inner: moka::sync::Cache::builder().max_capacity(CAPACITY).time_to_live(ttl).build(),
            ttl,
        }
    }

    /// The answer under `key`, counting a hit or a miss.
    pub fn get(&self, key: &str) -> Option<Arc<Cached>> {
        let found = self.inner.get(key);
        record(found.is_some());
        found
    }

    pub fn insert(&self, key: String, answer: Arc<Cached>) {
        self.inner.insert(key, answer);
    }
}

fn record(hit: bool) {
    let m = &*CACHE_METRICS;
    m.requests.with_label_values(&[if hit { "hit" } else { "miss" }]).inc();
    let hits = m.requests.with_label_values(&["hit"]).get() as f64;
    let misses = m.requests.with_label_values(&["miss"]).get() as f64;
    m.hit_ratio.set(hits / (hits + misses));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_etag_follows_the_body_and_matches_its_header_forms() {
        let a = Cached::new("{\"a\":1}".into());
        assert_eq!(a, Cached::new("{\"a\":1}".into()));
        assert_ne!(a.etag, Cached::new("{\"a\":2}".into()).etag);
        assert!(a.matches(&a.etag) && a.matches("*") && a.matches(&format!("\"x\", W/{}", a.etag)));
        assert!(!a.matches("\"other\""));
    }

    #[test]
    fn hits_and_misses_are_counted() {
        let cache = AnswerCache::new(Duration::from_secs(60));
        let before = CACHE_METRICS.requests.with_label_values(&["hit"]).get();
        assert!(cache.get("k").is_none());
        cache.insert("k".into(), Arc::new(Cached::new("x".into())));
        assert_eq!(cache.get("k").unwrap().body, "x");
        assert!(CACHE_METRICS.requests.with_label_values(&["hit"]).get() > before);
        assert!(METRICS.render().contains("api_cache_hit_ratio"));
    }
}
