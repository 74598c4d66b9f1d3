//! The HTTP server, on hyper-util's connection builder rather than `axum::serve`, for two things
//! `axum::serve` does not offer:
//!
//! - a header-read timeout: a connection that has not sent a whole request head within it (after
//!   opening, or after its previous response) is closed, instead of holding a task for as long
//!   as the client likes;
//! - a shutdown with an end: on Ctrl-C the server stops accepting, lets the requests in flight
//!   finish (and save their sessions) for up to [`SHUTDOWN_GRACE`], then drops what is still
//!   open. A client that sent half a request holds nothing up.

use std::{future::Future, pin::pin, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch};

/// How long a shutdown waits for the connections still open.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown` resolves, then as [`SHUTDOWN_GRACE`] says.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    // Sending on `stop` asks every connection to finish; each connection's task holds a clone
    // of `open_rx`, so `open_tx.closed()` resolves once the last connection has ended.
    let (stop, stop_rx) = watch::channel(());
    let (open_tx, open_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: accepting works again once some close.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let builder = builder.clone();
        let service = TowerToHyperService::new(app.clone());
        let mut stop_rx = stop_rx.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = stop_rx.changed() => {
                    // No further request on this connection; the one in flight may finish.
                    connection.as_mut().graceful_shutdown();
                    connection.as_mut().await
                }
            };
            if let Err(err) = ended {
                // A client that went away, or one too slow to send its request head.
                tracing::debug!(%peer, error = %err, "connection closed on an error");
            }
            drop(open);
        });
    }

    drop(listener);
    drop(open_rx);
    // Nobody listening (no connection open) is not an error.
    let _ = stop.send(());
    tracing::info!(
        open_connections = open_tx.receiver_count(),
        "shutting down: no new connections, letting the requests in flight finish"
    );
    if tokio::time::timeout(SHUTDOWN_GRACE, open_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            open_connections = open_tx.receiver_count(),
            "connections still open after {} s of shutdown are dropped",
            SHUTDOWN_GRACE.as_secs()
        );
    }
}
