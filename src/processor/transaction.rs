//! The processor's Kafka transaction: begun lazily with a batch's first output, committed
//! with the batch's consumed offsets, aborted after a failure; and what a failed call means.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer, PurgeConfig};

use crate::backoff::Backoff;
use crate::config::KafkaConfig;
use crate::kafka::{self, TrackedProducer};
use crate::metrics::METRICS;
use crate::shutdown::Shutdown;

/// Longest wait for a transaction call (init, commit, abort, sending the offsets).
pub const TXN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one attempt to commit may block before it is resumed (so that a stop is noticed).
const COMMIT_ATTEMPT: Duration = Duration::from_secs(10);

/// What a failed Kafka call means for the transaction.
pub enum TxnFailure {
    /// This producer may not write any more (fenced, or a fatal producer error).
    Fatal(KafkaError),
    /// Abort the transaction, rewind, go on.
    Abort(KafkaError),
    /// This producer cannot go on, but no other instance took its id over: the broker found
    /// its transaction in a state it did not expect (a coordinator that restarted while the
    /// producer bumped its epoch). A new producer under the same id takes over (its
    /// initialisation aborts what the old one left open), then the batch is rewound.
    Reset(KafkaError),
}

impl From<KafkaError> for TxnFailure {
    fn from(e: KafkaError) -> Self {
        let code = match &e {
            KafkaError::Transaction(rd) => Some(rd.code()),
            other => other.rdkafka_error_code(),
        };
        if code == Some(RDKafkaErrorCode::InvalidTransactionalState) {
            return TxnFailure::Reset(e);
        }
        let fatal = match &e {
            KafkaError::Transaction(rd) => rd.is_fatal(),
            other => matches!(
                other.rdkafka_error_code(),
                Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::Fatal)
            ),
        };
        if fatal { TxnFailure::Fatal(e) } else { TxnFailure::Abort(e) }
    }
}

/// The transactional producer and whether a transaction of it is open.
pub struct Transaction {
    pub producer: TrackedProducer,
    open: bool,
}

impl Transaction {
    pub fn new(producer: TrackedProducer) -> Transaction {
        Transaction { producer, open: false }
    }

    /// A new producer under `transactional_id`, initialised: it fences any older one with
    /// that id and aborts the transaction that one left open.
    pub fn start(kafka: &KafkaConfig, transactional_id: &str) -> Result<Transaction, KafkaError> {
        let producer = kafka::transactional_producer(kafka, transactional_id)?;
        producer.init_transactions(TXN_TIMEOUT)?;
        Ok(Transaction::new(producer))
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Begins a transaction unless one is open.
    pub fn begin(&mut self) -> Result<(), TxnFailure> {
        if !self.open {
            self.producer.begin_transaction()?;
            self.open = true;
        }
        Ok(())
    }

    /// Commits the open transaction. A commit that timed out — still flushing the batch's
    /// records, or waiting for the coordinator (the broker away, say) — is resumed by calling
    /// commit again, with backoff, not aborted: an abort would conflict with it. Other
    /// failures, and a stop meanwhile, are the caller's.
    pub fn commit(&mut self, shutdown: &Shutdown) -> Result<(), KafkaError> {
        let mut backoff = Backoff::service();
        loop {
            let result = self.producer.commit_transaction(COMMIT_ATTEMPT);
            let unfinished = match &result {
                Err(KafkaError::Transaction(e)) => e.is_retriable(),
                // The client flushes the enqueued records before it commits.
                Err(KafkaError::Flush(code)) => *code == RDKafkaErrorCode::OperationTimedOut,
                _ => false,
            };
            match result {
                Err(e) if unfinished && !shutdown.is_triggered() => {
                    let delay = backoff.failed();
                    tracing::warn!(error = %e, delay_ms = delay.as_millis() as u64, "processor: commit not finished; resuming it");
                    METRICS.transactions.with_label_values(&["commit_resumed"]).inc();
                    std::thread::sleep(delay);
                }
                Ok(()) => {
                    self.open = false;
                    crate::health::HEALTH.committed("processor");
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Aborts the open transaction, if any. What it had enqueued is purged and the delivery
    /// reports served first: the abort waits for them.
    pub fn abort(&mut self) -> Result<(), KafkaError> {
        if !self.open {
            return Ok(());
        }
        self.producer.purge(PurgeConfig::default().queue().inflight());
        let deadline = Instant::now() + TXN_TIMEOUT;
        while self.producer.in_flight_count() > 0 && Instant::now() < deadline {
            self.producer.poll(Duration::from_millis(10));
        }
        self.producer.abort_transaction(TXN_TIMEOUT)?;
        self.open = false;
        Ok(())
    }
}
