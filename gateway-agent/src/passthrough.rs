//! TLS passthrough: for each TLS listener (mode Passthrough) of the model, accept TCP, read the
//! ClientHello *without consuming it* (MSG_PEEK), steer by its SNI to a weighted backend of the
//! matching TLSRoute, then relay the bytes both ways. The backend terminates TLS, so the client
//! sees the backend's own certificate. No SNI, an unknown SNI, a malformed or oversized hello, or
//! a client that stalls: the connection is closed.
//!
//! Two relay modes: `sockmap` (default) puts both sockets into the kernel's `SPLICE_SOCKS`
//! sockhash, where an SK_SKB verdict program moves every byte, the peeked ClientHello and any
//! early data behind it included, from one to the other without it reaching userspace;
//! `userspace` (also the fallback when the splice cannot be loaded) copies with
//! `copy_bidirectional`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use gateway_model::{Model, model::WeightedEndpoint};
use gateway_passthrough::sni::{DEFAULT_MAX_HELLO, HelloError, parse_client_hello};
use tokio::net::{TcpListener, TcpStream};

use crate::{dataplane::Splicer, sockets::SocketSet};

/// How long a client has to send its whole ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Labels of the passthrough counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct RouteLabels {
    /// `namespace/name` of the TLSRoute, or `none` for refused connections.
    route: String,
}

/// Connection and byte counters of the passthrough acceptor.
#[derive(Clone, Default)]
struct PassthroughMetrics {
    connections: prometheus_client::metrics::family::Family<
        RouteLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    bytes: prometheus_client::metrics::family::Family<
        RouteLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

/// The acceptor's metrics for /metrics: its own counters plus, per TLSRoute, the bytes the
/// kernel splice moved (read from `SPLICE_STATS` at scrape time).
pub struct PassthroughStats(Arc<Shared>);

/// Spliced bytes per TLSRoute, as read for one scrape.
#[derive(Debug)]
struct SplicedBytes(Vec<(String, u64)>);

impl prometheus_client::collector::Collector for SplicedBytes {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let mut family = encoder.encode_descriptor(
            "nodegate_passthrough_spliced_bytes",
            "Bytes the kernel splice (SK_SKB verdict) moved for TLS passthrough, both directions, by TLSRoute.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (route, bytes) in &self.0 {
            prometheus_client::metrics::counter::ConstCounter::new(*bytes)
                .encode(family.encode_family(&[("route", route.as_str())])?)?;
        }
        Ok(())
    }
}

impl crate::metrics::MetricsSource for PassthroughStats {
    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let metrics = &self.0.metrics;
        registry.register(
            "nodegate_passthrough_connections",
            "TLS passthrough connections, by TLSRoute (route=none: refused).",
            metrics.connections.clone(),
        );
        registry.register(
            "nodegate_passthrough_bytes",
            "Bytes relayed in userspace by TLS passthrough, both directions, by TLSRoute.",
            metrics.bytes.clone(),
        );
        if let Some(splicer) = &self.0.splicer {
            let ids: Vec<(String, u32)> = match self.0.route_ids.lock() {
                Ok(ids) => ids.iter().map(|(r, i)| (r.clone(), *i)).collect(),
                Err(_) => Vec::new(),
            };
            let spliced = ids
                .into_iter()
                .filter_map(|(route, id)| Some((route, splicer.spliced(id).ok()?.bytes)))
                .collect();
            registry.register_collector(Box::new(SplicedBytes(spliced)));
        }
    }
}

/// What every connection task shares.
struct Shared {
    model: ArcSwap<Model>,
    /// The in-kernel splice; None in userspace mode.
    splicer: Option<Splicer>,
    /// TLSRoute name → index of its splice counters.
    route_ids: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Counters for /metrics.
    metrics: PassthroughMetrics,
}

/// The passthrough acceptor.
pub struct Passthrough {
    shared: Arc<Shared>,
    sockets: SocketSet,
}

impl Passthrough {
    /// Serving nothing yet; `splicer` selects the in-kernel relay.
    pub fn new(splicer: Option<Splicer>) -> Self {
        Passthrough {
            shared: Arc::new(Shared {
                model: ArcSwap::from_pointee(Model::default()),
                splicer,
                route_ids: std::sync::Mutex::new(std::collections::HashMap::new()),
                metrics: PassthroughMetrics::default(),
            }),
            sockets: SocketSet::new("TLS passthrough"),
        }
    }

