//! The accept loop. `axum::serve` has neither a header-read timeout nor a connection limit,
//! so connections are served here with hyper directly: at most
//! [`ServerOptions::max_connections`](crate::ServerOptions) open at once, each closed when it
//! has not sent a complete request head within `header_read_timeout` (half-open connections,
//! idle keep-alives), and all of them drained on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::lenient_uri::LenientListener;
use crate::{router, spawn_warm_up, AppState};

/// How long requests in flight may run on after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves on `addr` until SIGINT (Ctrl-C) or SIGTERM (`docker stop`, Kubernetes, systemd).
/// Warm-up (model load) and the WBIA health check run in the background; `/health` says when
/// the models are loaded. WBIA need not be reachable at start.
pub async fn serve(state: Arc<AppState>, addr: SocketAddr) -> std::io::Result<()> {
    // Installed before anyone can know we listen, so that an early SIGTERM is not fatal.
    let signal = shutdown_signal()?;
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    spawn_warm_up(state.clone());
    // With a shared store, this replica takes chunks of every replica's large jobs.
    if state.engine().chunk_queue().is_some() {
        tokio::spawn(state.identifier.clone().work_chunks());
    }
    serve_on(state, listener, signal).await
}

/// Serves on `listener` until `shutdown` resolves: then stops accepting, lets requests in
/// flight finish for at most [`SHUTDOWN_GRACE`], and returns.
pub async fn serve_on(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    crate::health::spawn_wbia_monitor(&state);
    let options = state.options.clone();
    let app = router(state);
    let connections = Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    let mut listener = LenientListener(listener);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("never closed"),
            _ = &mut shutdown => break,
        };
        let (io, _peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            // Timeouts and resets end connections all the time; nothing to report.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; finishing those in flight");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "requests still in flight; stopping anyway");
        }
    }
    Ok(())
}

/// Resolves on SIGINT or, on Unix, SIGTERM; both handlers are installed when this is called.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    #[cfg(unix)]
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}
