//! `topology apply`, `check` and `remove` against the real broker.

mod common;

use std::time::Duration;

use pulsewatch::topology::{self, Drift, Topology};
use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};

#[test]
fn apply_creates_what_is_missing_twice_changes_nothing_and_remove_deletes_it() {
    let config = common::isolated_config("topology_apply");
    let declared = Topology::builtin();
    common::runtime().block_on(async {
        let before = topology::check(&config.kafka, &declared).await.unwrap();
        assert_eq!(
            before.drift.len(),
            declared.topics.len(),
            "every topic is missing at first: {:?}",
            before.drift
        );
        assert!(before.drift.iter().all(|d| matches!(d, Drift::Missing { .. })));

        let first = topology::apply(&config.kafka, &declared).await.unwrap();
        let mut created = first.created.clone();
        created.sort();
        let mut expected: Vec<String> = declared.topics.iter().map(|t| config.kafka.name(&t.name)).collect();
        expected.sort();
        assert_eq!(created, expected);
        assert!(first.drift.is_empty(), "{:?}", first.drift);
        // Created topics are usable once apply returns: every partition has its leader.
        let admin = topology::admin_client(&config.kafka).unwrap();
        let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(30)).unwrap();
        for spec in &declared.topics {
            let name = config.kafka.name(&spec.name);
            let topic = metadata.topics().iter().find(|t| t.name() == name).expect("created");
            assert_eq!(topic.partitions().len(), spec.partitions as usize, "{name}");
            for p in topic.partitions() {
                assert!(p.leader() >= 0 && p.error().is_none(), "{name} partition {} has no leader", p.id());
            }
        }

        let second = topology::apply(&config.kafka, &declared).await.unwrap();
        assert!(second.created.is_empty(), "second apply created {:?}", second.created);
        assert!(second.drift.is_empty(), "{:?}", second.drift);
        assert_eq!(second.unchanged.len(), declared.topics.len());

        let check = topology::check(&config.kafka, &declared).await.unwrap();
        assert!(check.drift.is_empty(), "{:?}", check.drift);

        // Removed: every topic of the prefix goes (deletion completes in the background).
        let mut removed = topology::remove(&config.kafka, &declared).await.unwrap();
        removed.sort();
        assert_eq!(removed, expected);
        let mut missing = 0;
        for _ in 0..50 {
            let drift = topology::check(&config.kafka, &declared).await.unwrap().drift;
            missing = drift.iter().filter(|d| matches!(d, Drift::Missing { .. })).count();
            if missing == declared.topics.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(missing, declared.topics.len(), "every topic is gone");
    });
}

#[test]
fn a_changed_setting_is_reported_as_drift() {
    let config = common::isolated_config("topology_drift");
    let declared = Topology::builtin();
    common::runtime().block_on(async {
        topology::apply(&config.kafka, &declared).await.unwrap();
        let alerts = config.kafka.name("alerts");
        set_by_hand(&config, &alerts, &[("retention.ms", "3600000")]).await;

        let drift = drift_once(&config, &declared, |d| !d.is_empty()).await;
        assert_eq!(
            drift,
            vec![Drift::Config {
                topic: alerts.clone(),
                key: "retention.ms".into(),
                declared: "2592000000".into(),
                actual: Some("3600000".into()),
            }]
        );
        // apply reports it too, and does not paper over it.
        let report = topology::apply(&config.kafka, &declared).await.unwrap();
        assert_eq!(report.drift.len(), 1, "{:?}", report.drift);
        assert!(report.created.is_empty());
    });
}

#[test]
fn apply_with_alter_sets_the_declared_settings_and_keeps_the_others() {
    let config = common::isolated_config("topology_alter");
    let declared = Topology::builtin();
    common::runtime().block_on(async {
        topology::apply(&config.kafka, &declared).await.unwrap();
        // A cluster made before the declaration changed, with a setting of its operator's.
        let app_state = config.kafka.name("app-state");
        let before =
            [("cleanup.policy", "compact"), ("segment.ms", "3600000"), ("max.message.bytes", "2000000")];
        set_by_hand(&config, &app_state, &before).await;
        let drift = drift_once(&config, &declared, |d| !d.is_empty()).await;
        assert!(
            drift.iter().any(|d| matches!(d, Drift::Config { key, .. } if key == "segment.ms")),
            "{drift:?}"
        );

        let report = topology::apply_and_alter(&config.kafka, &declared).await.unwrap();
        assert_eq!(report.altered, vec![app_state.clone()]);
        assert!(report.drift.is_empty(), "{:?}", report.drift);
        let left = drift_once(&config, &declared, <[Drift]>::is_empty).await;
        assert!(left.is_empty(), "{left:?}");
        let admin = topology::admin_client(&config.kafka).unwrap();
        let described = admin
            .describe_configs([&ResourceSpecifier::Topic(&app_state)], &AdminOptions::new())
            .await
            .unwrap();
        let resource = described.into_iter().next().unwrap().unwrap();
        let kept = resource.get("max.message.bytes").and_then(|e| e.value.clone());
        assert_eq!(kept.as_deref(), Some("2000000"), "the operator's setting is kept");
    });
}

/// Sets `topic`'s topic-level settings to `set` (AlterConfigs: the others are dropped), as
/// an operator would by hand.
async fn set_by_hand(config: &pulsewatch::config::Config, topic: &str, set: &[(&str, &str)]) {
    let admin = topology::admin_client(&config.kafka).unwrap();
    let change = set.iter().fold(AlterConfig::new(ResourceSpecifier::Topic(topic)), |c, (k, v)| c.set(k, v));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.alter_configs([&change], &opts).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

/// The drift `check` reports once `settled` holds of it (a broker applies a setting a
/// moment after it answers), or after 10 s.
async fn drift_once(
    config: &pulsewatch::config::Config,
    declared: &Topology,
    settled: impl Fn(&[Drift]) -> bool,
) -> Vec<Drift> {
    let mut drift = Vec::new();
    for _ in 0..50 {
        drift = topology::check(&config.kafka, declared).await.unwrap().drift;
        if settled(&drift) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drift
}
