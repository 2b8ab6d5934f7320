use super::*;

#[test]
fn reads_the_schema_registry_from_the_environment_and_masks_its_password() {
    let url = "http://127.0.0.1:8081/apis/ccompat/v7";
    let c = Config::load(
        None,
        env(&[("PULSEWATCH_SCHEMA_REGISTRY_URL", url), ("PULSEWATCH_SCHEMA_REGISTRY_PASSWORD", "hunter2")]),
    )
    .unwrap();
    assert_eq!(c.schema_registry.url, url);
    assert!(!c.to_masked_toml().contains("hunter2"));
    assert!(!format!("{c:?}").contains("hunter2"));
    let err = Config::load(None, env(&[("PULSEWATCH_SCHEMA_REGISTRY_URL", "localhost:8081")])).unwrap_err();
    assert!(err.to_string().contains("schema_registry.url"), "{err}");
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn load_str(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("pulsewatch-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{:x}.toml", text.len() ^ vars.len() << 16 ^ text.as_ptr() as usize));
    std::fs::write(&path, text).unwrap();
    let result = Config::load(Some(&path), env(vars));
    std::fs::remove_file(&path).ok();
    result
}

#[test]
fn defaults_are_valid() {
    assert_eq!(Config::load(None, env(&[])).unwrap(), Config::default());
}

#[test]
fn the_shipped_file_is_valid_and_documents_every_key() {
    let text = include_str!("../../pulsewatch.toml");
    let config = load_str(text, &[]).unwrap();
    assert_eq!(config, Config::default(), "pulsewatch.toml shows the defaults");
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    for (section, keys) in &defaults {
        assert!(text.contains(&format!("[{section}]")), "section {section} missing");
        for key in keys.as_table().unwrap().keys() {
            let documented =
                text.contains(&format!("\n{key} =")) || text.contains(&format!("[{section}.{key}]"));
            assert!(documented, "key {section}.{key} not documented");
        }
    }
}

#[test]
fn environment_overrides_the_file() {
    let c = load_str(
        "[kafka]\nbrokers = \"file:9092\"\n",
        &[
            ("PULSEWATCH_KAFKA_BROKERS", "env:9092"),
            ("PULSEWATCH_KAFKA_TOPIC_PREFIX", "t1."),
            ("PULSEWATCH_POSTGRES_URL", "postgres://u:secret@db:5432/x"),
            ("PULSEWATCH_POSTGRES_SCHEMA", "test_1"),
            ("PULSEWATCH_POSTGRES_POOL_SIZE", "3"),
            ("PULSEWATCH_HTTP_LISTEN", "0.0.0.0:9000"),
        ],
    )
    .unwrap();
    assert_eq!(c.kafka.brokers, "env:9092");
    assert_eq!(c.kafka.topic_prefix, "t1.");
    assert_eq!(c.postgres.schema, "test_1");
    assert_eq!(c.postgres.pool_size, 3);
    assert_eq!(c.http.listen, "0.0.0.0:9000");
    assert_eq!(c.kafka.name("heartbeats"), "t1.heartbeats");
}

#[test]
fn names_an_unknown_key_in_the_file() {
    let err = load_str("[kafka]\nbrokerz = \"x\"\n", &[]).unwrap_err().to_string();
    assert!(err.contains("kafka") && err.contains("brokerz"), "{err}");
    let err = load_str("[kafak]\n", &[]).unwrap_err().to_string();
    assert!(err.contains("kafak"), "{err}");
}

#[test]
fn names_an_unknown_environment_variable() {
    let err = Config::load(None, env(&[("PULSEWATCH_KAFKA_BROKER", "x")])).unwrap_err().to_string();
    assert!(err.contains("PULSEWATCH_KAFKA_BROKER") && err.contains("kafka.broker"), "{err}");
    let err = Config::load(None, env(&[("PULSEWATCH_NOPE_X", "x")])).unwrap_err().to_string();
    assert!(err.contains("unknown section"), "{err}");
    assert!(
        Config::load(None, env(&[("PULSEWATCH_BENCH_APPS", "5")])).is_ok(),
        "benchmark sizes are not configuration"
    );
}

#[test]
fn names_a_bad_value() {
    let err = Config::load(None, env(&[("PULSEWATCH_POSTGRES_POOL_SIZE", "many")])).unwrap_err().to_string();
    assert!(err.contains("PULSEWATCH_POSTGRES_POOL_SIZE") && err.contains("not an integer"), "{err}");
    let err = Config::load(None, env(&[("PULSEWATCH_HTTP_LISTEN", "localhost")])).unwrap_err().to_string();
    assert!(err.contains("http.listen"), "{err}");
    let err =
        Config::load(None, env(&[("PULSEWATCH_POSTGRES_SCHEMA", "Drop Table")])).unwrap_err().to_string();
    assert!(err.contains("postgres.schema"), "{err}");
    let err = load_str("[postgres]\npool_size = \"x\"\n", &[]).unwrap_err().to_string();
    assert!(err.contains("postgres.pool_size"), "{err}");
    let err = load_str("[retention]\nraw_days = 0\n", &[]).unwrap_err().to_string();
    assert!(err.contains("retention.raw_days"), "{err}");
}

