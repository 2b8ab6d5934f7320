//! The processor's Kafka transaction: begun lazily with a batch's first output, committed
//! with the batch's consumed offsets — on a thread of its own, while the next batch is read —
//! aborted after a failure; and what a failed call means.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
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

/// The transactional producer, whether a transaction of it is open, and the thread that
/// commits it.
pub struct Transaction {
    pub producer: Arc<TrackedProducer>,
    open: bool,
    committer: Committer,
    /// A commit was handed to the committer and its answer not yet taken.
    committing: bool,
}

/// A thread that commits the producer's open transaction when asked, and answers. It ends
/// once the transaction is dropped, after the commit it may be in (not waited for: a stage
/// that stops on an error must not wait on a broker that is away).
struct Committer {
    requests: SyncSender<()>,
    answers: Receiver<Result<(), KafkaError>>,
}

impl Committer {
    fn spawn(producer: Arc<TrackedProducer>, shutdown: Shutdown) -> Committer {
        let (requests, asked) = sync_channel::<()>(1);
        let (answer, answers) = sync_channel(1);
        std::thread::Builder::new()
            .name("pw-commit".into())
            .spawn(move || {
                while asked.recv().is_ok() {
                    if answer.send(commit(&producer, &shutdown)).is_err() {
                        return;
                    }
                }
            })
            .expect("a thread for the processor's commits");
        Committer { requests, answers }
    }
}

impl Transaction {
    fn new(producer: TrackedProducer, shutdown: &Shutdown) -> Transaction {
        let producer = Arc::new(producer);
        let committer = Committer::spawn(producer.clone(), shutdown.clone());
        Transaction { producer, open: false, committer, committing: false }
    }

    /// A new producer under `transactional_id`, initialised: it fences any older one with
    /// that id and aborts the transaction that one left open.
    pub fn start(
        kafka: &KafkaConfig,
        transactional_id: &str,
        shutdown: &Shutdown,
    ) -> Result<Transaction, KafkaError> {
        let producer = kafka::transactional_producer(kafka, transactional_id)?;
        producer.init_transactions(TXN_TIMEOUT)?;
        Ok(Transaction::new(producer, shutdown))
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Begins a transaction unless one is open. Not while one is being committed.
    pub fn begin(&mut self) -> Result<(), TxnFailure> {
        debug_assert!(!self.committing, "the commit in flight is settled first");
        if !self.open {
            self.producer.begin_transaction()?;
            self.open = true;
        }
        Ok(())
    }

    /// Hands the open transaction to the committer thread; [`Transaction::settle`] takes its
    /// answer. The producer is the committer's meanwhile.
    pub fn commit_in_background(&mut self) {
        if !self.open || self.committing {
            return;
        }
        self.committer.requests.send(()).expect("the committer thread waits for requests");
        self.committing = true;
    }

    /// Waits for the commit handed to the committer, if any.
    pub fn settle(&mut self) -> Result<(), KafkaError> {
        if !self.committing {
            return Ok(());
        }
        self.committing = false;
        let answer = self.committer.answers.recv().expect("the committer thread answers every request");
        answer?;
        self.open = false;
        crate::health::HEALTH.committed("processor");
        Ok(())
    }

    /// Aborts the open transaction, if any. What it had enqueued is purged and the delivery
    /// reports served first: the abort waits for them.
    pub fn abort(&mut self) -> Result<(), KafkaError> {
        // A commit in flight ends first: it failed (nothing left to abort if it committed
        // after all), or the abort would conflict with it.
        let _ = self.settle();
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

/// Commits the producer's open transaction. A commit that timed out — still flushing the
/// batch's records, or waiting for the coordinator (the broker away, say) — is resumed by
/// calling commit again, with backoff, not aborted: an abort would conflict with it. Other
/// failures, and a stop meanwhile, are the caller's.
fn commit(producer: &TrackedProducer, shutdown: &Shutdown) -> Result<(), KafkaError> {
    let mut backoff = Backoff::service();
    loop {
        let result = producer.commit_transaction(COMMIT_ATTEMPT);
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
            other => return other,
        }
    }
}
