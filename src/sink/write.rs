//! One batch's transaction, in this order:
//!
//! 1. the offsets: their compare-and-set locks the batch's rows of `sink_offset`, so a
//!    batch that another instance already wrote is refused before anything of it goes out;
//! 2. the rows, table by table, setting aside those the database refuses ([`isolate`]);
//! 3. the dead letters (the records set aside), sent and acknowledged by the broker
//!    *before* the commit: once the offsets are past a record, its dead letter is on the
//!    topic. A crash between the two sends it once more on the restart, never loses it, and
//!    a write retried in the same process (a failed commit) does not send it again.
//! 4. the commit.

use std::collections::BTreeSet;

use tokio_postgres::{Client, Transaction};

use super::isolate;
use super::tables::Table;
use super::{Batch, OffsetRanges, Row, STORE_REJECTED, SinkError, millis};
use crate::dead_letter::{DeadLetter, Publisher};
use crate::metrics::METRICS;
use crate::store::{QueryContext, StoreError, partitions, quoted_schema};
use crate::topology::Topics;

/// What writing batches keeps between them.
pub(super) struct Writer {
    topics: Topics,
    group: String,
    dlq: Publisher,
    /// Partitions created (or found) since the last failure, `<table>:<partition>`.
    known_partitions: BTreeSet<String>,
}

/// The rows of each table a transaction wrote.
#[derive(Default)]
struct Written {
    tables: Vec<(&'static str, usize)>,
    refused: Vec<DeadLetter>,
}

impl Writer {
    pub(super) fn new(topics: Topics, group: String, dlq: Publisher) -> Writer {
        Writer { topics, group, dlq, known_partitions: BTreeSet::new() }
    }

    /// After a failure: a partition may have gone with the database's restart.
    pub(super) fn forget_partitions(&mut self) {
        self.known_partitions.clear();
    }

    /// Writes `batch` in one transaction (see the module's doc).
    pub(super) async fn write(
        &mut self,
        client: &mut Client,
        schema: &str,
        batch: &mut Batch,
    ) -> Result<(), SinkError> {
        let q = quoted_schema(schema)?;
        self.ensure_partitions(client, schema, batch).await?;
        let tx = client.transaction().await.doing("beginning a sink transaction")?;
        if let Err(e) = claim_offsets(&tx, &q, &self.group, &batch.ranges).await {
            tx.rollback().await.doing("rolling back a refused batch")?;
            return Err(e);
        }
        let written = self.write_rows(&tx, &q, batch).await?;
        self.send_dead_letters(batch, &written.refused)?;
        tx.commit().await.doing("committing a sink transaction")?;
        self.count(batch, &written);
        Ok(())
    }

    /// Creates the partitions the batch's rows need (all inside their retention window).
    async fn ensure_partitions(
        &mut self,
        client: &Client,
        schema: &str,
        batch: &Batch,
    ) -> Result<(), StoreError> {
        // Only the tables and their periods matter here, not the retention.
        let plans = partitions::plans(&crate::config::RetentionConfig::default());
        let days = batch.beats.iter().map(|r| (0, r.value.sent_at));
        let days = days.chain(batch.rollups.values().map(|r| (1, r.value.minute)));
        let days = days.chain(batch.alerts.iter().map(|r| (2, r.value.event_at)));
        let days: BTreeSet<(usize, chrono::NaiveDate)> =
            days.map(|(p, t)| (p, millis(t).date_naive())).collect();
        for (plan, day) in days {
            let key = format!("{}:{}", plans[plan].table, partitions::partition_for(&plans[plan], day).0);
            if !self.known_partitions.contains(&key) {
                partitions::ensure(client, schema, &plans[plan], day).await?;
                self.known_partitions.insert(key);
            }
        }
        Ok(())
    }

    async fn write_rows(&self, tx: &Transaction<'_>, q: &str, batch: &Batch) -> Result<Written, StoreError> {
        let mut w = Written::default();
        let topics = &self.topics;
        let beats: Vec<&Row<_>> = batch.beats.iter().collect();
        w.tables.push(write_table(tx, q, &beats, &topics.heartbeats, &mut w.refused).await?);
        let alerts: Vec<&Row<_>> = batch.alerts.iter().collect();
        w.tables.push(write_table(tx, q, &alerts, &topics.alerts, &mut w.refused).await?);
        let rollups: Vec<&Row<_>> = batch.rollups.values().collect();
        w.tables.push(write_table(tx, q, &rollups, &topics.metrics, &mut w.refused).await?);
        let apps: Vec<&Row<_>> = batch.apps.values().collect();
        w.tables.push(write_table(tx, q, &apps, &topics.app_state, &mut w.refused).await?);
        let acks: Vec<&Row<_>> = batch.acks.iter().collect();
        w.tables.push(write_table(tx, q, &acks, &topics.alert_acks, &mut w.refused).await?);
        Ok(w)
    }