    /// Serves the passthrough listeners of `model`.
    pub async fn apply(&self, model: Arc<Model>) -> Vec<anyhow::Error> {
        let wanted: Vec<SocketAddr> = model.passthrough.iter().map(|l| l.address).collect();
        self.shared.model.store(model);
        let shared = self.shared.clone();
        self.sockets
            .reconcile(&wanted, |listener, addr| {
                tokio::spawn(accept_loop(listener, addr, shared.clone()))
            })
            .await
    }

    /// The acceptor's counters, for /metrics.
    pub fn metrics(&self) -> PassthroughStats {
        PassthroughStats(self.shared.clone())
    }

    /// Stops accepting.
    pub async fn shutdown(&self) {
        self.sockets.shutdown().await;
    }
}

async fn accept_loop(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            match steer(&client, addr, &shared.model).await {
                Ok(steered) => {
                    let labels = RouteLabels {
                        route: steered.route.clone(),
                    };
                    shared.metrics.connections.get_or_create(&labels).inc();
                    let Some(upstream) = connect(peer, &steered).await else {
                        return;
                    };
                    let copied = match &shared.splicer {
                        Some(splicer) => {
                            let route = route_id(&shared, &steered.route);
                            relay_spliced(splicer, client, upstream, peer, &steered, route).await
                        }
                        None => relay(client, upstream, peer, &steered).await,
                    };
                    shared.metrics.bytes.get_or_create(&labels).inc_by(copied);
                }
                Err(why) => {
                    let labels = RouteLabels {
                        route: "none".into(),
                    };
                    shared.metrics.connections.get_or_create(&labels).inc();
                    tracing::debug!(%peer, %addr, "passthrough connection refused: {why}")
                }
            }
        });
    }
}

/// Where a connection goes.
struct Steered {
    sni: String,
    backend: SocketAddr,
    /// Bytes of the ClientHello records, still unread in the client socket.
    hello_len: usize,
    /// `namespace/name` of the TLSRoute.
    route: String,
}

/// A small dense id per TLSRoute for the splice counters.
fn route_id(shared: &Shared, route: &str) -> u32 {
    let Ok(mut ids) = shared.route_ids.lock() else {
        return 0;
    };
    let next = ids.len() as u32;
    *ids.entry(route.to_string())
        .or_insert(next.min(gateway_common::listener::MAX_LISTENERS - 1))
}

/// Peeks at the ClientHello until it parses, and picks the backend for its SNI.
async fn steer(
    client: &TcpStream,
    addr: SocketAddr,
    model: &ArcSwap<Model>,
) -> Result<Steered, String> {
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
    Ok(Steered {
        sni,
        backend,
        hello_len: hello.consumed,
        route: route.route.clone(),
    })
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

/// Connects to the chosen backend (bounded wait).
async fn connect(peer: SocketAddr, s: &Steered) -> Option<TcpStream> {
    match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(s.backend)).await {
        Ok(Ok(upstream)) => {
            let _ = upstream.set_nodelay(true);
            Some(upstream)
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, backend = %s.backend, sni = %s.sni, error = %e, "backend unreachable");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, backend = %s.backend, sni = %s.sni, "backend connect timed out");
            None
        }
    }
}

/// Copies both ways in userspace until both sides are done; EOF on one side is passed on as a
/// half-close. Whatever is still unread in the client socket (the peeked hello) reaches the
/// backend first. Returns the bytes relayed (both directions).
async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    peer: SocketAddr,
    s: &Steered,
) -> u64 {
    let _ = client.set_nodelay(true);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            tracing::debug!(%peer, backend = %s.backend, sni = %s.sni, up, down, "passthrough connection closed");
            up + down
        }
        Err(e) => {
            tracing::debug!(%peer, backend = %s.backend, sni = %s.sni, error = %e, "passthrough connection reset");
            reset_on_close(&client);
            reset_on_close(&upstream);
            0
        }
    }
}

