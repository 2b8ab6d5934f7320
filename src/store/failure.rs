//! What a failed statement means: wait and retry, set the offending row aside, or stop.
//!
//! PostgreSQL says why it refused a statement with a SQLSTATE. A record whose content it
//! refuses (a NUL in a string, a number out of range, a check it fails) is refused again on
//! every retry, so retrying it would stop the sink for good; a database that is away, shutting
//! down or lost a race is worth waiting for.

/// How a failed statement is to be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The same statement may succeed later: the connection or the server is away,
    /// overloaded or shutting down, a serialization failure or deadlock, or a row found no
    /// partition (one dropped since the sink created it; it is created again).
    Transient,
    /// The database refused a row's content; it will refuse it again.
    Content,
    /// Anything else (a missing table, a permission, a statement that is wrong): needs a person.
    Fatal,
}

/// What the server (or the client library) reported about a failed statement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Diagnosis<'a> {
    /// The SQLSTATE, if the server answered at all.
    pub sqlstate: Option<&'a str>,
    /// The constraint the row violated, if the error names one.
    pub constraint: Option<&'a str>,
    /// Whether the connection is gone.
    pub connection_closed: bool,
}

/// SQLSTATE classes worth waiting for: connection exception, transaction rollback
/// (serialization failure, deadlock), insufficient resources, operator intervention.
const TRANSIENT_CLASSES: [&str; 4] = ["08", "40", "53", "57"];

/// SQLSTATE classes a row's content causes: data exception, integrity constraint violation.
const CONTENT_CLASSES: [&str; 2] = ["22", "23"];

/// program_limit_exceeded: a row or a value too big (an index row, a jsonb document).
const PROGRAM_LIMIT_EXCEEDED: &str = "54000";

/// check_violation: also raised, without a constraint name, for a row no partition takes.
const CHECK_VIOLATION: &str = "23514";

/// Classifies a failed statement.
pub fn classify(d: &Diagnosis<'_>) -> Failure {
    let Some(code) = d.sqlstate else {
        // No answer from the server: an I/O error, a timeout.
        return Failure::Transient;
    };
    let class = code.get(..2).unwrap_or(code);
    if d.connection_closed || TRANSIENT_CLASSES.contains(&class) {
        Failure::Transient
    } else if code == CHECK_VIOLATION && d.constraint.is_none() {
        // "no partition of relation ... found for row": the partition is missing, not the
        // row wrong; rows outside the retention window never get this far.
        Failure::Transient
    } else if CONTENT_CLASSES.contains(&class) || code == PROGRAM_LIMIT_EXCEEDED {
        Failure::Content
    } else {
        Failure::Fatal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(code: &str) -> Failure {
        classify(&Diagnosis { sqlstate: Some(code), constraint: Some("c"), ..Diagnosis::default() })
    }

    #[test]
    fn a_rows_content_is_not_retried() {
        for code in [
            "22021", // character_not_in_repertoire: a NUL in text
            "22P05", // untranslatable_character: \u0000 in jsonb
            "22003", // numeric_value_out_of_range
            "22007", // invalid_datetime_format
            "22008", // datetime_field_overflow
            "22P02", // invalid_text_representation
            "22001", // string_data_right_truncation
            "23502", // not_null_violation
            "23505", // unique_violation
            "23514", // check_violation, of a named constraint
            "54000", // program_limit_exceeded: row too big
        ] {
            assert_eq!(of(code), Failure::Content, "{code}");
        }
    }

    #[test]
    fn an_unavailable_database_is_waited_for() {
        for code in [
            "08006", // connection_failure
            "08001", // sqlclient_unable_to_establish_sqlconnection
            "40001", // serialization_failure
            "40P01", // deadlock_detected
            "53300", // too_many_connections
            "53100", // disk_full
            "57P01", // admin_shutdown
            "57P03", // cannot_connect_now
            "57014", // query_canceled
        ] {
            assert_eq!(of(code), Failure::Transient, "{code}");
        }
        assert_eq!(classify(&Diagnosis::default()), Failure::Transient, "no answer at all");
        let closed = Diagnosis { sqlstate: Some("22021"), connection_closed: true, ..Diagnosis::default() };
        assert_eq!(classify(&closed), Failure::Transient, "a closed connection proves nothing about the row");
    }

    #[test]
    fn a_row_without_its_partition_waits_for_the_partition() {
        let no_partition = Diagnosis { sqlstate: Some("23514"), ..Diagnosis::default() };
        assert_eq!(classify(&no_partition), Failure::Transient);
    }

    #[test]
    fn what_needs_a_person_stops() {
        for code in [
            "42P01", // undefined_table: the schema is not migrated
            "42501", // insufficient_privilege
            "42804", // datatype_mismatch: a statement that is wrong
            "54001", // statement_too_complex: the statement, not a row
            "XX000", // internal_error
            "25P02", // in_failed_sql_transaction
        ] {
            assert_eq!(of(code), Failure::Fatal, "{code}");
        }
    }
}
