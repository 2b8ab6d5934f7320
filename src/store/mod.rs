//! PostgreSQL: connecting, the schema's migrations ([`migrate`]), its time partitions
//! ([`partitions`]) and what a failed statement means ([`failure`]).

pub mod failure;
pub mod migrate;
pub mod partitions;

use thiserror::Error;
use tokio_postgres::{Client, NoTls};

use crate::config::{PostgresConfig, is_sql_identifier};
pub use failure::{Diagnosis, Failure};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("{what}: {source}")]
    Query {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "migration {version} ({name}) was changed after it was applied (checksum {applied} in the database, {shipped} shipped)"
    )]
    ChecksumMismatch { version: i32, name: String, applied: String, shipped: String },
    #[error("schema name {0:?} is not a plain lower-case SQL identifier")]
    BadSchema(String),
    #[error("database pool: {0}")]
    Pool(String),
}

impl StoreError {
    /// Whether to retry, set the row aside, or stop (see [`failure::classify`]).
    pub fn failure(&self) -> Failure {
        match self {
            StoreError::Connect(_) | StoreError::Pool(_) => Failure::Transient,
            StoreError::Query { source, .. } => failure::classify(&Diagnosis {
                sqlstate: source.code().map(|c| c.code()),
                constraint: source.as_db_error().and_then(|d| d.constraint()),
                connection_closed: source.is_closed(),
            }),
            _ => Failure::Fatal,
        }
    }

    /// Whether retrying later may succeed (the database is down or overloaded), as opposed
    /// to a problem that needs a person or a row the database refuses.
    pub fn is_transient(&self) -> bool {
        self.failure() == Failure::Transient
    }

    /// Whether the database refused a row's content: retrying it fails the same way.
    pub fn is_content(&self) -> bool {
        self.failure() == Failure::Content
    }

    /// The server's own words, for a dead letter: its message, detail and SQLSTATE.
    pub fn server_message(&self) -> String {
        let StoreError::Query { source, .. } = self else { return self.to_string() };
        match source.as_db_error() {
            Some(db) => match db.detail() {
                Some(detail) => format!("{}: {detail} (SQLSTATE {})", db.message(), db.code().code()),
                None => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
            },
            None => self.to_string(),
        }
    }
}

/// Adds what a failing statement was meant to do.
pub(crate) trait QueryContext<T> {
    fn doing(self, what: impl Into<String>) -> Result<T, StoreError>;
}

impl<T> QueryContext<T> for Result<T, tokio_postgres::Error> {
    fn doing(self, what: impl Into<String>) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Query { what: what.into(), source })
    }
}

/// Opens one connection (its driver runs on a spawned task).
pub async fn connect(config: &PostgresConfig) -> Result<Client, StoreError> {
    let (client, connection) =
        tokio_postgres::connect(&config.url, NoTls).await.map_err(StoreError::Connect)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// A connection pool (deadpool) for the stages: broken connections are replaced on checkout,
/// and waiting for a connection or creating one times out instead of hanging.
pub fn pool(config: &PostgresConfig) -> Result<deadpool_postgres::Pool, StoreError> {
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
    let pg: tokio_postgres::Config = config.url.parse().map_err(StoreError::Connect)?;
    let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let timeout = Some(std::time::Duration::from_secs(10));
    Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts { wait: timeout, create: timeout, recycle: timeout })
        .build()
        .map_err(|e| StoreError::Pool(e.to_string()))
}

/// Takes a connection from the pool.
pub async fn checkout(pool: &deadpool_postgres::Pool) -> Result<deadpool_postgres::Object, StoreError> {
    pool.get().await.map_err(|e| StoreError::Pool(e.to_string()))
}

/// The schema name, double-quoted for SQL, after checking it is a plain identifier.
pub fn quoted_schema(schema: &str) -> Result<String, StoreError> {
    if is_sql_identifier(schema) {
        Ok(format!("\"{schema}\""))
    } else {
        Err(StoreError::BadSchema(schema.to_owned()))
    }
}
