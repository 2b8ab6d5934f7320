//! Finding the rows the database refuses, without giving up the others.
//!
//! Rows are written a chunk at a time, the caller undoing a failed chunk (a rolled-back
//! savepoint): the first chunk is every row, so a healthy batch costs one attempt. A chunk
//! refused for a row's content is split in two, and so on until each refused row stands
//! alone; every other row is written exactly once. With one bad row among `n`, that takes
//! about `2·log2(n)` attempts.

use std::ops::Range;

/// Writes `rows` through `attempt` and returns the refused ones (their index and error), in
/// order. `attempt` must leave nothing behind when it fails. Stops at the first error that
/// `is_content` does not call a row's fault, and returns it.
pub(super) async fn bisect<T, E>(
    rows: &[T],
    is_content: impl Fn(&E) -> bool,
    mut attempt: impl AsyncFnMut(&[T]) -> Result<(), E>,
) -> Result<Vec<(usize, E)>, E> {
    let mut refused = Vec::new();
    // Chunks still to write, the next on top.
    let mut pending: Vec<Range<usize>> = Vec::new();
    if !rows.is_empty() {
        pending.push(0..rows.len());
    }
    while let Some(chunk) = pending.pop() {
        match attempt(&rows[chunk.clone()]).await {
            Ok(()) => {}
            Err(e) if !is_content(&e) => return Err(e),
            Err(e) if chunk.len() == 1 => refused.push((chunk.start, e)),
            Err(_) => {
                let middle = chunk.start + chunk.len() / 2;
                pending.push(middle..chunk.end);
                pending.push(chunk.start..middle);
            }
        }
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Refusal {
        Content(u32),
        Away,
    }

    type Outcome = (Result<Vec<(usize, Refusal)>, Refusal>, Vec<u32>, usize);

    /// Writes into `stored` the chunks without a bad row (an odd number), as a transaction
    /// with savepoints would keep them; counts the attempts.
    fn run(rows: &[u32], away_at: Option<usize>) -> Outcome {
        let mut stored = Vec::new();
        let mut attempts = 0;
        let result = futures::executor::block_on(bisect(
            rows,
            |e| matches!(e, Refusal::Content(_)),
            async |chunk: &[u32]| {
                attempts += 1;
                if away_at == Some(attempts) {
                    return Err(Refusal::Away);
                }
                match chunk.iter().find(|r| *r % 2 == 1) {
                    Some(bad) => Err(Refusal::Content(*bad)),
                    None => {
                        stored.extend_from_slice(chunk);
                        Ok(())
                    }
                }
            },
        ));
        (result, stored, attempts)
    }

    #[test]
    fn a_healthy_batch_is_written_in_one_attempt() {
        let rows: Vec<u32> = (0..1000).map(|r| r * 2).collect();
        let (result, stored, attempts) = run(&rows, None);
        assert_eq!(result, Ok(vec![]));
        assert_eq!((stored, attempts), (rows, 1));
        let (result, stored, attempts) = run(&[], None);
        assert_eq!((result, stored, attempts), (Ok(vec![]), vec![], 0));
    }

    #[test]
    fn refused_rows_stand_alone_and_every_other_row_is_written_once() {
        let mut rows: Vec<u32> = (0..1000).map(|r| r * 2).collect();
        rows[0] = 1;
        rows[417] = 3;
        rows[999] = 5;
        let (result, mut stored, attempts) = run(&rows, None);
        let refused = result.unwrap();
        assert_eq!(
            refused,
            vec![(0, Refusal::Content(1)), (417, Refusal::Content(3)), (999, Refusal::Content(5))]
        );
        stored.sort_unstable();
        let mut healthy: Vec<u32> = rows.iter().copied().filter(|r| r % 2 == 0).collect();
        healthy.sort_unstable();
        assert_eq!(stored, healthy, "each healthy row once");
        assert!(attempts <= 3 * 2 * 10 + 1, "about 2·log2(n) attempts per bad row: {attempts}");
    }

    #[test]
    fn every_row_refused() {
        let rows = [1, 3, 5, 7, 9];
        let (result, stored, attempts) = run(&rows, None);
        assert_eq!(result.unwrap().iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert!(stored.is_empty());
        assert_eq!(attempts, 2 * rows.len() - 1);
    }

    #[test]
    fn an_error_that_is_no_rows_fault_stops_the_search() {
        let rows = [2, 1, 4, 6];
        let (result, _, attempts) = run(&rows, Some(2));
        assert_eq!(result, Err(Refusal::Away));
        assert_eq!(attempts, 2);
    }
}
