//! `PULSEWATCH_<SECTION>_<KEY>` environment overrides, typed after the default of their key.

use super::{CONFIG_ENV, Config, ConfigError, invalid};

const ENV_PREFIX: &str = "PULSEWATCH_";
/// Variables under this prefix size the benchmarks (`benches/`); the configuration leaves
/// them alone.
const BENCH_ENV_PREFIX: &str = "PULSEWATCH_BENCH_";
/// List keys that an environment variable sets as comma-separated strings.
const COMMA_LISTS: &[&str] = &["http.api_tokens"];

/// Applies `PULSEWATCH_<SECTION>_<KEY>` overrides; the value's type is the default's.
pub(super) fn apply_env(
    tree: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).expect("defaults serialise");
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != CONFIG_ENV && !k.starts_with(BENCH_ENV_PREFIX))
        .collect();
    vars.sort();
    for (var, value) in vars {
        let env_err = |problem: String| ConfigError::Env { var: var.clone(), problem };
        let rest = var[ENV_PREFIX.len()..].to_ascii_lowercase();
        let Some((section, key)) = split_section(&rest, &defaults) else {
            return Err(env_err("is not of the form PULSEWATCH_<SECTION>_<KEY>".into()));
        };
        let Some(toml::Value::Table(section_defaults)) = defaults.get(section) else {
            let known: Vec<&str> = defaults.keys().map(String::as_str).collect();
            return Err(env_err(format!("unknown section {section:?} (known: {})", known.join(", "))));
        };
        let typed = match section_defaults.get(key) {
            None => {
                let known: Vec<&str> = section_defaults.keys().map(String::as_str).collect();
                return Err(env_err(format!("unknown key {section}.{key} (known: {})", known.join(", "))));
            }
            Some(toml::Value::String(_)) => toml::Value::String(value.clone()),
            Some(toml::Value::Integer(_)) => toml::Value::Integer(
                value.trim().parse().map_err(|_| env_err(format!("{value:?} is not an integer")))?,
            ),
            Some(toml::Value::Float(_)) => toml::Value::Float(
                value.trim().parse().map_err(|_| env_err(format!("{value:?} is not a number")))?,
            ),
            Some(toml::Value::Boolean(_)) => toml::Value::Boolean(
                value.trim().parse().map_err(|_| env_err(format!("{value:?} is not true or false")))?,
            ),
            Some(toml::Value::Array(_)) if COMMA_LISTS.contains(&format!("{section}.{key}").as_str()) => {
                toml::Value::Array(
                    value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(|v| v.into()).collect(),
                )
            }
            Some(toml::Value::Array(_)) => {
                return Err(env_err(format!("{section}.{key} is a list: set it in the config file")));
            }
            Some(_) => return Err(env_err(format!("{section}.{key} is a table: set it in the config file"))),
        };
        let table = tree
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| invalid(section, "must be a table"))?;
        table.insert(key.to_owned(), typed);
    }
    Ok(())
}

/// Splits `section_key` after the longest known section name (section names may hold an
/// underscore: `schema_registry_url`); else at the first underscore.
fn split_section<'a>(rest: &'a str, defaults: &toml::Table) -> Option<(&'a str, &'a str)> {
    let known = defaults
        .keys()
        .filter(|s| {
            rest.len() > s.len() + 1 && rest.starts_with(s.as_str()) && rest.as_bytes()[s.len()] == b'_'
        })
        .max_by_key(|s| s.len());
    match known {
        Some(s) => Some((&rest[..s.len()], &rest[s.len() + 1..])),
        None => rest.split_once('_'),
    }
}
