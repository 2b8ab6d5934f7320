//! `pulsewatch run`: the stages as threads of one process (the ingest stage as a second
//! HTTP server on the same runtime), the HTTP endpoint, and a clean
//! stop on SIGTERM or SIGINT (stop fetching, finish and commit what is in flight, exit
//! within 30 s). A stage that fails or panics, or an HTTP endpoint that ends, stops the
//! process with an error; an address `http.listen` cannot take stops it before any stage
//! starts.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::config::Config;
use crate::health::{HEALTH, Health};
use crate::http::{self, Readiness};
use crate::shutdown::Shutdown;
use crate::{ingest, processor, sink};

/// Which stages this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    All,
    Processor,
    Sink,
    /// Heartbeats over HTTP ([`crate::ingest`]).
    Ingest,
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Stage::All),
            "processor" => Ok(Stage::Processor),
            "sink" => Ok(Stage::Sink),
            "ingest" => Ok(Stage::Ingest),
            other => Err(format!("unknown stage {other:?}: expected all, processor, sink or ingest")),
        }
    }
}

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("{stage} stage failed: {source}")]
    Stage { stage: &'static str, source: StageFailure },
    #[error(transparent)]
    Http(#[from] http::HttpError),
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    #[error(transparent)]
    Api(#[from] crate::api::StartError),
    #[error("http endpoint stopped: {0}")]
    HttpStopped(String),
    #[error("runtime: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a stage's thread ended, kept typed up to the process's exit.
#[derive(Debug, Error)]
pub enum StageFailure {
    #[error(transparent)]
    Processor(#[from] processor::ProcessorError),
    #[error(transparent)]
    Sink(#[from] sink::SinkError),
    #[error("panicked: {0}")]
    Panicked(String),
    #[error("did not stop within 30 s; exiting anyway")]
    Hung,
}

/// Longest a clean stop may take.
pub const STOP_WITHIN: Duration = Duration::from_secs(30);

type StageHandle = JoinHandle<Result<(), StageFailure>>;

/// Runs the chosen stages until a signal, a stage's end (an error or a panic) or the HTTP
/// endpoint's end; any of the latter makes the result an error.
pub fn run(config: Config, stage: Stage) -> Result<(), ServiceError> {
    let huge_pages = config.processor.transparent_huge_pages;
    match crate::huge_pages::allow(huge_pages) {
        Ok(()) => tracing::info!(allowed = huge_pages, "transparent huge pages for this process"),
        Err(e) => tracing::warn!(error = %e, "transparent huge pages: the setting could not be applied"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // Bound before any stage starts: a taken address stops the process here.
    let listen = config.http.listen.parse().expect("validated by Config::validate");
    let listener = rt.block_on(http::bind(listen))?;
    // Bound before any stage starts too, and refused if exposed without a token.
    let ingest = match stage {
        Stage::All | Stage::Ingest => Some(rt.block_on(ingest::Server::bind(&config))?),
        Stage::Processor | Stage::Sink => None,
    };
    crate::api::check_exposure(&config.http)?;
    let reader = crate::api::queries::Reader::of(&config).map_err(crate::api::StartError::from)?;
    let acks = crate::api::acks::Acks::new(&config).map_err(crate::api::StartError::from)?;
    let shutdown = Shutdown::new();
    let config = Arc::new(config);
    let Started { mut flags, stages } = start_stages(&config, stage, &shutdown, &rt)?;
    if ingest.is_some() {
        flags.push(("ingest".to_owned(), Arc::new(AtomicBool::new(true))));
    }
    let endpoints = http::Endpoints {
        readiness: Readiness(Arc::new(flags)),
        health: HEALTH.clone(),
        stall_after: Duration::from_millis(config.health.stall_after_ms),
    };
    let ingest_state = ingest.as_ref().map(|i| i.state.clone());
    let api = crate::api::Api::new(&config, reader, acks, endpoints.clone());
    let app = http::router(endpoints).merge(crate::api::router(api));
    let endpoint = http::serve(listener, app, http::Limits::of(&config.http));
    let mut server = rt.spawn(serve_both(endpoint, ingest));
    let http_failure = rt.block_on(wait_for_stop(&shutdown, &mut server))?;
    shutdown.trigger();
    // The ingest drains while the stages finish.
    let drained = ingest_state.map(|state| rt.spawn(async move { state.stop().await }));
    let failure = http_failure.or(join_stages(stages));
    if let Some(drained) = drained {
        let _ = rt.block_on(drained);
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    failure.map_or(Ok(()), Err)
}

/// Serves the HTTP endpoint and, if it runs, the ingest stage; ends when either ends.
async fn serve_both(endpoint: impl std::future::Future<Output = ()>, ingest: Option<ingest::Server>) {
    match ingest {
        Some(ingest) => tokio::select! {
            () = endpoint => tracing::error!("http: the endpoint ended"),
            () = ingest.serve() => tracing::error!("ingest: the server ended"),
        },
        None => endpoint.await,
    }
}

/// The stages' threads, and the readiness flag of each.
struct Started {
    flags: Vec<(String, Arc<AtomicBool>)>,
    stages: Vec<(&'static str, StageHandle)>,
}

/// Starts the chosen stages' threads.
fn start_stages(
    config: &Arc<Config>,
    stage: Stage,
    shutdown: &Shutdown,
    rt: &tokio::runtime::Runtime,
) -> std::io::Result<Started> {
    let mut flags = Vec::new();
    let mut stages = Vec::new();
    if matches!(stage, Stage::All | Stage::Processor) {
        let ready = Arc::new(AtomicBool::new(false));
        flags.push(("processor".to_owned(), ready.clone()));
        let (config, stop) = (config.clone(), shutdown.clone());
        let handle =
            spawn_stage("processor", shutdown, &HEALTH, move || Ok(processor::run(&config, &stop, &ready)?))?;
        stages.push(("processor", handle));
    }
    if matches!(stage, Stage::All | Stage::Sink) {
        let ready = Arc::new(AtomicBool::new(false));
        flags.push(("sink".to_owned(), ready.clone()));
        let (config, stop, handle) = (config.clone(), shutdown.clone(), rt.handle().clone());
        let thread =
            spawn_stage("sink", shutdown, &HEALTH, move || Ok(sink::run(&config, &stop, &ready, &handle)?))?;
        stages.push(("sink", thread));
    }
    Ok(Started { flags, stages })
}

/// Runs `body` on a thread of its own named `name`. However it ends, by returning or by
/// panicking, `health` learns it and `shutdown` is triggered: one stage's end stops them all.
pub fn spawn_stage(
    name: &'static str,
    shutdown: &Shutdown,
    health: &Health,
    body: impl FnOnce() -> Result<(), StageFailure> + Send + 'static,
) -> std::io::Result<StageHandle> {
    health.stage_running(name);
    let (shutdown, health) = (shutdown.clone(), health.clone());
    std::thread::Builder::new().name(name.into()).spawn(move || {
        // The stage's state is abandoned after a panic: the process stops.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or_else(|payload| {
            Err(StageFailure::Panicked(crate::logging::panic_message(payload.as_ref()).to_string()))
        });
        let why = match &result {
            Ok(()) => "stopped".to_owned(),
            Err(failure) => failure.to_string(),
        };
        health.stage_stopped(name, &why);
        shutdown.trigger();
        result
    })
}

/// Waits for SIGTERM, SIGINT, `shutdown` (a stage ended) or the end of the HTTP server;
/// the latter is returned as a failure.
async fn wait_for_stop(
    shutdown: &Shutdown,
    server: &mut tokio::task::JoinHandle<()>,
) -> std::io::Result<Option<ServiceError>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); return Ok(None); }
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); return Ok(None); }
            ended = &mut *server => {
                let why = match ended {
                    Err(e) if e.is_panic() => {
                        format!("panicked: {}", crate::logging::panic_message(e.into_panic().as_ref()))
                    }
                    Err(e) => e.to_string(),
                    Ok(()) => "ended".to_owned(),
                };
                tracing::error!(error = %why, "http: endpoint stopped; stopping");
                return Ok(Some(ServiceError::HttpStopped(why)));
            }
            _ = tick.tick() => if shutdown.is_triggered() { return Ok(None); },
        }
    }
}

