//! The `pulsewatch` binary as an operator runs it.

mod common;

use std::process::{Command, Output};

fn pulsewatch(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pulsewatch"));
    cmd.args(args).env("RUST_LOG", "warn");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PULSEWATCH_")) {
        cmd.env_remove(k);
    }
    // Run outside the repository so ./pulsewatch.toml is not picked up.
    cmd.current_dir(std::env::temp_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn config_show_prints_overrides_with_secrets_masked() {
    let out = pulsewatch(
        &["config", "show"],
        &[
            ("PULSEWATCH_POSTGRES_URL", "postgres://pw:hunter2@db:5432/x"),
            ("PULSEWATCH_KAFKA_TOPIC_PREFIX", "prod."),
            ("PULSEWATCH_HTTP_API_TOKENS", "tok-secret-a,tok-secret-b"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("topic_prefix = \"prod.\""), "{shown}");
    assert!(shown.contains("postgres://pw:****@db:5432/x"), "{shown}");
    assert!(!shown.contains("hunter2"));
    assert!(shown.contains("api_tokens = [\n    \"****\",\n    \"****\",\n]"), "{shown}");
    assert!(!shown.contains("tok-secret"), "{shown}");
}

#[test]
fn a_bad_config_names_the_key_and_the_problem() {
    let out = pulsewatch(&["config", "show"], &[("PULSEWATCH_HTTP_LISTEN", "everywhere")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("http.listen") && err.contains("not an address"), "{err}");

    let out = pulsewatch(&["config", "show"], &[("PULSEWATCH_KAFKA_BROKERZ", "x")]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("PULSEWATCH_KAFKA_BROKERZ"), "{}", text(&out.stderr));

    let file = std::env::temp_dir().join(format!("pulsewatch-cli-{}.toml", std::process::id()));
    std::fs::write(&file, "[postgres]\nschema = 42\n").unwrap();
    let out = pulsewatch(&["--config", file.to_str().unwrap(), "config", "show"], &[]);
    std::fs::remove_file(&file).ok();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("postgres.schema"), "{}", text(&out.stderr));
}

#[test]
fn a_bad_rule_override_is_reported_by_config_show() {
    let file = std::env::temp_dir().join(format!("pulsewatch-cli-rules-{}.toml", std::process::id()));
    std::fs::write(&file, "[[rules.overrides]]\napp = \"batch-*\"\ncpu = { warning = 0.95 }\n").unwrap();
    let out = pulsewatch(&["--config", file.to_str().unwrap(), "config", "show"], &[]);
    std::fs::remove_file(&file).ok();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("rules.overrides[0].cpu") && err.contains("CPU_HIGH"), "{err}");
}

#[test]
fn topology_check_exits_non_zero_until_apply() {
    let config = common::isolated_config("cli_topology");
    let env = [
        ("PULSEWATCH_KAFKA_BROKERS", config.kafka.brokers.as_str()),
        ("PULSEWATCH_KAFKA_TOPIC_PREFIX", config.kafka.topic_prefix.as_str()),
    ];
    let check = pulsewatch(&["topology", "check"], &env);
    assert_eq!(check.status.code(), Some(2), "{}", text(&check.stdout));
    assert!(text(&check.stdout).contains("missing"));
    let apply = pulsewatch(&["topology", "apply"], &env);
    assert!(apply.status.success(), "{}", text(&apply.stderr));
    let declared = pulsewatch::topology::Topology::builtin().topics.len();
    assert_eq!(text(&apply.stdout).matches("created").count(), declared);
    let check = pulsewatch(&["topology", "check"], &env);
    assert!(check.status.success(), "{}", text(&check.stdout));
}
