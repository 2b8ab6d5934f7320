//! The `pulsewatch` command: parses the command line, sets up logging, calls the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use pulsewatch::codec::Encoding;
use pulsewatch::config::Config;
use pulsewatch::evaluate::{self, EvaluateOptions};
use pulsewatch::loadgen::scenario::{FaultSpec, parse_duration};
use pulsewatch::loadgen::{self, LoadgenOptions, Manifest};
use pulsewatch::registry::Registry;
use pulsewatch::service::{self, Stage};
use pulsewatch::store;
use pulsewatch::summary;
use pulsewatch::topology::{self, Topology};

/// The engine allocates and frees small objects per beat, and a restore builds millions of
/// them: mimalloc roughly halves their cost (figures in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pulsewatch",
    version,
    about = "Watches a fleet of applications through their heartbeats on Kafka"
)]
struct Cli {
    /// Config file (default: $PULSEWATCH_CONFIG, else ./pulsewatch.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the processor, sink and ingest stages (or one of them) until SIGTERM or SIGINT.
    Run {
        /// all, processor, sink or ingest.
        #[arg(long, default_value = "all")]
        stage: Stage,
    },
    /// Show the effective configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Create the declared Kafka topics, or check them for drift.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// Apply the SQL migrations not yet applied, then create the time partitions.
    Migrate,
    /// Time partitions of heartbeat_event, metric_rollup_1m and alert_event.
    Partitions {
        #[command(subcommand)]
        action: PartitionsAction,
    },
    /// Publish synthetic heartbeats, with faults, and write a ground-truth manifest.
    Loadgen(LoadgenArgs),
    /// Run the labelled leak suite through Kafka and the processor; score it beside a
    /// predict_linear baseline.
    Evaluate(EvaluateArgs),
    /// Schemas in the Schema Registry (`schema_registry.url`).
    Schema {
        #[command(subcommand)]
        action: SchemaAction,
    },
    /// Read the heartbeats topic to its end and say what is there, beside a manifest.
    Summary {
        /// A loadgen manifest to compare with.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Give up reading after this long.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the effective config as TOML, secrets masked.
    Show,
}

#[derive(Subcommand)]
enum SchemaAction {
    /// Register the heartbeat and alert schemas under `<prefix>heartbeats-value` and
    /// `<prefix>alerts-value`; print their ids.
    Register,
}

#[derive(Subcommand)]
enum TopologyAction {
    /// Create missing topics; report existing ones whose settings differ.
    Apply {
        /// Topology file (default: the shipped topology/topics.toml).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Also set the declared settings on existing topics whose settings differ (their
        /// other topic-level settings are kept; partitions are never changed).
        #[arg(long)]
        alter: bool,
    },
    /// Exit non-zero if a topic is missing or differs from the declaration.
    Check {
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PartitionsAction {
    /// Create partitions ahead and drop those past the retention.
    Maintain {
        /// Act as if today were this UTC date (YYYY-MM-DD).
        #[arg(long)]
        today: Option<chrono::NaiveDate>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LoadEncoding {
    Avro,
    Json,
    Confluent,
}

/// The encoding loadgen writes; for the Confluent format, the heartbeat schema registered.
fn load_encoding(encoding: LoadEncoding, config: &Config) -> Result<Encoding> {
    Ok(match encoding {
        LoadEncoding::Avro => Encoding::Avro,
        LoadEncoding::Json => Encoding::Json,
        LoadEncoding::Confluent => {
            let Some(registry) = Registry::from_config(&config.schema_registry) else {
                bail!("--encoding confluent needs schema_registry.url (PULSEWATCH_SCHEMA_REGISTRY_URL)");
            };
            let subject = format!("{}-value", config.kafka.name(pulsewatch::topology::names::HEARTBEATS));
            Encoding::Confluent(registry.register(&subject, pulsewatch::codec::avro::HEARTBEAT_SCHEMA)?)
        }
    })
}

#[derive(Args)]
struct LoadgenArgs {
    /// Number of applications.
    #[arg(long, default_value_t = 100)]
    apps: usize,
    /// Instances per application.
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// Heartbeat period of every instance.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    interval: Duration,
    /// Upper bound on records per second (default: as fast as the scenario needs).
    #[arg(long)]
    rate: Option<f64>,
    /// Live run, after any backfill, for this long.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many beats.
    #[arg(long)]
    count: Option<u64>,
    /// History whose event times end now, written as fast as possible (e.g. 2h).
    #[arg(long, value_parser = parse_duration)]
    backfill: Option<Duration>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// avro, json, or confluent (the Confluent wire format: registers the heartbeat schema
    /// under `<prefix>heartbeats-value` first; needs schema_registry.url).
    #[arg(long, value_enum, default_value = "avro")]
    encoding: LoadEncoding,
    /// A fault: KIND:APP[/INSTANCE]@START[+LENGTH], e.g. crash:3/0@10m+5m (repeatable).
    #[arg(long = "fault")]
    faults: Vec<FaultSpec>,
    /// Give applications 0..20 one scenario each (crash, clean-stop, restart, memory-high, ...).
    #[arg(long)]
    mix: bool,
    /// Where to write the ground-truth manifest (JSON).
    #[arg(long, default_value = "pulsewatch-output/manifest.json")]
    manifest: PathBuf,
    /// Application ids are this prefix and a zero-padded index.
    #[arg(long, default_value = "app-")]
    app_prefix: String,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// kafka (a producer, the default) or http (the ingest stage at URL, NDJSON batches).
    #[arg(long, default_value = "kafka", value_parser = ["kafka", "http"])]
    via: String,
    /// The ingest stage's URL with --via http, e.g. http://127.0.0.1:9465.
    url: Option<String>,
    /// Bearer token for the ingest stage (--via http).
    #[arg(long)]
    token: Option<String>,
    /// Beats per batch with --via http (at most the stage's ingest.max_batch).
    #[arg(long, default_value_t = loadgen::outlet::HTTP_BATCH)]
    batch: usize,
}

impl LoadgenArgs {
    /// The way in the arguments choose.
    fn way_in(&self) -> anyhow::Result<loadgen::Via> {
        match (self.via.as_str(), &self.url) {
            ("http", Some(url)) => {
                Ok(loadgen::Via::Http { url: url.clone(), token: self.token.clone(), batch: self.batch })
            }
            ("http", None) => {
                anyhow::bail!("--via http needs the ingest stage's URL, e.g. http://127.0.0.1:9465")
            }
            (_, Some(url)) => anyhow::bail!("{url}: a URL is for --via http"),
            _ => Ok(loadgen::Via::Kafka),
        }
    }
}

#[derive(Args)]
struct EvaluateArgs {
    /// Event time each scenario runs for (backfilled, ending now).
    #[arg(long, default_value = "3h", value_parser = parse_duration)]
    span: Duration,
    /// Instances per application.
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// The seed (repeatable: one run per seed, then a summary side by side); it draws the
    /// random families' cases and every figure's noise.
    #[arg(long = "seed", default_values_t = [1])]
    seeds: Vec<u64>,
    /// Only this family of the suite (repeatable), e.g. memory-leak, gc-sawtooth.
    #[arg(long = "family")]
    families: Vec<String>,
    /// Copies of each case, each on an application of its own.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Where to write the report as JSON.
    #[arg(long, default_value = "pulsewatch-output/evaluation.json")]
    report: PathBuf,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
    /// Feed the same beats straight to the engine in this process, without the stack: a
    /// quick replay for developing the detector (same verdicts, seconds instead of minutes).
    #[arg(long)]
    offline: bool,
}

fn main() -> ExitCode {
    pulsewatch::logging::init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", pulsewatch::logging::escape_control(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let config = Config::from_process(cli.config.as_deref())?;
    match cli.command {
        Command::Run { stage } => run_stages(config, stage),
        Command::Config { action: ConfigAction::Show } => show_config(&config),
        Command::Schema { action: SchemaAction::Register } => register_schemas(&config),
        Command::Topology { action } => apply_or_check_topology(&config, action),
        Command::Migrate => migrate(&config),
        Command::Partitions { action: PartitionsAction::Maintain { today } } => {
            maintain_partitions(&config, today)
        }
        Command::Evaluate(args) => run_evaluation(&config, args),
        Command::Loadgen(args) => generate_load(&config, args),
        Command::Summary { manifest, timeout } => summarise_run(&config, manifest.as_deref(), timeout),
    }
}

/// A runtime for the commands that talk to Kafka's admin API or PostgreSQL.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// `run`: the stages, until a signal stops them (they build their own runtime).
fn run_stages(config: Config, stage: Stage) -> Result<ExitCode> {
    service::run(config, stage)?;
    Ok(ExitCode::SUCCESS)
}

/// `config show`.
fn show_config(config: &Config) -> Result<ExitCode> {
    print!("{}", config.to_masked_toml());
    Ok(ExitCode::SUCCESS)
}

/// `schema register`.
fn register_schemas(config: &Config) -> Result<ExitCode> {
    let Some(registry) = Registry::from_config(&config.schema_registry) else {
        bail!("schema_registry.url is not set (PULSEWATCH_SCHEMA_REGISTRY_URL)");
    };
    for (subject, id) in registry.register_contracts(&config.kafka)? {
        println!("{subject}: id {id}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `topology apply` and `topology check`; a check that finds drift exits with 2.
fn apply_or_check_topology(config: &Config, action: TopologyAction) -> Result<ExitCode> {
    let (file, check_only, alter) = match action {
        TopologyAction::Apply { file, alter } => (file, false, alter),
        TopologyAction::Check { file } => (file, true, false),
    };
    let declared = match file {
        Some(path) => Topology::from_file(&path)?,
        None => Topology::builtin(),
    };
    let report = runtime()?.block_on(async {
        if check_only {
            topology::check(&config.kafka, &declared).await
        } else if alter {
            topology::apply_and_alter(&config.kafka, &declared).await
        } else {
            topology::apply(&config.kafka, &declared).await
        }
    })?;
    for t in &report.created {
        println!("created   {t}");
    }
    for t in &report.altered {
        println!("altered   {t}");
    }
    for t in &report.unchanged {
        println!("ok        {t}");
    }
    for d in &report.drift {
        println!("drift     {d}");
    }
    if check_only && !report.drift.is_empty() {
        eprintln!("{} difference(s) from the declared topology", report.drift.len());
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// `migrate`: the migrations not yet applied, then today's partitions.
fn migrate(config: &Config) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let mut client = store::connect(&config.postgres).await?;
        let applied = store::migrate::migrate(&mut client, &config.postgres.schema).await?;
        if applied.is_empty() {
            println!("schema {}: up to date", config.postgres.schema);
        }
        for v in applied {
            println!("schema {}: applied migration {v}", config.postgres.schema);
        }
        let today = chrono::Utc::now().date_naive();
        let report =
            store::partitions::maintain(&mut client, &config.postgres.schema, &config.retention, today)
                .await?;
        println!("partitions: {} created, {} dropped", report.created.len(), report.dropped.len());
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `partitions maintain`, as of `today` (UTC) unless told.
fn maintain_partitions(config: &Config, today: Option<chrono::NaiveDate>) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let mut client = store::connect(&config.postgres).await?;
        let today = today.unwrap_or_else(|| chrono::Utc::now().date_naive());
        let report =
            store::partitions::maintain(&mut client, &config.postgres.schema, &config.retention, today)
                .await?;
        for p in &report.created {
            println!("created   {p}");
        }
        for p in &report.dropped {
            println!("dropped   {p}");
        }
        println!("partitions: {} created, {} dropped", report.created.len(), report.dropped.len());
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `evaluate`: runs the suite once per seed, prints each report (and, for several seeds, a
/// summary side by side) and writes them as JSON.
fn run_evaluation(config: &Config, args: EvaluateArgs) -> Result<ExitCode> {
    let mut runs = Vec::new();
    for &seed in &args.seeds {
        let opts = EvaluateOptions {
            span: args.span,
            instances: args.instances,
            seed,
            families: args.families.clone(),
            repeat: args.repeat,
            progress: !args.quiet,
            offline: args.offline,
            ..EvaluateOptions::default()
        };
        let report = evaluate::run(config, &opts)?;
        println!("== seed {seed}");
        print!("{}", report.render());
        runs.push((seed, report));
    }
    if runs.len() > 1 {
        print!("\n{}", evaluate::seeds::summarise(&runs));
    }
    if let Some(dir) = args.report.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let json = match &runs[..] {
        [(_, one)] => serde_json::to_vec_pretty(one)?,
        many => serde_json::to_vec_pretty(&many.iter().map(|(_, r)| r).collect::<Vec<_>>())?,
    };
    std::fs::write(&args.report, json).with_context(|| format!("writing {}", args.report.display()))?;
    println!("report: {}", args.report.display());
    Ok(ExitCode::SUCCESS)
}

/// `loadgen`: publishes the load and says what it sent.
fn generate_load(config: &Config, args: LoadgenArgs) -> Result<ExitCode> {
    let via = args.way_in()?;
    let opts = LoadgenOptions {
        apps: args.apps,
        instances: args.instances,
        interval: args.interval,
        rate: args.rate,
        duration: args.duration,
        count: args.count,
        seed: args.seed,
        encoding: load_encoding(args.encoding, config)?,
        faults: args.faults,
        mix: args.mix,
        backfill: args.backfill,
        manifest: Some(args.manifest.clone()),
        app_prefix: args.app_prefix,
        now_ms: None,
        progress: !args.quiet,
        via,
    };
    let m = loadgen::run(&config.kafka, &opts)?;
    println!(
        "loadgen: {} beats and {} poison records to {} in {:.1} s ({:.0} records/s); {} faults; manifest {}",
        m.beats_total,
        m.poison_total,
        m.topic,
        m.wall_seconds,
        m.achieved_rate,
        m.faults.len(),
        args.manifest.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `summary`: what the heartbeats topic holds and, beside a manifest, what was found for it;
/// an error if the topic holds fewer beats than the manifest says were produced.
fn summarise_run(config: &Config, manifest: Option<&Path>, timeout: Duration) -> Result<ExitCode> {
    let m = match manifest {
        Some(path) => Some(Manifest::read(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let found = runtime()?.block_on(summary::summarise(config, m.as_ref(), timeout))?;
    let topic = config.kafka.name(pulsewatch::topology::names::HEARTBEATS);
    print!("{}", found.render(&topic));
    if let Some(m) = &m {
        let t = &found.tally;
        let matching = m
            .per_app
            .iter()
            .filter(|(app, c)| t.beats_per_app.get(*app).is_some_and(|n| *n >= c.beats))
            .count();
        if matching != m.per_app.len() {
            bail!("the topic holds fewer beats than the manifest says were produced");
        }
    }
    Ok(ExitCode::SUCCESS)
}
