//! The HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (every stage runs and
//! every partition moves on, see [`crate::health`]) and `/readyz` (every stage has joined
//! its group and reads).
//!
//! Served over HTTP/1.1 with limits a slow or hostile client cannot get past: a request's
//! head must arrive within `http.header_read_timeout_ms`, a connection on which nothing moves
//! for `http.idle_timeout_ms` is closed, and at most `http.max_connections` are served at
//! once (the rest wait in the listen queue). The listener is bound by [`bind`] before the
//! stages start, so a taken address stops `pulsewatch run` at once.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::HttpConfig;
use crate::health::Health;
use crate::metrics::METRICS;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("http.listen: cannot listen on {addr}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Readiness flags, one per running stage.
#[derive(Clone, Default)]
pub struct Readiness(pub Arc<Vec<(String, Arc<AtomicBool>)>>);

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.0.iter().all(|(_, f)| f.load(Ordering::Relaxed))
    }
}

/// What the endpoints answer from.
#[derive(Clone)]
pub struct Endpoints {
    pub readiness: Readiness,
    pub health: Health,
    /// A partition with records to read that has not moved on for this long is unhealthy.
    pub stall_after: Duration,
}

/// How much a client may take of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest wait for a request's line and headers, counted from when the server starts
    /// waiting for them: on a kept-alive connection, from the previous response.
    pub header_read_timeout: Duration,
    /// A connection on which no byte is read or written for this long is closed.
    pub idle_timeout: Duration,
    /// Most connections served at once.
    pub max_connections: usize,
}

impl Limits {
    pub fn of(config: &HttpConfig) -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            max_connections: config.max_connections,
        }
    }
}

async fn metrics() -> String {
    METRICS.render()
}

async fn healthz(State(endpoints): State<Endpoints>) -> (StatusCode, String) {
    let verdict = endpoints.health.check(endpoints.stall_after);
    if verdict.is_healthy() {
        return (StatusCode::OK, "ok\n".into());
    }
    let mut body = String::from("unhealthy\n");
    for problem in &verdict.problems {
        body.push_str(problem);
        body.push('\n');
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

async fn readyz(State(endpoints): State<Endpoints>) -> (StatusCode, String) {
    let ready = &endpoints.readiness;
    let detail: String = ready
        .0
        .iter()
        .map(|(name, f)| {
            format!("{name}: {}\n", if f.load(Ordering::Relaxed) { "ready" } else { "starting" })
        })
        .collect();
    if ready.is_ready() { (StatusCode::OK, detail) } else { (StatusCode::SERVICE_UNAVAILABLE, detail) }
}

/// The routes, answering from `endpoints`.
pub fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(endpoints)
}

/// Binds the endpoint's listener; the error names `http.listen` and the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr).await.map_err(|source| HttpError::Bind { addr, source })
}

/// Serves `app` on `listener` within `limits`, until the future is dropped.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, "http: serving");
    }
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // A connection is accepted only once a slot is free; until then it waits in the
        // kernel's listen queue.
        let permit = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, app.clone(), limits, permit));
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// An accept error ends no server: a connection reset before it was accepted is skipped; a
/// lack of file descriptors is waited out.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::warn!(error = %e, "http: accept failed; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn serve_connection(stream: TcpStream, app: Router, limits: Limits, _slot: OwnedSemaphorePermit) {
    let activity = Activity::new();
    let io = TokioIo::new(Tracked { inner: stream, activity: activity.clone() });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, TowerToHyperService::new(app));
    tokio::select! {
        ended = connection => if let Err(e) = ended {
            tracing::debug!(error = %e, "http: connection ended");
        },
        () = activity.idle_for(limits.idle_timeout) => tracing::debug!("http: idle connection closed"),
    }
}

/// When a connection last moved a byte.
#[derive(Clone)]
struct Activity {
    opened: Instant,
    /// Milliseconds after `opened`.
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity { opened: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }

    fn touch(&self) {
        self.last_ms.store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            if Instant::now() >= last + idle {
                return;
            }
            tokio::time::sleep_until(last + idle).await;
        }
    }
}

/// A stream that records its reads and writes in an [`Activity`].
struct Tracked {
    inner: TcpStream,
    activity: Activity,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, bytes);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const SHORT: Limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        max_connections: 4,
    };

    /// A server on a free port with `limits`; its address.
    async fn start(limits: Limits, health: Health) -> SocketAddr {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoints =
            Endpoints { readiness: Readiness::default(), health, stall_after: Duration::from_secs(120) };
        tokio::spawn(serve(listener, router(endpoints), limits));
        addr
    }

    /// Sends `request` and reads the answer to the end (the server closes: HTTP/1.0).
    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        answer
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        exchange(addr, &format!("GET {path} HTTP/1.0\r\n\r\n")).await
    }

    /// How long until the server closes `s`, reading whatever it sends.
    async fn closed_after(mut s: TcpStream, within: Duration) -> Duration {
        let started = Instant::now();
        let mut sink = Vec::new();
        tokio::time::timeout(within, s.read_to_end(&mut sink))
            .await
            .expect("the server closes the connection")
            .ok();
        assert!(!String::from_utf8_lossy(&sink).contains("200 OK"), "{sink:?}");
        started.elapsed()
    }

    #[tokio::test]
    async fn healthz_answers_ok_then_names_what_is_wrong() {
        let health = Health::default();
        health.stage_running("processor");
        let addr = start(SHORT, health.clone()).await;
        let answer = get(addr, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.0 200") && answer.ends_with("ok\n"), "{answer}");
        health.stage_stopped("processor", "panicked: boom");
        let answer = get(addr, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.0 503"), "{answer}");
        assert!(answer.contains("processor: stage stopped: panicked: boom"), "{answer}");
    }

    #[tokio::test]
    async fn a_slow_request_line_is_cut_off() {
        let addr = start(SHORT, Health::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /hea").await.unwrap();
        let took = closed_after(s, Duration::from_secs(5)).await;
        assert!(took < Duration::from_millis(550), "closed after {took:?}");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_is_closed_by_the_header_timeout() {
        let limits = Limits { idle_timeout: Duration::from_secs(30), ..SHORT };
        let addr = start(limits, Health::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        let took = closed_after(s, Duration::from_secs(5)).await;
        assert!(took < Duration::from_secs(1), "closed after {took:?}");
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_once_idle() {
        let limits = Limits { header_read_timeout: Duration::from_secs(30), ..SHORT };
        let addr = start(limits, Health::default()).await;
        let s = TcpStream::connect(addr).await.unwrap();
        // Connected, silent: only the idle timeout applies.
        let took = closed_after(s, Duration::from_secs(5)).await;
        assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(2), "closed after {took:?}");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_and_healthz_answers_once_they_are_gone() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            max_connections: 4,
        };
        let addr = start(limits, Health::default()).await;
        let mut idle = Vec::new();
        for _ in 0..10 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let waiting = tokio::spawn(get(addr, "/healthz"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "a connection beyond the cap waits");
        drop(idle);
        let answer = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.0 200"));
    }

    #[tokio::test]
    async fn a_taken_address_is_named_with_the_key() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err();
        let shown = format!("{:#}", anyhow::Error::from(err));
        assert!(shown.contains("http.listen") && shown.contains(&addr.to_string()), "{shown}");
        assert_eq!(shown.matches("in use").count(), 1, "the cause once: {shown}");
    }
}
