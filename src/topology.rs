//! The Kafka topics pulsewatch declares (`topology/topics.toml`), their creation, and drift
//! detection against what the cluster actually has.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewTopic, OwnedResourceSpecifier,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde::Deserialize;
use thiserror::Error;

use crate::config::KafkaConfig;

/// The topology shipped with pulsewatch.
pub const BUILTIN: &str = include_str!("../topology/topics.toml");

/// Base names of the topics, as the rest of the code refers to them.
pub mod names {
    pub const HEARTBEATS: &str = "heartbeats";
    pub const ALERTS: &str = "alerts";
    pub const APP_STATE: &str = "app-state";
    pub const METRICS_1M: &str = "metrics-1m";
    pub const HEARTBEATS_DLQ: &str = "heartbeats-dlq";
    pub const ALERT_ACKS: &str = "alert-acks";
}

/// The full names of the pipeline's topics under a prefix, as the stages use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub heartbeats: String,
    pub alerts: String,
    pub app_state: String,
    pub metrics: String,
    pub heartbeats_dlq: String,
    pub alert_acks: String,
}

impl Topics {
    pub fn of(kafka: &KafkaConfig) -> Topics {
        Topics {
            heartbeats: kafka.name(names::HEARTBEATS),
            alerts: kafka.name(names::ALERTS),
            app_state: kafka.name(names::APP_STATE),
            metrics: kafka.name(names::METRICS_1M),
            heartbeats_dlq: kafka.name(names::HEARTBEATS_DLQ),
            alert_acks: kafka.name(names::ALERT_ACKS),
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum TopologyError {
    #[error("topology file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic} failed: {code}")]
    Create { topic: String, code: RDKafkaErrorCode },
    #[error("describing topic {topic} failed: {problem}")]
    Describe { topic: String, problem: String },
    #[error("setting the declared config of topic {topic} failed: {code}")]
    Alter { topic: String, code: RDKafkaErrorCode },
    #[error("deleting topic {topic} failed: {code}")]
    Delete { topic: String, code: RDKafkaErrorCode },
    #[error("topic {topic} was created but {leaderless} of its partitions have no leader after {secs} s")]
    NoLeader { topic: String, leaderless: usize, secs: u64 },
}

/// One declared topic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Base name; the configured prefix is put in front of it.
    pub name: String,
    pub partitions: i32,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// Every declared topic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    #[serde(rename = "topic")]
    pub topics: Vec<TopicSpec>,
}

fn default_replication_factor() -> i32 {
    1
}

/// A difference between what is declared and what the cluster has.
#[derive(Debug, Clone, PartialEq)]
pub enum Drift {
    Missing { topic: String },
    Partitions { topic: String, declared: i32, actual: i32 },
    Config { topic: String, key: String, declared: String, actual: Option<String> },
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::Missing { topic } => write!(f, "{topic}: missing"),
            Drift::Partitions { topic, declared, actual } => {
                write!(f, "{topic}: {actual} partitions, declared {declared}")
            }
            Drift::Config { topic, key, declared, actual } => {
                write!(f, "{topic}: {key} is {}, declared {declared}", actual.as_deref().unwrap_or("unset"))
            }
        }
    }
}

/// What `apply` or `check` found and did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    pub created: Vec<String>,
    /// Existing topics whose declared settings were set (`apply_and_alter`).
    pub altered: Vec<String>,
    pub unchanged: Vec<String>,
    pub drift: Vec<Drift>,
}

impl Topology {
    pub fn builtin() -> Topology {
        Topology::parse(BUILTIN, "topology/topics.toml").expect("the shipped topology parses")
    }

    pub fn from_file(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TopologyError::Parse { path: path.display().to_string(), message: e.to_string() })?;
        Topology::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, path: &str) -> Result<Topology, TopologyError> {
        let parse_err = |message: String| TopologyError::Parse { path: path.to_owned(), message };
        let t: Topology = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        for spec in &t.topics {
            if spec.partitions < 1 {
                return Err(parse_err(format!("topic {}: partitions must be at least 1", spec.name)));
            }
        }
        Ok(t)
    }

    pub fn topic(&self, base: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|t| t.name == base)
    }
}

/// An admin client for the configured cluster.
pub fn admin_client(kafka: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    kafka.client_config().create()
}

