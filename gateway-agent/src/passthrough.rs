//! TLS passthrough: for each TLS listener (mode Passthrough) of the model, accept TCP, read the
//! ClientHello *without consuming it* (MSG_PEEK), steer by its SNI to a weighted backend of the
//! matching TLSRoute, then relay the bytes both ways. The backend terminates TLS, so the client
//! sees the backend's own certificate. No SNI, an unknown SNI, a malformed or oversized hello, or
//! a client that stalls: the connection is closed.
//!
//! This is the userspace copy mode (`--passthrough-splice=userspace`); the in-kernel sockmap
//! splice is not implemented yet.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use gateway_model::{Model, model::WeightedEndpoint};
use gateway_passthrough::sni::{DEFAULT_MAX_HELLO, HelloError, parse_client_hello};
use tokio::net::{TcpListener, TcpStream};

use crate::sockets::SocketSet;

/// How long a client has to send its whole ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The passthrough acceptor.
pub struct Passthrough {
    model: Arc<ArcSwap<Model>>,
    sockets: SocketSet,
}

impl Passthrough {
    /// Serving nothing yet.
    pub fn new() -> Self {
        Passthrough {
            model: Arc::new(ArcSwap::from_pointee(Model::default())),
            sockets: SocketSet::new("TLS passthrough"),
        }
    }

    /// Serves the passthrough listeners of `model`.
    pub async fn apply(&self, model: Arc<Model>) -> Vec<anyhow::Error> {
        let wanted: Vec<SocketAddr> = model.passthrough.iter().map(|l| l.address).collect();
        self.model.store(model);
        let shared = self.model.clone();
        self.sockets
            .reconcile(&wanted, |listener, addr| {
                tokio::spawn(accept_loop(listener, addr, shared.clone()))
            })
            .await
    }

    /// Stops accepting.
    pub async fn shutdown(&self) {
        self.sockets.shutdown().await;
    }
}

async fn accept_loop(listener: TcpListener, addr: SocketAddr, model: Arc<ArcSwap<Model>>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let model = model.clone();
        tokio::spawn(async move {
            match steer(&client, addr, &model).await {
                Ok((sni, backend)) => relay(client, peer, &sni, backend).await,
                Err(why) => tracing::debug!(%peer, %addr, "passthrough connection refused: {why}"),
            }
        });
    }
}

/// Peeks at the ClientHello until it parses, and picks the backend for its SNI.
async fn steer(
    client: &TcpStream,
    addr: SocketAddr,
    model: &ArcSwap<Model>,
) -> Result<(String, SocketAddr), String> {
    let mut buf = vec![0u8; DEFAULT_MAX_HELLO];
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        let mut last_len = 0;
        loop {
            client.readable().await.map_err(|e| e.to_string())?;
            let n = client.peek(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("client closed before its ClientHello".to_string());
            }
            match parse_client_hello(&buf[..n], DEFAULT_MAX_HELLO) {
                Ok(hello) => return Ok(hello),
                Err(HelloError::Incomplete(_)) if n < buf.len() => {
                    if n == last_len {
                        // Nothing new yet: wait a little rather than spin on the same bytes.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    last_len = n;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "ClientHello not received in time".to_string())??;
    let sni = hello.server_name.ok_or("ClientHello without SNI")?;
    let model = model.load();
    let listener = model
        .passthrough
        .iter()
        .find(|l| l.address == addr)
        .ok_or("listener gone")?;
    let route = listener
        .route_for(&sni)
        .ok_or_else(|| format!("no TLSRoute for SNI {sni}"))?;
    let backend =
        pick(&route.backends).ok_or_else(|| format!("route {} has no backend", route.route))?;
    Ok((sni, backend))
}

/// Weighted choice among endpoints.
fn pick(endpoints: &[WeightedEndpoint]) -> Option<SocketAddr> {
    let total: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut n = fastrand::u64(0..total);
    for e in endpoints {
        if n < u64::from(e.weight) {
            return Some(e.address);
        }
        n -= u64::from(e.weight);
    }
    None
}

/// Connects to the backend and copies both ways (the peeked hello is still in the client's
/// socket, so the backend receives it first). EOF on one side is passed on as a half-close.
async fn relay(mut client: TcpStream, peer: SocketAddr, sni: &str, backend: SocketAddr) {
    let mut upstream =
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(backend)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, %backend, sni, error = %e, "backend unreachable");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, %backend, sni, "backend connect timed out");
                return;
            }
        };
    let _ = upstream.set_nodelay(true);
    let _ = client.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            tracing::debug!(%peer, %backend, sni, up, down, "passthrough connection closed")
        }
        Err(e) => tracing::debug!(%peer, %backend, sni, error = %e, "passthrough connection reset"),
    }
}
