//! How long to wait before trying again something that failed only for now. One doubling
//! backoff, in three policies: a Kafka client call (a partition without its leader yet),
//! a service the stage waits for (the Schema Registry, a transaction's coordinator), and the
//! database, whose delays the operator configures and which many sink instances may retry
//! at once (so they are jittered).

use std::time::Duration;

use rand::Rng;

/// Doubling delays from `first` up to `max`, optionally jittered by ±20 %.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    jitter: bool,
    /// The delay the next failure waits; `None`: the first.
    next: Option<Duration>,
}

impl Backoff {
    /// A Kafka client call that failed for now: 100 ms doubling to 2 s.
    pub fn client_call() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(2), false)
    }

    /// A service the stage cannot go on without (the Schema Registry, the transaction
    /// coordinator): 200 ms doubling to 10 s.
    pub fn service() -> Backoff {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(10), false)
    }

    /// The database: the configured first and longest delays, jittered so that sink
    /// instances do not retry in step.
    pub fn database(first: Duration, max: Duration) -> Backoff {
        Backoff::new(first, max, true)
    }

    fn new(first: Duration, max: Duration, jitter: bool) -> Backoff {
        Backoff { first, max, jitter, next: None }
    }

    /// One more failure: how long to wait before trying again.
    pub fn failed(&mut self) -> Duration {
        let delay = self.next.unwrap_or(self.first);
        let doubled = (delay * 2).min(self.max);
        self.next = Some(doubled);
        if self.jitter { delay.mul_f64(rand::rng().random_range(0.8..1.2)) } else { delay }
    }

    /// It worked: the next failure starts from the first delay.
    pub fn succeeded(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_its_maximum_and_resets() {
        let mut b = Backoff::service();
        let delays: Vec<u64> = (0..8).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 6400, 10000, 10000]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(200));
    }

    #[test]
    fn database_delays_are_jittered_around_the_doubling() {
        let mut b = Backoff::database(Duration::from_millis(100), Duration::from_millis(1_000));
        for expected in [100.0, 200.0, 400.0, 800.0, 1_000.0, 1_000.0] {
            let got = b.failed().as_millis() as f64;
            assert!((expected * 0.8..=expected * 1.2).contains(&got), "{got} not within 20 % of {expected}");
        }
    }
}