/// Makes closing `socket` send a RST instead of a FIN (SO_LINGER with a zero timeout), so a
/// reset on one side of a relayed connection reaches the other side as a reset.
fn reset_on_close(socket: &impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

/// Bytes waiting unread in a socket's receive queue (SIOCINQ).
fn unread_bytes(socket: &TcpStream) -> usize {
    use std::os::fd::AsRawFd as _;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 { n.max(0) as usize } else { 0 }
}

/// The in-kernel relay. The agent never reads the client: the ClientHello it peeked, and any
/// bytes already behind it (TLS 1.3 early data), are still in the client's receive queue when
/// both sockets go into `SPLICE_SOCKS`. The verdict program only sees bytes as they arrive, so
/// the queue is then handed to it by raising SO_RCVLOWAT's data-ready check
/// ([`hand_queue_to_verdict`]): the hello, early data and every later byte reach the backend
/// in order, moved by the kernel. This task only watches each side's TCP state, passes a FIN on
/// as a half-close, and takes the pair out of the maps when both are done. Returns the bytes it
/// relayed in userspace (0 unless the kernel would not take the queue; the spliced bytes are
/// counted by the kernel).
async fn relay_spliced(
    splicer: &Splicer,
    client: TcpStream,
    upstream: TcpStream,
    peer: SocketAddr,
    s: &Steered,
    route: u32,
) -> u64 {
    let _ = client.set_nodelay(true);
    let guard = match splicer.splice(&client, &upstream, route) {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(%peer, error = %format!("{e:#}"), "splice failed; relaying in userspace");
            return relay(client, upstream, peer, s).await;
        }
    };
    if !hand_queue_to_verdict(&client, s.hello_len) {
        // The kernel left the queued hello alone (a kernel whose SO_RCVLOWAT does not recheck
        // readiness). Nothing has been moved yet, so the pair leaves the maps and the bytes,
        // still queued, are copied in userspace.
        tracing::warn!(%peer, sni = %s.sni, "kernel did not take the queued ClientHello; relaying in userspace");
        drop(guard);
        return relay(client, upstream, peer, s).await;
    }
    // From here on userspace never reads either socket: a read could take bytes the verdict
    // program has not redirected yet and reorder the stream. It only watches each side's TCP
    // state (a FIN or a reset) and passes a half-close on once the other socket has taken every
    // byte the kernel redirected towards it. The sockets leave tokio's reactor for a
    // [`HangupWatch`], which wakes on those and not on every skb the verdict program takes.
    let (client, upstream) = match (client.into_std(), upstream.into_std()) {
        (Ok(c), Ok(u)) => (c, u),
        _ => return 0,
    };
    let watch = match HangupWatch::new(&[&client, &upstream]) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot watch spliced sockets; polling them");
            HangupWatch::none()
        }
    };
    let (mut client_done, mut upstream_done) = (false, false);
    loop {
        tokio::select! {
            r = watch.changed() => if r.is_err() { break },
            // A state change that raced the watch is still seen.
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let (c, u) = (peer_state(&client), peer_state(&upstream));
        if c == PeerState::Reset || u == PeerState::Reset {
            reset_on_close(&client);
            reset_on_close(&upstream);
            break;
        }
        if !client_done && c == PeerState::Finished {
            // Towards the backend: everything the kernel moved, the hello included.
            half_close(&guard, 0, &upstream).await;
            client_done = true;
        }
        if !upstream_done && u == PeerState::Finished {
            half_close(&guard, 1, &client).await;
            upstream_done = true;
        }
        if client_done && upstream_done {
            break;
        }
    }
    drop(guard);
    tracing::debug!(%peer, backend = %s.backend, sni = %s.sni, "spliced passthrough connection closed");
    0
}

/// Makes the verdict program take what already waits in a freshly spliced socket's receive
/// queue. Setting SO_RCVLOWAT runs TCP's data-ready check (`tcp_set_rcvlowat` calls
/// `tcp_data_ready`), which with the socket in a sockmap is the psock's reader: it runs the
/// verdict over every queued skb, in order, under the socket lock, so bytes arriving meanwhile
/// queue behind them. Returns false if at least `queued` bytes are still unread afterwards,
/// i.e. this kernel did not hand them over.
fn hand_queue_to_verdict(socket: &TcpStream, queued: usize) -> bool {
    crate::sockets::set_int_option(socket, libc::SOL_SOCKET, libc::SO_RCVLOWAT, 1).is_ok()
        && unread_bytes(socket) < queued
}

/// What a spliced socket's peer has done, from the socket's TCP state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerState {
    /// Still sending.
    Open,
    /// Sent its FIN.
    Finished,
    /// Reset the connection, or the socket is gone.
    Reset,
}

/// TCP_INFO of a socket.
fn tcp_info(socket: &impl std::os::fd::AsFd) -> Option<libc::tcp_info> {
    use std::os::fd::AsRawFd as _;
    let socket = socket.as_fd();
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}