    /// Sends the batch's dead letters the broker does not have yet, and waits for its
    /// acknowledgement. Blocks the calling thread (one of the sink's, not a runtime worker).
    fn send_dead_letters(&mut self, batch: &mut Batch, refused: &[DeadLetter]) -> Result<(), SinkError> {
        let unsent: Vec<&DeadLetter> = batch
            .dead_letters
            .iter()
            .chain(refused)
            .filter(|l| !batch.sent.contains(&source_key(l)))
            .collect();
        if unsent.is_empty() {
            return Ok(());
        }
        self.dlq.publish(unsent.iter().copied())?;
        let keys: Vec<_> = unsent.iter().map(|l| source_key(l)).collect();
        batch.sent.extend(keys);
        Ok(())
    }

    /// Counts what a committed transaction wrote and set aside.
    fn count(&self, batch: &Batch, written: &Written) {
        for (table, rows) in &written.tables {
            if *rows > 0 {
                METRICS.records_out.with_label_values(&["sink", table]).inc_by(*rows as u64);
            }
        }
        let letters: Vec<&DeadLetter> = batch.dead_letters.iter().chain(&written.refused).collect();
        for l in &letters {
            METRICS.sink_rejected.with_label_values(&[&l.topic, l.code]).inc();
        }
        if let Some(first) = letters.first() {
            tracing::warn!(
                records = letters.len(),
                dlq = self.dlq.topic(),
                first.topic = %first.topic,
                first.partition = first.partition,
                first.offset = first.offset,
                first.code = first.code,
                "sink: records set aside on the dead-letter topic, not stored: {}",
                first.message
            );
        }
    }
}

fn source_key(l: &DeadLetter) -> (String, i32, i64) {
    let (topic, partition, offset) = l.source();
    (topic.to_owned(), partition, offset)
}

/// Moves `sink_offset` to the batch's ends, if it still holds where the batch started.
async fn claim_offsets(
    tx: &Transaction<'_>,
    q: &str,
    group: &str,
    ranges: &OffsetRanges,
) -> Result<(), SinkError> {
    let offsets = tx
        .prepare(&format!(
            "INSERT INTO {q}.sink_offset AS s (consumer_group, topic, partition, next_offset, updated_at)
             VALUES ($1, $2, $3, $4, now())
             ON CONFLICT (consumer_group, topic, partition)
             DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now() WHERE s.next_offset = $5
             RETURNING 1"
        ))
        .await
        .doing("preparing the offset update")?;
    for ((topic, p), (from, next)) in ranges {
        let updated =
            tx.query_opt(&offsets, &[&group, topic, p, next, from]).await.doing("updating sink_offset")?;
        if updated.is_none() {
            return Err(SinkError::Conflict { topic: topic.clone(), partition: *p, expected: *from });
        }
    }
    Ok(())
}

/// Writes `rows` into `T`'s table, each attempt under a savepoint, and adds a dead letter
/// for each row the database refuses. Returns the table and the rows written.
async fn write_table<T: Table>(
    tx: &Transaction<'_>,
    q: &str,
    rows: &[&Row<T>],
    topic: &str,
    refused: &mut Vec<DeadLetter>,
) -> Result<(&'static str, usize), StoreError> {
    if rows.is_empty() {
        return Ok((T::NAME, 0));
    }
    let prepared = T::prepare(tx, q).await?;
    let refusals = isolate::bisect(rows, StoreError::is_content, async |chunk: &[&Row<T>]| {
        tx.batch_execute("SAVEPOINT sink_rows").await.doing("setting a savepoint")?;
        match T::write(tx, &prepared, chunk).await {
            Ok(()) => tx.batch_execute("RELEASE SAVEPOINT sink_rows").await.doing("releasing a savepoint"),
            Err(e) => {
                // Released too, so that savepoints do not pile up while a chunk is split.
                tx.batch_execute("ROLLBACK TO SAVEPOINT sink_rows; RELEASE SAVEPOINT sink_rows")
                    .await
                    .doing("rolling back to a savepoint")?;
                Err(e)
            }
        }
    })
    .await?;
    for (i, error) in &refusals {
        let message = format!("{}: {}", T::NAME, error.server_message());
        refused.push(rows[*i].source.dead_letter(topic, STORE_REJECTED, message));
    }
    Ok((T::NAME, rows.len() - refusals.len()))
}