#[test]
fn show_masks_secrets() {
    let mut c = Config::default();
    c.postgres.url = "postgres://app:hunter2@db:5432/pw".into();
    c.kafka.properties.insert("sasl.password".into(), "hunter3".into());
    c.kafka.properties.insert("ssl.ca.location".into(), "/etc/ca.pem".into());
    let shown = c.to_masked_toml();
    assert!(!shown.contains("hunter2") && !shown.contains("hunter3"), "{shown}");
    assert!(shown.contains("postgres://app:****@db:5432/pw"), "{shown}");
    assert!(shown.contains("/etc/ca.pem"), "{shown}");
}

#[test]
fn show_masks_every_connection_string_form() {
    let mut c = Config::default();
    for url in [
        "host=db user=app password='hun ter\\'2' sslpassword=k3y dbname=pw",
        "postgres://db/pw?password=hunter2&sslpassword=k3y&sslmode=require",
    ] {
        c.postgres.url = url.into();
        let shown = c.to_masked_toml();
        assert!(!shown.contains("hun") && !shown.contains("k3y"), "{shown}");
        assert!(shown.contains("dbname=pw") || shown.contains("sslmode=require"), "{shown}");
    }
    for key in ["ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret"] {
        c.kafka.properties.insert(key.into(), "hunter4".into());
    }
    assert!(!c.to_masked_toml().contains("hunter4"));
}

#[test]
fn ingest_tokens_are_read_masked_and_checked() {
    let text = "[ingest]\nlisten = \"0.0.0.0:9465\"\n[[ingest.tokens]]\ntoken = \"s3cr3t-tok\"\napps = [\"checkout-*\"]\n";
    let c = load_str(text, &[("PULSEWATCH_INGEST_MAX_BATCH", "10")]).unwrap();
    assert_eq!(c.ingest.max_batch, 10);
    assert_eq!(c.ingest.tokens[0].apps, vec!["checkout-*".to_owned()]);
    c.ingest.check_exposure().unwrap();
    assert!(!c.to_masked_toml().contains("s3cr3t-tok") && !format!("{c:?}").contains("s3cr3t-tok"));
    let open = Config::load(None, env(&[("PULSEWATCH_INGEST_LISTEN", "0.0.0.0:9465")])).unwrap();
    let err = open.ingest.check_exposure().unwrap_err().to_string();
    assert!(err.contains("ingest.listen") && err.contains("loopback"), "{err}");
    let err = Config::load(None, env(&[("PULSEWATCH_INGEST_TOKENS", "x")])).unwrap_err().to_string();
    assert!(err.contains("ingest.tokens is a list"), "{err}");
    let err = load_str("[[ingest.tokens]]\ntoken = \"t\"\napps = [\"a[\"]\n", &[]).unwrap_err().to_string();
    assert!(err.contains("ingest.tokens[0].apps"), "{err}");
}

#[test]
fn api_tokens_come_from_the_file_or_a_comma_separated_variable_and_are_masked() {
    let c = load_str("[http]\napi_tokens = [\"tok-file-1\"]\n", &[]).unwrap();
    assert_eq!(c.http.api_tokens, ["tok-file-1"]);
    let c = Config::load(None, env(&[("PULSEWATCH_HTTP_API_TOKENS", "tok-env-1, tok-env-2,")])).unwrap();
    assert_eq!(c.http.api_tokens, ["tok-env-1", "tok-env-2"]);
    let shown = format!("{}{c:?}", c.to_masked_toml());
    assert!(!shown.contains("tok-env") && shown.contains("****"), "{shown}");
    let err = load_str("[http]\napi_tokens = [\" \"]\n", &[]).unwrap_err().to_string();
    assert!(err.contains("http.api_tokens"), "{err}");
}

#[test]
fn debug_output_masks_secrets() {
    let mut c = Config::default();
    c.postgres.url = "host=db password=hunter2".into();
    c.kafka.properties.insert("sasl.password".into(), "hunter3".into());
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2") && !shown.contains("hunter3"), "{shown}");
    assert!(shown.contains("host=db"), "{shown}");
}

#[test]
fn a_rule_set_that_does_not_compile_is_refused_with_its_key() {
    let err = load_str("[[rules.overrides]]\nlabel = \"nokey\"\n", &[]).unwrap_err().to_string();
    assert!(err.contains("rules.overrides[0].label") && err.contains("key=value"), "{err}");
    let err = load_str("[[rules.overrides]]\napp = \"x\"\nmemory = { critical = 0.5 }\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("rules.overrides[0].memory") && err.contains("MEMORY_HIGH"), "{err}");
    let err = load_str("[rules.disk]\nwarning = 0.9\ncritical = 0.8\nfor_ms = 0\nresolve_below = 0.7\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("rules.disk") && err.contains("DISK_HIGH"), "{err}");
}
