//! Listening sockets kept equal to a wanted set: new addresses are bound and served, vanished ones
//! closed, and addresses that stay are left alone (their connections never notice a reload).
//! Shared by the L7 proxy and the TLS passthrough acceptor.

use std::{collections::HashMap, net::SocketAddr};

use tokio::{net::TcpListener, sync::Mutex, task::JoinHandle};

/// A set of listening sockets, each served by its own task.
pub struct SocketSet {
    what: &'static str,
    tasks: Mutex<HashMap<SocketAddr, JoinHandle<()>>>,
}

impl SocketSet {
    /// An empty set; `what` names it in logs ("HTTP", "TLS passthrough").
    pub fn new(what: &'static str) -> Self {
        SocketSet {
            what,
            tasks: Mutex::new(HashMap::new()),
        }
    }

    /// Binds and serves the new addresses of `wanted` with `serve`, closes the ones not in it.
    /// Sockets that cannot be bound are returned as errors; the others keep serving.
    pub async fn reconcile(
        &self,
        wanted: &[SocketAddr],
        serve: impl Fn(TcpListener, SocketAddr) -> JoinHandle<()>,
    ) -> Vec<anyhow::Error> {
        let mut tasks = self.tasks.lock().await;
        tasks.retain(|addr, task| {
            let keep = wanted.contains(addr);
            if !keep {
                tracing::info!(%addr, "{} listener closed", self.what);
                task.abort();
            }
            keep
        });
        let mut errors = Vec::new();
        for &addr in wanted {
            if tasks.contains_key(&addr) {
                continue;
            }
            match bind(addr) {
                Ok(listener) => {
                    tracing::info!(%addr, "{} listener serving", self.what);
                    tasks.insert(addr, serve(listener, addr));
                }
                Err(e) => errors.push(e.context(format!("binding {} listener {addr}", self.what))),
            }
        }
        errors
    }

    /// Stops accepting on every socket.
    pub async fn shutdown(&self) {
        for (_, task) in self.tasks.lock().await.drain() {
            task.abort();
        }
    }
}

/// A listening socket with SO_REUSEADDR (so a restart does not wait for TIME_WAIT).
fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(1024)?)
}