fn peer_state(socket: &impl std::os::fd::AsFd) -> PeerState {
    // include/net/tcp_states.h
    const TCP_CLOSE: u8 = 7;
    const TCP_CLOSE_WAIT: u8 = 8;
    const TCP_LAST_ACK: u8 = 9;
    const TCP_CLOSING: u8 = 11;
    const TCP_TIME_WAIT: u8 = 6;
    match socket2::SockRef::from(socket).take_error() {
        Ok(None) => {}
        Ok(Some(e)) | Err(e) => {
            tracing::debug!(error = %e, "spliced socket error");
            return PeerState::Reset;
        }
    }
    // A reset leaves its error on the socket (checked above); TCP_CLOSE without one is an orderly
    // end: a socket that reaches TIME_WAIT, or whose last ACK came, reports TCP_CLOSE.
    match tcp_info(socket).map(|i| i.tcpi_state) {
        None => PeerState::Reset,
        Some(TCP_CLOSE | TCP_CLOSE_WAIT | TCP_LAST_ACK | TCP_CLOSING | TCP_TIME_WAIT) => {
            PeerState::Finished
        }
        Some(_) => PeerState::Open,
    }
}

/// Bytes written into a TCP socket so far: sent once (retransmissions not counted twice) or
/// still queued unsent.
fn bytes_written(socket: &impl std::os::fd::AsFd) -> Option<u64> {
    let i = tcp_info(socket)?;
    Some(i.tcpi_bytes_sent - i.tcpi_bytes_retrans + u64::from(i.tcpi_notsent_bytes))
}

/// Passes a FIN from socket `from` (0: client, 1: upstream) on to `to` once `to` has taken every
/// byte the kernel redirected towards it: redirected bytes wait in the kernel's psock queue for
/// a moment, and a shutdown before they are written would lose them. Gives up waiting after a
/// few seconds (a peer that stopped reading), and shuts down anyway.
async fn half_close(guard: &crate::dataplane::Spliced<'_>, from: usize, to: &std::net::TcpStream) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let owed = guard.redirected().map(|r| r[from]);
        match (owed, bytes_written(to)) {
            (Ok(owed), Some(written)) if written >= owed => break,
            (Err(_), _) | (_, None) => break,
            _ if tokio::time::Instant::now() >= deadline => {
                tracing::debug!("spliced bytes still queued at half-close; shutting down anyway");
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Wakes when a spliced socket's TCP state may have changed (a FIN, a reset, the socket closed)
/// and not on its data. A socket in a sockmap still wakes its waiters for every skb the verdict
/// program takes (`sk_psock_verdict_data_ready` ends in the socket's saved data-ready), and
/// registered in tokio's reactor for readability each of those wake-ups ran the agent: a
/// quarter of a CPU-second per GiB spliced. An epoll instance of its own that asks only for
/// EPOLLRDHUP (hang-ups and errors are always reported) is skipped by the kernel's wake-up filter
/// for data (EPOLLIN) and write-space (EPOLLOUT) wake-ups; the state-change wake-up carries no
/// event mask and gets through. Tokio watches the epoll descriptor itself.
struct HangupWatch {
    epoll: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

impl HangupWatch {
    /// An epoll instance watching `sockets` for EPOLLRDHUP, edge-triggered.
    fn new(sockets: &[&std::net::TcpStream]) -> std::io::Result<Self> {
        use std::os::fd::{AsRawFd as _, FromRawFd as _};
        // SAFETY: epoll_create1 returns a new descriptor we own, or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nothing else owns.
        let epoll = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        for socket in sockets {
            let mut event = libc::epoll_event {
                events: (libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: 0,
            };
            // SAFETY: both descriptors are open; the kernel copies the event.
            let rc =
                unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, socket.as_raw_fd(), &mut event) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: the OwnedFd stays open, and the same descriptor, for the AsyncFd's life.
        let epoll = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(epoll, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        Ok(Self { epoll: Some(epoll) })
    }

    /// No watch: [`changed`](Self::changed) never returns, and the caller's timer polls.
    fn none() -> Self {
        Self { epoll: None }
    }

    /// Returns once a watched socket has reported a hang-up or an error since the last call.
    async fn changed(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;
        let Some(epoll) = &self.epoll else {
            return std::future::pending().await;
        };
        let mut ready = epoll.readable().await?;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
        // Take the reports off the ready list (edge-triggered: they are not requeued), so the
        // descriptor's own readiness edge re-arms; tokio keeps any edge that came meanwhile.
        // SAFETY: the buffer holds `events.len()` entries.
        unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), 2, 0) };
        ready.clear_ready();
        Ok(())
    }
}
