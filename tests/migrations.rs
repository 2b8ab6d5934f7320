//! `migrate` and `partitions maintain` against the real PostgreSQL.

mod common;

use chrono::{Days, Utc};
use pulsewatch::store::{self, migrate::MIGRATIONS, partitions};
use tokio_postgres::Client;

async fn objects(client: &Client, schema: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT c.relname::text, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn partitions_of(client: &Client, schema: &str, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace
             WHERE n.nspname = $1 AND p.relname = $2 ORDER BY 1",
            &[&schema, &table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn drop_schema(client: &Client, schema: &str) {
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await.unwrap();
}

#[test]
fn migrating_twice_changes_nothing() {
    let config = common::isolated_config("migrate_twice");
    let schema = &config.postgres.schema;
    common::runtime().block_on(async {
        let mut client = store::connect(&config.postgres).await.unwrap();
        let applied = store::migrate::migrate(&mut client, schema).await.unwrap();
        assert_eq!(applied, MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>());
        let after_first = objects(&client, schema).await;
        for table in ["heartbeat_event", "metric_rollup_1m", "alert_event", "application", "sink_offset"] {
            assert!(after_first.iter().any(|(n, _)| n == table), "table {table} missing");
        }
        for view in ["current_health", "open_alerts", "leak_suspects"] {
            assert!(after_first.iter().any(|(n, k)| n == view && k == "v"), "view {view} missing");
        }
        let again = store::migrate::migrate(&mut client, schema).await.unwrap();
        assert!(again.is_empty(), "second run applied {again:?}");
        assert_eq!(objects(&client, schema).await, after_first);
        let recorded: i64 = client
            .query_one(&format!("SELECT count(*) FROM \"{schema}\".schema_migration"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(recorded as usize, MIGRATIONS.len());
        drop_schema(&client, schema).await;
    });
}

#[test]
fn partitions_exist_ahead_and_expired_ones_are_dropped() {
    let config = common::isolated_config("partitions");
    let schema = &config.postgres.schema;
    let retention = &config.retention;
    common::runtime().block_on(async {
        let mut client = store::connect(&config.postgres).await.unwrap();
        store::migrate::migrate(&mut client, schema).await.unwrap();
        let today = Utc::now().date_naive();
        partitions::maintain(&mut client, schema, retention, today).await.unwrap();
        let raw = partitions_of(&client, schema, "heartbeat_event").await;
        for ahead in 0..=u64::from(retention.days_ahead) {
            let day = today + Days::new(ahead);
            let name = format!("heartbeat_event_p{}", day.format("%Y%m%d"));
            assert!(raw.contains(&name), "{name} missing from {raw:?}");
        }
        assert!(!partitions_of(&client, schema, "metric_rollup_1m").await.is_empty());
        assert!(!partitions_of(&client, schema, "alert_event").await.is_empty());

        // A row lands in the partition of its day.
        client
            .execute(
                &format!(
                    "INSERT INTO \"{schema}\".heartbeat_event (app_id, instance_id, seq, sent_at, interval_ms, status,
                     kafka_partition, kafka_offset) VALUES ('a', 'i', 1, now(), 5000, 'OK', 0, 0)"
                ),
                &[],
            )
            .await
            .unwrap();

        // Ten days later, today's raw partition is past the 7-day retention; rollups are kept.
        let later = today + Days::new(10);
        let report = partitions::maintain(&mut client, schema, retention, later).await.unwrap();
        let todays = format!("heartbeat_event_p{}", today.format("%Y%m%d"));
        assert!(report.dropped.contains(&todays), "{todays} not dropped: {:?}", report.dropped);
        assert!(!report.dropped.iter().any(|p| p.starts_with("metric_rollup_1m")), "{:?}", report.dropped);
        let raw_later = partitions_of(&client, schema, "heartbeat_event").await;
        assert!(!raw_later.contains(&todays));
        let ahead = format!("heartbeat_event_p{}", (later + Days::new(3)).format("%Y%m%d"));
        assert!(raw_later.contains(&ahead), "{ahead} not created");
        let rows: i64 = client
            .query_one(&format!("SELECT count(*) FROM \"{schema}\".heartbeat_event"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0, "the expired partition's rows went with it");

        // Maintaining again on the same day changes nothing.
        let again = partitions::maintain(&mut client, schema, retention, later).await.unwrap();
        assert_eq!(again, partitions::MaintainReport::default());
        drop_schema(&client, schema).await;
    });
}

#[test]
fn sessions_creating_the_same_partition_at_once_all_succeed() {
    // Two sink instances starting together create the month's alert partition at once; the
    // loser of that race used to stop with "relation ... already exists".
    let config = common::isolated_config("partition_race");
    let schema = &config.postgres.schema;
    common::runtime().block_on(async {
        let mut client = store::connect(&config.postgres).await.unwrap();
        store::migrate::migrate(&mut client, schema).await.unwrap();
        let plan = partitions::plans(&config.retention)[2];
        for round in 0..5u64 {
            let month = Utc::now().date_naive() + Days::new(400 + 31 * round);
            let mut sessions = Vec::new();
            for _ in 0..6 {
                sessions.push(store::connect(&config.postgres).await.unwrap());
            }
            let creates = sessions.iter().map(|c| partitions::ensure(c, schema, &plan, month));
            for created in futures::future::join_all(creates).await {
                created.expect("every session finds the partition, created by it or another");
            }
        }
        drop_schema(&client, schema).await;
    });
}
