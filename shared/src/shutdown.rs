//! Process signals as a future: SIGTERM (Kubernetes, `kill`) or SIGINT (Ctrl-C).

/// Resolves at the first SIGTERM or SIGINT. If a handler cannot be installed
/// (which only happens in unusual sandboxes) that signal is simply not
/// awaited, so the process still stops on the other one.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
}
