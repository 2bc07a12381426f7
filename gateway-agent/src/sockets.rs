//! Listening sockets kept equal to a wanted set: new addresses are bound and served, vanished ones
//! closed, and addresses that stay are left alone (their connections never notice a reload).
//! Shared by the L7 proxy and the TLS passthrough acceptor.
//!
//! A wanted IPv4 wildcard (`0.0.0.0:port`, the default `--bind-address`) is served dual-stack: a
//! second, IPv6-only socket on `[::]:port` feeds the same listener, so clients of either family
//! reach it with their own addresses (no IPv4-mapped ones). Where IPv6 is unavailable, or the
//! wanted set names an IPv6 address on that port itself, only the IPv4 socket is bound.

use std::{collections::HashMap, net::SocketAddr};

use tokio::{net::TcpListener, sync::Mutex, task::JoinHandle};

/// A set of listening sockets, each served by its own task.
pub struct SocketSet {
    what: &'static str,
    /// Per wanted address, the accept tasks serving it (two for a dual-stack wildcard).
    tasks: Mutex<HashMap<SocketAddr, Vec<JoinHandle<()>>>>,
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
        tasks.retain(|addr, handles| {
            let keep = wanted.contains(addr);
            if !keep {
                tracing::info!(%addr, "{} listener closed", self.what);
                handles.iter().for_each(JoinHandle::abort);
            }
            keep
        });
        let mut errors = Vec::new();
        for &addr in wanted {
            if tasks.contains_key(&addr) {
                continue;
            }
            let listener = match bind(addr) {
                Ok(listener) => listener,
                Err(e) => {
                    errors.push(e.context(format!("binding {} listener {addr}", self.what)));
                    continue;
                }
            };
            let mut handles = vec![serve(listener, addr)];
            let mut families = "";
            if let Some(v6) = wildcard_v6_twin(addr, wanted) {
                match bind(v6) {
                    Ok(listener) => {
                        handles.push(serve(listener, addr));
                        families = " (and [::], IPv6 only)";
                    }
                    Err(e) => tracing::warn!(%addr, error = %format!("{e:#}"),
                        "{} listener serves IPv4 only: [::] could not be bound", self.what),
                }
            }
            tracing::info!(%addr, "{} listener serving{families}", self.what);
            tasks.insert(addr, handles);
        }
        errors
    }

    /// Stops accepting on every socket.
    pub async fn shutdown(&self) {
        for (_, handles) in self.tasks.lock().await.drain() {
            handles.iter().for_each(JoinHandle::abort);
        }
    }
}

/// The `[::]:port` socket that makes a wanted `0.0.0.0:port` dual-stack, unless the wanted set
/// has an IPv6 address on that port of its own (a wildcard would collide with it).
fn wildcard_v6_twin(addr: SocketAddr, wanted: &[SocketAddr]) -> Option<SocketAddr> {
    let SocketAddr::V4(v4) = addr else {
        return None;
    };
    if !v4.ip().is_unspecified() || wanted.iter().any(|w| w.is_ipv6() && w.port() == v4.port()) {
        return None;
    }
    Some(SocketAddr::new(
        std::net::Ipv6Addr::UNSPECIFIED.into(),
        v4.port(),
    ))
}

/// A listening socket with SO_REUSEADDR (so a restart does not wait for TIME_WAIT); IPv6 sockets
/// are IPv6-only, so an IPv4 socket on the same port can serve IPv4.
fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = tokio::net::TcpSocket::new_v6()?;
            set_v6_only(&socket)?;
            socket
        }
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(1024)?)
}

fn set_v6_only(socket: &tokio::net::TcpSocket) -> std::io::Result<()> {
    socket2::SockRef::from(socket).set_only_v6(true)
}

/// Sets an int-valued socket option socket2 does not cover (SO_RCVLOWAT's side effect,
/// SO_SNDBUFFORCE).
pub fn set_int_option(
    socket: &impl std::os::fd::AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: setsockopt reads one int from the pointer.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_ipv4_wildcard_gets_an_ipv6_twin() {
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        assert_eq!(
            wildcard_v6_twin(a("0.0.0.0:80"), &[a("0.0.0.0:80")]),
            Some(a("[::]:80"))
        );
        assert_eq!(
            wildcard_v6_twin(a("10.0.0.1:80"), &[a("10.0.0.1:80")]),
            None
        );
        assert_eq!(wildcard_v6_twin(a("[::]:80"), &[a("[::]:80")]), None);
        // An IPv6 address of its own on the port: no wildcard to collide with it.
        assert_eq!(
            wildcard_v6_twin(a("0.0.0.0:80"), &[a("0.0.0.0:80"), a("[fd00::1]:80")]),
            None
        );
        assert_eq!(
            wildcard_v6_twin(a("0.0.0.0:80"), &[a("0.0.0.0:80"), a("[fd00::1]:443")]),
            Some(a("[::]:80"))
        );
    }
}
