//! The admin endpoints both binaries serve on `REALTIME_ADMIN_LISTEN`:
//! `/healthz` (the process is alive), `/readyz` (it can do its job: 200 or
//! 503; a 200 may name a degraded dependency in its body, see
//! [`Readiness::set_degraded`]) and `/metrics` (Prometheus text).
//!
//! Metrics go through the `metrics` facade into one process-wide Prometheus
//! recorder, installed on first use; histograms whose name ends in `_seconds`
//! get latency buckets from 0.5 ms to 10 s.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// The process-wide Prometheus handle. The first call installs the recorder.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder is installed already; the handle
            // then renders nothing, which is the best that can be done.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Whether the process is ready to serve; shared between the worker that
/// knows and the `/readyz` handler that tells.
///
/// Ready is what a load balancer acts on (200 or 503). A ready process may
/// also be *degraded*: a dependency is down but the process still does
/// useful work (the gateway without Postgres keeps its open streams and
/// admits members it has cached). `/readyz` then stays 200 and its body
/// names the degraded dependency, so every replica is not pulled out of
/// rotation at once for a fault no replica can fix.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<ReadinessState>);

#[derive(Debug, Default)]
struct ReadinessState {
    ready: AtomicBool,
    degraded: Mutex<Option<String>>,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Relaxed);
    }
    pub fn get(&self) -> bool {
        self.0.ready.load(Ordering::Relaxed)
    }
    /// What is degraded (one line, e.g. `postgres unavailable`), or `None`
    /// when nothing is. Does not change [`Self::get`].
    pub fn set_degraded(&self, what: Option<String>) {
        *self
            .0
            .degraded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = what;
    }
    /// See [`Self::set_degraded`].
    pub fn degraded(&self) -> Option<String> {
        self.0
            .degraded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// A bound admin listener, ready to serve.
pub struct AdminServer {
    listener: TcpListener,
    state: AdminState,
}

impl AdminServer {
    pub async fn bind(addr: SocketAddr, readiness: Readiness) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            listener,
            state: AdminState {
                readiness,
                metrics: metrics_handle(),
            },
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves. Admin requests are short, so
    /// axum's graceful shutdown is enough here.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // Histograms keep every sample until upkeep folds them into their
        // buckets: the gateway records one per delivery, so at 90,000
        // deliveries/s a 5 s upkeep held a runtime worker long enough to
        // show in the delivery latency. Every second, on a blocking thread,
        // it is a fifth of the work and stalls no task.
        let upkeep_handle = self.state.metrics.clone();
        let upkeep = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let handle = upkeep_handle.clone();
                let _ = tokio::task::spawn_blocking(move || handle.run_upkeep()).await;
            }
        });
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(render_metrics))
            .with_state(self.state);
        let result = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        upkeep.abort();
        result
    }
}

/// 200 `ready` (with a `degraded: <what>` line when a dependency is down
/// but the process still serves), or 503 `not ready` (with the same line
/// when known).
async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let degraded = state
        .readiness
        .degraded()
        .map(|what| format!("degraded: {what}\n"))
        .unwrap_or_default();
    if state.readiness.get() {
        (StatusCode::OK, format!("ready\n{degraded}"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{degraded}"),
        )
    }
}

async fn render_metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
