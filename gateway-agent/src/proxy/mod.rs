//! The L7 proxy: one hyper server (HTTP/1.1 and h2c prior knowledge) per HTTP listener socket of
//! the model. Every request reads the model once from an `ArcSwap`, so a reload swaps routes
//! atomically while requests in flight finish on the model they started with; listener sockets
//! whose address stays are never closed by a reload.

mod filters;
mod handler;
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
}

/// The proxy: its listener sockets and the shared state.
pub struct Proxy {
    shared: Arc<Shared>,
    sockets: SocketSet,
}

impl Proxy {
    /// A proxy serving nothing yet.
    pub fn new() -> Self {
        Proxy {
            shared: Arc::new(Shared {
                model: ArcSwap::from_pointee(Model::default()),
                upstreams: upstream::Upstreams::new(),
            }),
            sockets: SocketSet::new("HTTP"),
        }
    }

    /// Serves `model`: swaps the routes in, then binds sockets for new plain-HTTP listeners and
    /// closes the ones no longer in the model. A socket that cannot be bound is reported; the
    /// others keep serving.
    pub async fn apply(&self, model: Arc<Model>) -> Vec<anyhow::Error> {
        let wanted: Vec<SocketAddr> = model
            .http
            .iter()
            .filter(|l| l.tls.is_none())
            .map(|l| l.address)
            .collect();
        self.shared.model.store(model);
        let shared = self.shared.clone();
        self.sockets
            .reconcile(&wanted, |listener, addr| {
                tokio::spawn(accept_loop(listener, addr, shared.clone()))
            })
            .await
    }

    /// Stops accepting on every socket.
    pub async fn shutdown(&self) {
        self.sockets.shutdown().await;
    }
}

async fn accept_loop(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
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
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                handler::handle(shared.clone(), addr, peer, req)
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                // Slowloris: a client has this long to send its request head.
                .header_read_timeout(std::time::Duration::from_secs(10))
                .max_headers(100);
            builder.http2().max_concurrent_streams(256);
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
