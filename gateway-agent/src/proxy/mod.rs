//! The L7 proxy: one hyper server (HTTP/1.1 and h2c prior knowledge) per HTTP listener socket of
//! the model. Every request reads the model once from an `ArcSwap`, so a reload swaps routes
//! atomically while requests in flight finish on the model they started with; listener sockets
//! whose address stays are never closed by a reload.

mod cors;
mod filters;
mod handler;
mod metrics;
mod tls;
mod upstream;

use std::{net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use gateway_model::Model;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::sockets::SocketSet;

/// What every connection task shares.
pub struct Shared {
    /// The current model.
    pub model: ArcSwap<Model>,
    /// Upstream connection pools.
    pub upstreams: upstream::Upstreams,
    /// Parsed certificates of the HTTPS listeners.
    pub certs: Arc<ArcSwap<tls::CertTable>>,
    /// Request counts and latencies.
    pub metrics: metrics::ProxyMetrics,
    /// Whether every request is logged (target `access`).
    pub access_log: bool,
    /// Flips to true when the proxy drains: connections finish their requests and close.
    pub draining: tokio::sync::watch::Sender<bool>,
    /// Connections open right now.
    pub open_connections: std::sync::atomic::AtomicUsize,
    /// Whether the task closing idle upstream connections runs.
    reaper: std::sync::Once,
}

/// The proxy: its listener sockets and the shared state.
pub struct Proxy {
    shared: Arc<Shared>,
    sockets: SocketSet,
}

impl Proxy {
    /// A proxy serving nothing yet; `access_log` logs one line per request.
    pub fn new(access_log: bool) -> Self {
        Proxy {
            shared: Arc::new(Shared {
                model: ArcSwap::from_pointee(Model::default()),
                upstreams: upstream::Upstreams::new(),
                certs: Arc::new(ArcSwap::from_pointee(tls::CertTable::new())),
                metrics: metrics::ProxyMetrics::new(),
                access_log,
                draining: tokio::sync::watch::channel(false).0,
                open_connections: std::sync::atomic::AtomicUsize::new(0),
                reaper: std::sync::Once::new(),
            }),
            sockets: SocketSet::new("HTTP"),
        }
    }

    /// Serves `model`: swaps the routes in, then binds sockets for new plain-HTTP listeners and
    /// closes the ones no longer in the model. A socket that cannot be bound is reported; the
    /// others keep serving.
    pub async fn apply(&self, model: Arc<Model>) -> Vec<anyhow::Error> {
        let wanted: Vec<SocketAddr> = model.http.iter().map(|l| l.address).collect();
        let https: Vec<SocketAddr> = model
            .http
            .iter()
            .filter(|l| l.tls.is_some())
            .map(|l| l.address)
            .collect();
        self.shared.certs.store(Arc::new(tls::cert_table(&model)));
        // Endpoints the new model no longer has lose their pooled connections at once.
        self.shared
            .upstreams
            .retain(&upstream::model_endpoints(&model));
        self.shared.model.store(model);
        self.shared.reaper.call_once(|| {
            // Idle upstream connections also time out when nothing reloads.
            let weak = Arc::downgrade(&self.shared);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(upstream::IDLE_TIMEOUT / 2);
                loop {
                    tick.tick().await;
                    let Some(shared) = weak.upgrade() else { return };
                    let keep = upstream::model_endpoints(&shared.model.load());
                    shared.upstreams.retain(&keep);
                }
            });
        });
        let shared = self.shared.clone();
        self.sockets
            .reconcile(&wanted, |listener, addr| {
                let acceptor = https.contains(&addr).then(|| {
                    tokio_rustls::TlsAcceptor::from(tls::server_config(shared.certs.clone(), addr))
                });
                tokio::spawn(accept_loop(listener, addr, shared.clone(), acceptor))
            })
            .await
    }

    /// Graceful drain: stops accepting, lets requests in flight finish (connections close after
    /// their current request; HTTP/2 sends GOAWAY), and returns when every connection has closed or
    /// `grace` has passed.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        self.sockets.shutdown().await;
        self.shared.draining.send_replace(true);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let open = self
                .shared
                .open_connections
                .load(std::sync::atomic::Ordering::SeqCst);
            if open == 0 {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    open,
                    "drain grace period over; closing remaining connections"
                );
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The proxy's metric families, for `/metrics`.
    pub fn metrics(&self) -> metrics::ProxyMetrics {
        self.shared.metrics.clone()
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => serve(TokioIo::new(stream), shared, addr, peer, false).await,
                Some(acceptor) => {
                    // The handshake shares the slowloris budget of a request head.
                    let handshake = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    );
                    match handshake.await {
                        Ok(Ok(tls)) => serve(TokioIo::new(tls), shared, addr, peer, true).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN h2 over TLS) on one connection.
async fn serve<IO>(io: IO, shared: Arc<Shared>, addr: SocketAddr, peer: SocketAddr, https: bool)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use std::sync::atomic::Ordering;
    let mut draining = shared.draining.subscribe();
    if *draining.borrow() {
        return;
    }
    shared.open_connections.fetch_add(1, Ordering::SeqCst);
    let counter = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        handler::handle(shared.clone(), addr, peer, https, req)
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        // Slowloris: a client has this long to send its request head.
        .header_read_timeout(std::time::Duration::from_secs(10))
        .max_headers(100);
    builder.http2().max_concurrent_streams(256);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = async {
            // The watch guard is not Send: drop it before the arm awaits.
            let _ = draining.wait_for(|d| *d).await;
        } => {
            // Finish the request in flight, then close (HTTP/2: GOAWAY).
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    counter.open_connections.fetch_sub(1, Ordering::SeqCst);
}
