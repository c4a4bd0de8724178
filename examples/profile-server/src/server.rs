//! The running server: listening, seeding, the sweeper, the accept loop
//! (with hyper's header deadline) and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use cache_core::BoxError;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::app::AppState;
use crate::{App, Config, Limits};

/// A running server; see [`serve`](crate::serve).
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    app: App,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    sweeper: JoinHandle<()>,
}

impl Server {
    /// Listens on `config.addr` (port 0: a free port), then seeds `app`, and
    /// starts the sweeper. Listening first: `/healthz` answers during a long
    /// seed, `/readyz` once it is done.
    pub(crate) async fn start(app: App, config: &Config) -> Result<Server, BoxError> {
        let listener = TcpListener::bind(config.addr).await?;
        let addr = listener.local_addr()?;
        let router = app.router();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(accept_loop(listener, router, config.limits, stopped));
        if let Err(e) = app.seed().await {
            let _ = stop.send(());
            let _ = task.await;
            return Err(e);
        }
        let sweeper = spawn_sweeper(app.state.clone(), config.sweep_interval);
        Ok(Server {
            addr,
            app,
            stop: Some(stop),
            task,
            sweeper,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The application behind it.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Graceful shutdown: ends the event streams (`/api/events`), stops
    /// accepting connections (the listener is closed), closes idle keep-alive
    /// connections, lets requests in flight finish (each is bounded by the
    /// request deadline), then stops the sweeper and the embedded S3.
    pub async fn shutdown(mut self) {
        self.app.state.events.close();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
        self.sweeper.abort();
        // Leave the bus: the other instances stop waiting for this one at once.
        if let Some(synced) = self.app.state.urls.synced() {
            synced.bus().shutdown().await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.app.state.events.close();
        self.task.abort();
        self.sweeper.abort();
    }
}

/// Deletes replaced picture versions every `interval` (see [`App::sweep`]).
fn spawn_sweeper(state: Arc<AppState>, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(e) = state.urls.sweep().await {
                // Names the store operation, never a credential.
                eprintln!("profile-server: sweeping old picture versions failed: {e}");
            }
        }
    })
}

/// Serves HTTP/1.1 connections until `stopped`, then shuts down gracefully.
///
/// Not `axum::serve`: it has no header deadline. Here hyper closes a connection
/// whose request headers do not arrive within `limits.header_timeout`; the
/// body and whole-request deadlines are in the router (`request_deadline`,
/// `put_avatar`).
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let socket = match accepted {
                    Ok((socket, _)) => socket,
                    Err(_) => {
                        // Out of file descriptors, or a connection reset before
                        // accept: wait a moment rather than spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let service = TowerToHyperService::new(router.clone());
                let conn = graceful.watch(http.serve_connection(TokioIo::new(socket), service));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut stopped => break,
        }
    }
    drop(listener);
    // Idle connections close now; a request in flight finishes first, bounded
    // by its deadline (plus a moment to write the answer).
    let drain = limits.request_timeout + Duration::from_secs(1);
    let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
}