/// Creates the missing topics and reports drift on the existing ones.
pub async fn apply(kafka: &KafkaConfig, topology: &Topology) -> Result<Report, TopologyError> {
    let admin = admin_client(kafka)?;
    let mut report = inspect(&admin, kafka, topology).await?;
    let missing: Vec<String> = report
        .drift
        .iter()
        .filter_map(|d| match d {
            Drift::Missing { topic } => Some(topic.clone()),
            _ => None,
        })
        .collect();
    report.drift.retain(|d| !matches!(d, Drift::Missing { .. }));
    let specs: Vec<(&String, &TopicSpec)> = missing
        .iter()
        .map(|full| {
            let spec = topology.topics.iter().find(|t| kafka.name(&t.name) == *full).expect("declared");
            (full, spec)
        })
        .collect();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|(full, spec)| {
            let mut t =
                NewTopic::new(full, spec.partitions, TopicReplication::Fixed(topology.replication_factor));
            for (k, v) in &spec.config {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    if !new_topics.is_empty() {
        let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        for result in admin.create_topics(new_topics.iter(), &opts).await? {
            match result {
                Ok(topic) => report.created.push(topic),
                // Another instance created it between our look and our create: fine.
                Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => report.unchanged.push(topic),
                Err((topic, code)) => return Err(TopologyError::Create { topic, code }),
            }
        }
        wait_for_leaders(&admin, &specs).await?;
    }
    Ok(report)
}

/// [`apply`], then sets the declared settings on existing topics whose settings differ,
/// keeping their other topic-level settings (the broker's AlterConfigs replaces a topic's
/// whole set, so the set sent is theirs with the declared ones over it). Partitions are
/// never changed: that drift stays in the report.
pub async fn apply_and_alter(kafka: &KafkaConfig, topology: &Topology) -> Result<Report, TopologyError> {
    let mut report = apply(kafka, topology).await?;
    let mut drifted: Vec<String> = report
        .drift
        .iter()
        .filter_map(|d| match d {
            Drift::Config { topic, .. } => Some(topic.clone()),
            _ => None,
        })
        .collect();
    drifted.sort();
    drifted.dedup();
    if drifted.is_empty() {
        return Ok(report);
    }
    let admin = admin_client(kafka)?;
    let sets = settings_to_set(&admin, kafka, topology, &drifted).await?;
    let changes: Vec<AlterConfig<'_>> = drifted
        .iter()
        .zip(&sets)
        .map(|(topic, set)| {
            set.iter().fold(AlterConfig::new(ResourceSpecifier::Topic(topic)), |c, (k, v)| c.set(k, v))
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    for result in admin.alter_configs(changes.iter(), &opts).await? {
        result.map_err(|(resource, code)| {
            let topic = match resource {
                OwnedResourceSpecifier::Topic(name) => name,
                other => format!("{other:?}"),
            };
            TopologyError::Alter { topic, code }
        })?;
    }
    report.drift.retain(|d| !matches!(d, Drift::Config { .. }));
    report.altered = drifted;
    Ok(report)
}

/// For each of `topics`: its topic-level settings, with the declared ones over them.
async fn settings_to_set(
    admin: &AdminClient<DefaultClientContext>,
    kafka: &KafkaConfig,
    topology: &Topology,
    topics: &[String],
) -> Result<Vec<BTreeMap<String, String>>, TopologyError> {
    let resources: Vec<ResourceSpecifier<'_>> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let opts = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let described = admin.describe_configs(resources.iter(), &opts).await?;
    let mut sets = Vec::new();
    for (topic, result) in topics.iter().zip(described) {
        let resource = result
            .map_err(|code| TopologyError::Describe { topic: topic.clone(), problem: code.to_string() })?;
        let mut set: BTreeMap<String, String> = resource
            .entries
            .iter()
            .filter(|e| e.source == ConfigSource::DynamicTopic)
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect();
        let spec = topology.topics.iter().find(|t| kafka.name(&t.name) == *topic).expect("declared");
        set.extend(spec.config.iter().map(|(k, v)| (k.clone(), v.clone())));
        sets.push(set);
    }
    Ok(sets)
}

/// Waits until every partition of the topics just created has a leader. The broker answers
/// a create before that; a client that comes at once would be told "not leader for
/// partition", so `apply` returns only once the topics can be used.
async fn wait_for_leaders(
    admin: &AdminClient<DefaultClientContext>,
    created: &[(&String, &TopicSpec)],
) -> Result<(), TopologyError> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let metadata = tokio::task::block_in_place(|| admin.inner().fetch_metadata(None, TIMEOUT))?;
        let leaderless = |(full, spec): &(&String, &TopicSpec)| {
            let led = metadata.topics().iter().find(|t| t.name() == full.as_str()).map_or(0, |t| {
                t.partitions().iter().filter(|p| p.leader() >= 0 && p.error().is_none()).count()
            });
            (spec.partitions as usize).saturating_sub(led)
        };
        let Some((full, spec)) = created.iter().find(|c| leaderless(c) > 0) else {
            return Ok(());
        };
        if std::time::Instant::now() >= deadline {
            return Err(TopologyError::NoLeader {
                topic: (*full).clone(),
                leaderless: leaderless(&(full, spec)),
                secs: TIMEOUT.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes the topology's topics under the configured prefix (those that exist); returns
/// the names deleted. For throwaway topics under a prefix of their own: a benchmark's, or a
/// test's once it passed.
pub async fn remove(kafka: &KafkaConfig, topology: &Topology) -> Result<Vec<String>, TopologyError> {
    let admin = admin_client(kafka)?;
    let names: Vec<String> = topology.topics.iter().map(|t| kafka.name(&t.name)).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let mut deleted = Vec::new();
    for result in admin.delete_topics(&names, &opts).await? {
        match result {
            Ok(topic) => deleted.push(topic),
            Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => return Err(TopologyError::Delete { topic, code }),
        }
    }
    Ok(deleted)
}

/// Reports drift (missing topics included) without changing anything.
pub async fn check(kafka: &KafkaConfig, topology: &Topology) -> Result<Report, TopologyError> {
    let admin = admin_client(kafka)?;
    inspect(&admin, kafka, topology).await
}

async fn inspect(
    admin: &AdminClient<DefaultClientContext>,
    kafka: &KafkaConfig,
    topology: &Topology,
) -> Result<Report, TopologyError> {
    let metadata = tokio::task::block_in_place(|| admin.inner().fetch_metadata(None, TIMEOUT))?;
    let mut report = Report::default();
    let mut existing = Vec::new();
    for spec in &topology.topics {
        let full = kafka.name(&spec.name);
        match metadata.topics().iter().find(|t| t.name() == full) {
            None => report.drift.push(Drift::Missing { topic: full }),
            Some(t) => {
                let actual = t.partitions().len() as i32;
                if actual != spec.partitions {
                    report.drift.push(Drift::Partitions {
                        topic: full.clone(),
                        declared: spec.partitions,
                        actual,
                    });
                }
                existing.push((full, spec));
            }
        }
    }
    if existing.is_empty() {
        return Ok(report);
    }
    let resources: Vec<ResourceSpecifier<'_>> =
        existing.iter().map(|(full, _)| ResourceSpecifier::Topic(full.as_str())).collect();
    let opts = AdminOptions::new().request_timeout(Some(TIMEOUT));
    let described = admin.describe_configs(resources.iter(), &opts).await?;
    for ((full, spec), result) in existing.iter().zip(described) {
        let resource = result
            .map_err(|code| TopologyError::Describe { topic: full.clone(), problem: code.to_string() })?;
        let before = report.drift.len();
        for (key, declared) in &spec.config {
            let actual = resource.get(key).and_then(|e| e.value.clone());
            if actual.as_deref() != Some(declared.as_str()) {
                report.drift.push(Drift::Config {
                    topic: full.clone(),
                    key: key.clone(),
                    declared: declared.clone(),
                    actual,
                });
            }
        }
        let partitions_drift = report.drift[..before]
            .iter()
            .any(|d| matches!(d, Drift::Partitions { topic, .. } if topic == full));
        if report.drift.len() == before && !partitions_drift {
            report.unchanged.push(full.clone());
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_declares_every_topic_of_the_design() {
        let t = Topology::builtin();
        for name in [
            names::HEARTBEATS,
            names::ALERTS,
            names::APP_STATE,
            names::METRICS_1M,
            names::HEARTBEATS_DLQ,
            names::ALERT_ACKS,
        ] {
            assert!(t.topic(name).is_some(), "{name} not declared");
        }
        assert_eq!(t.topic(names::APP_STATE).unwrap().config["cleanup.policy"], "compact");
    }

    #[test]
    fn rejects_unknown_keys_and_zero_partitions() {
        assert!(Topology::parse("[[topic]]\nname='a'\npartitions=1\nfoo=1\n", "x").is_err());
        assert!(Topology::parse("[[topic]]\nname='a'\npartitions=0\n", "x").is_err());
    }
}
