//! Numbered SQL migrations from `migrations/`, applied once each into the configured schema
//! and recorded in its `schema_migration` table.

use tokio_postgres::Client;

use super::{QueryContext, StoreError, quoted_schema};

/// One shipped migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. A new file in `migrations/` is added here.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "tables", sql: include_str!("../../migrations/0001_tables.sql") },
    Migration { version: 2, name: "views", sql: include_str!("../../migrations/0002_views.sql") },
    Migration { version: 3, name: "alert_ack", sql: include_str!("../../migrations/0003_alert_ack.sql") },
    Migration {
        version: 4,
        name: "application_fillfactor",
        sql: include_str!("../../migrations/0004_application_fillfactor.sql"),
    },
];

impl Migration {
    /// FNV-1a of the SQL text: enough to notice an applied migration edited afterwards.
    pub fn checksum(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.sql.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// Applies the migrations not yet applied to `schema`; returns the versions it applied.
///
/// Each migration runs in its own transaction, under an advisory lock, so two instances
/// starting at once apply each migration exactly once.
pub async fn migrate(client: &mut Client, schema: &str) -> Result<Vec<i32>, StoreError> {
    let q = quoted_schema(schema)?;
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {q}"))
        .await
        .doing(format!("creating schema {schema}"))?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {q}.schema_migration (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 checksum text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())"
        ))
        .await
        .doing("creating schema_migration")?;
    let mut applied = Vec::new();
    for m in MIGRATIONS {
        let tx = client.transaction().await.doing("beginning a migration")?;
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&format!("pulsewatch.migrate.{schema}")])
            .await
            .doing("taking the migration lock")?;
        let row = tx
            .query_opt(
                &format!("SELECT checksum FROM {q}.schema_migration WHERE version = $1"),
                &[&m.version],
            )
            .await
            .doing("reading schema_migration")?;
        if let Some(row) = row {
            let recorded: String = row.get(0);
            if recorded != m.checksum() {
                return Err(StoreError::ChecksumMismatch {
                    version: m.version,
                    name: m.name.to_owned(),
                    applied: recorded,
                    shipped: m.checksum(),
                });
            }
            continue;
        }
        tx.batch_execute(&format!("SET LOCAL search_path TO {q}")).await.doing("setting search_path")?;
        tx.batch_execute(m.sql).await.doing(format!("applying migration {} ({})", m.version, m.name))?;
        tx.execute(
            &format!("INSERT INTO {q}.schema_migration (version, name, checksum) VALUES ($1, $2, $3)"),
            &[&m.version, &m.name, &m.checksum()],
        )
        .await
        .doing("recording the migration")?;
        tx.commit().await.doing(format!("committing migration {}", m.version))?;
        applied.push(m.version);
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_increasing_and_files_are_numbered_alike() {
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].version < pair[1].version);
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let expected: Vec<String> =
            MIGRATIONS.iter().map(|m| format!("{:04}_{}.sql", m.version, m.name)).collect();
        assert_eq!(files, expected, "every file in migrations/ is listed in MIGRATIONS");
    }
}
