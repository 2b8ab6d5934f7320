//! `pulsewatch run`: the stages as threads of one process, the HTTP endpoint, and a clean
//! stop on SIGTERM or SIGINT (stop fetching, finish and commit what is in flight, exit
//! within 30 s).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::config::Config;
use crate::http::{self, Readiness};
use crate::shutdown::Shutdown;
use crate::{processor, sink};

/// Which stages this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    All,
    Processor,
    Sink,
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Stage::All),
            "processor" => Ok(Stage::Processor),
            "sink" => Ok(Stage::Sink),
            other => Err(format!("unknown stage {other:?}: expected all, processor or sink")),
        }
    }
}

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("{stage} stage failed: {message}")]
    Stage { stage: &'static str, message: String },
    #[error("runtime: {0}")]
    Io(#[from] std::io::Error),
}

/// Longest a clean stop may take.
pub const STOP_WITHIN: Duration = Duration::from_secs(30);

/// Runs the chosen stages until a signal or a stage failure.
pub fn run(config: Config, stage: Stage) -> Result<(), ServiceError> {
    let huge_pages = config.processor.transparent_huge_pages;
    match crate::huge_pages::allow(huge_pages) {
        Ok(()) => tracing::info!(allowed = huge_pages, "transparent huge pages for this process"),
        Err(e) => tracing::warn!(error = %e, "transparent huge pages: the setting could not be applied"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let shutdown = Shutdown::new();
    let config = Arc::new(config);
    let mut flags = Vec::new();
    let mut stages: Vec<(&'static str, JoinHandle<Result<(), String>>)> = Vec::new();
    if matches!(stage, Stage::All | Stage::Processor) {
        let ready = Arc::new(AtomicBool::new(false));
        flags.push(("processor".to_owned(), ready.clone()));
        let (config, shutdown) = (config.clone(), shutdown.clone());
        let handle = std::thread::Builder::new().name("processor".into()).spawn(move || {
            let result = processor::run(&config, &shutdown, &ready).map_err(|e| e.to_string());
            shutdown.trigger();
            result
        })?;
        stages.push(("processor", handle));
    }
    if matches!(stage, Stage::All | Stage::Sink) {
        let ready = Arc::new(AtomicBool::new(false));
        flags.push(("sink".to_owned(), ready.clone()));
        let (config, shutdown, handle) = (config.clone(), shutdown.clone(), rt.handle().clone());
        let thread = std::thread::Builder::new().name("sink".into()).spawn(move || {
            let result = sink::run(&config, &shutdown, &ready, &handle).map_err(|e| e.to_string());
            shutdown.trigger();
            result
        })?;
        stages.push(("sink", thread));
    }
    let listen = config.http.listen.parse().expect("validated by Config::validate");
    let readiness = Readiness(Arc::new(flags));
    rt.spawn(async move {
        if let Err(e) = http::serve(listen, readiness).await {
            tracing::error!(error = %e, "http: endpoint failed");
        }
    });
    let waiter = shutdown.clone();
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); break; }
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                _ = tokio::time::sleep(Duration::from_millis(200)) => if waiter.is_triggered() { break; },
            }
        }
        std::io::Result::Ok(())
    })?;
    shutdown.trigger();
    let deadline = Instant::now() + STOP_WITHIN;
    let mut failure = None;
    for (name, handle) in stages {
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !handle.is_finished() {
            tracing::error!(stage = name, "did not stop within 30 s; exiting anyway");
            failure.get_or_insert(ServiceError::Stage {
                stage: name,
                message: "did not stop within 30 s".into(),
            });
            continue;
        }
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                tracing::error!(stage = name, error = %message, "stage failed");
                failure.get_or_insert(ServiceError::Stage { stage: name, message });
            }
            Err(_) => {
                failure.get_or_insert(ServiceError::Stage { stage: name, message: "panicked".into() });
            }
        }
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    failure.map_or(Ok(()), Err)
}