/// Waits (within [`STOP_WITHIN`]) for every stage to end; the first failure.
fn join_stages(stages: Vec<(&'static str, StageHandle)>) -> Option<ServiceError> {
    let deadline = Instant::now() + STOP_WITHIN;
    let mut failure = None;
    for (name, handle) in stages {
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let source = if !handle.is_finished() {
            StageFailure::Hung
        } else {
            match handle.join() {
                Ok(Ok(())) => continue,
                Ok(Err(failure)) => failure,
                Err(payload) => {
                    StageFailure::Panicked(crate::logging::panic_message(payload.as_ref()).to_string())
                }
            }
        };
        tracing::error!(stage = name, error = %source, "stage failed");
        failure.get_or_insert(ServiceError::Stage { stage: name, source });
    }
    failure
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_that_panics_stops_the_others_and_is_reported() {
        let (shutdown, health) = (Shutdown::new(), Health::default());
        let handle = spawn_stage("doomed", &shutdown, &health, || panic!("record 42 broke it")).unwrap();
        let failure = join_stages(vec![("doomed", handle)]).expect("a panic is a failure");
        assert!(shutdown.is_triggered());
        assert!(failure.to_string().contains("panicked: record 42 broke it"), "{failure}");
        let verdict = health.check(Duration::from_secs(120));
        assert_eq!(verdict.problems, vec!["doomed: stage stopped: panicked: record 42 broke it".to_owned()]);
    }

    #[test]
    fn a_stage_that_fails_stops_the_others() {
        let (shutdown, health) = (Shutdown::new(), Health::default());
        let fenced = processor::ProcessorError::Fenced { id: "p-1".into(), message: "epoch bumped".into() };
        let handle = spawn_stage("failing", &shutdown, &health, move || Err(fenced.into())).unwrap();
        let failure = join_stages(vec![("failing", handle)]).expect("an error is a failure");
        assert!(shutdown.is_triggered());
        assert!(
            matches!(
                &failure,
                ServiceError::Stage {
                    source: StageFailure::Processor(processor::ProcessorError::Fenced { .. }),
                    ..
                }
            ),
            "the stage's error arrives typed: {failure:?}"
        );
        let message = failure.to_string();
        assert!(message.starts_with("failing stage failed: transactional id p-1 is fenced"), "{message}");
        assert!(message.ends_with("(epoch bumped)"), "the cause is kept: {message}");
    }
}
