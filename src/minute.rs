//! Event-time minutes: the unit rollups are closed in and trends are sampled by.

/// The length of a minute, ms.
pub const MINUTE_MS: i64 = 60_000;

/// The start of the minute holding `t` (ms since the epoch; before 1970 too).
pub fn minute_of(t: i64) -> i64 {
    t.div_euclid(MINUTE_MS) * MINUTE_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_start_on_the_minute() {
        assert_eq!(minute_of(0), 0);
        assert_eq!(minute_of(59_999), 0);
        assert_eq!(minute_of(60_000), 60_000);
        assert_eq!(minute_of(-1), -60_000);
    }
}
