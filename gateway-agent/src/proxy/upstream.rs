//! Upstream connections: pooled keep-alive HTTP/1.1 and multiplexed h2c connections per
//! endpoint, and the weighted choice of backend and endpoint.
//!
//! Each upstream connection is one hyper `client::conn` connection driven by its own task. An
//! HTTP/1.1 connection is taken from its endpoint's idle list for one request and goes back when
//! the response body has been read to its end (the [`ResponseBody`] wrapper does it), so a
//! request costs no pool task and no extra wake-up; an h2c endpoint has one shared connection.
//! [`Upstreams::retain`] closes the idle connections of endpoints the model no longer has.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use gateway_model::http::{Backend, Filter};
use http::{Request, Response, Uri, uri::Authority};
use http_body_util::BodyExt;
use hyper::{
    body::{Body as _, Frame, Incoming, SizeHint},
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::handler::Body;

/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle HTTP/1.1 connection unused this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed or timed out.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The HTTP handshake or the exchange failed.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// The upstream connection pools (cheap to clone: they share their storage).
#[derive(Clone, Default)]
pub struct Upstreams {
    pools: Arc<Pools>,
}

#[derive(Default)]
struct Pools {
    /// Idle HTTP/1.1 connections per endpoint, most recently used last.
    http1: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    /// The h2c connection per endpoint.
    h2c: Mutex<HashMap<SocketAddr, H2Slot>>,
}

struct Idle {
    tx: http1::SendRequest<Body>,
    since: Instant,
}

struct H2Slot {
    tx: Option<http2::SendRequest<Body>>,
    authority: Authority,
    /// Held while connecting, so concurrent requests share one new connection.
    connecting: Arc<tokio::sync::Mutex<()>>,
}

impl Upstreams {
    /// Empty pools.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends `req` (origin-form URI, Host set) to `endpoint` over HTTP/1.1, on an idle pooled
    /// connection or a new one. A pooled connection that turns out closed before the request
    /// went out is replaced, as the request was not sent.
    pub async fn send_http1(
        &self,
        endpoint: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        loop {
            let (mut tx, reused) = match self.checkout_http1(endpoint) {
                Some(tx) => (tx, true),
                // Boxed: connecting is rare and its future large.
                None => (Box::pin(self.connect_http1(endpoint)).await?, false),
            };
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    // An upgraded connection belongs to the tunnel now.
                    let back =
                        (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS).then(|| {
                            GiveBack {
                                pools: self.pools.clone(),
                                endpoint,
                                tx,
                            }
                        });
                    return Ok(resp.map(|inner| ResponseBody {
                        inner,
                        done: false,
                        back,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// Sends `req` (path and query only in its URI) to `endpoint` over h2c, on the endpoint's
    /// connection (opened when there is none or it closed).
    pub async fn send_h2c(
        &self,
        endpoint: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let mut fresh = false;
        loop {
            let (mut tx, authority) = match self.checkout_h2c(endpoint) {
                Some(found) => found,
                None => {
                    fresh = true;
                    Box::pin(self.connect_h2c(endpoint)).await?
                }
            };
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.authority = Some(authority);
            *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    return Ok(resp.map(|inner| ResponseBody {
                        inner,
                        done: false,
                        back: None,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => {
                        self.forget_h2c(endpoint, &tx);
                        req = unsent;
                    }
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    fn checkout_http1(&self, endpoint: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut pools = self.pools.http1.lock().unwrap_or_else(|e| e.into_inner());
        let idle = pools.get_mut(&endpoint)?;
        // Most recently used first; closed ones are dropped, busy ones (still finishing their
        // last exchange) stay for later.
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].tx.is_closed() {
                idle.swap_remove(i);
            } else if idle[i].tx.is_ready() {
                return Some(idle.swap_remove(i).tx);
            }
        }
        None
    }

    async fn connect_http1(
        &self,
        endpoint: SocketAddr,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let io = connect(endpoint).await?;
        let (tx, conn) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%endpoint, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    fn checkout_h2c(&self, endpoint: SocketAddr) -> Option<(http2::SendRequest<Body>, Authority)> {
        let pools = self.pools.h2c.lock().unwrap_or_else(|e| e.into_inner());
        let slot = pools.get(&endpoint)?;
        let tx = slot.tx.as_ref().filter(|tx| !tx.is_closed())?;
        Some((tx.clone(), slot.authority.clone()))
    }

    async fn connect_h2c(
        &self,
        endpoint: SocketAddr,
    ) -> Result<(http2::SendRequest<Body>, Authority), UpstreamError> {
        let connecting = {
            let mut pools = self.pools.h2c.lock().unwrap_or_else(|e| e.into_inner());
            pools
                .entry(endpoint)
                .or_insert_with(|| H2Slot {
                    tx: None,
                    authority: Authority::try_from(endpoint.to_string())
                        .unwrap_or_else(|_| Authority::from_static("upstream")),
                    connecting: Arc::new(tokio::sync::Mutex::new(())),
                })
                .connecting
                .clone()
        };
        let _connecting = connecting.lock().await;
        // Someone else may have connected while this request waited.
        if let Some(found) = self.checkout_h2c(endpoint) {
            return Ok(found);
        }
        let io = connect(endpoint).await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%endpoint, error = %e, "upstream h2c connection ended with an error");
            }
        });
        let mut pools = self.pools.h2c.lock().unwrap_or_else(|e| e.into_inner());
        let slot = pools
            .get_mut(&endpoint)
            .expect("the slot was inserted above");
        slot.tx = Some(tx.clone());
        Ok((tx, slot.authority.clone()))
    }

    /// Drops the endpoint's h2c connection if it is still `tx` (it refused a request).
    fn forget_h2c(&self, endpoint: SocketAddr, tx: &http2::SendRequest<Body>) {
        let mut pools = self.pools.h2c.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = pools.get_mut(&endpoint)
            && slot
                .tx
                .as_ref()
                .is_some_and(|t| t.is_closed() || tx.is_closed())
        {
            slot.tx = None;
        }
    }

    /// Closes the connections of endpoints that `keep` does not contain (endpoints the model no
    /// longer has), and HTTP/1.1 connections idle for longer than the idle timeout.
    pub fn retain(&self, keep: &HashSet<SocketAddr>) {
        let now = Instant::now();
        let mut http1 = self.pools.http1.lock().unwrap_or_else(|e| e.into_inner());
        http1.retain(|addr, idle| {
            idle.retain(|i| !i.tx.is_closed() && now.duration_since(i.since) < IDLE_TIMEOUT);
            keep.contains(addr) && !idle.is_empty()
        });
        drop(http1);
        let mut h2c = self.pools.h2c.lock().unwrap_or_else(|e| e.into_inner());
        h2c.retain(|addr, slot| {
            let live = slot.tx.as_ref().is_some_and(|t| !t.is_closed());
            (keep.contains(addr) && live) || Arc::strong_count(&slot.connecting) > 1
        });
    }
}

/// Every endpoint a model can send to: the backends of every rule, mirrors included.
pub fn model_endpoints(model: &gateway_model::Model) -> HashSet<SocketAddr> {
    fn add(set: &mut HashSet<SocketAddr>, filters: &[Filter]) {
        for f in filters {
            if let Filter::RequestMirror { backend, .. } = f {
                set.extend(backend.endpoints.iter().copied());
            }
        }
    }
    let mut set = HashSet::new();
    for l in &model.http {
        for host in &l.hosts {
            for rule in &host.rules {
                add(&mut set, &rule.filters);
                for b in &rule.backends {
                    set.extend(b.endpoints.iter().copied());
                    add(&mut set, &b.filters);
                }
            }
        }
    }
    set
}

async fn connect(endpoint: SocketAddr) -> Result<TokioIo<tokio::net::TcpStream>, UpstreamError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(endpoint))
        .await
        .map_err(|_| UpstreamError::Connect(std::io::ErrorKind::TimedOut.into()))?
        .map_err(UpstreamError::Connect)?;
    let _ = stream.set_nodelay(true);
    Ok(TokioIo::new(stream))
}

/// Puts an HTTP/1.1 connection back into its endpoint's idle list.
struct GiveBack {
    pools: Arc<Pools>,
    endpoint: SocketAddr,
    tx: http1::SendRequest<Body>,
}

impl GiveBack {
    fn give_back(self) {
        if self.tx.is_closed() {
            return;
        }
        let mut pools = self.pools.http1.lock().unwrap_or_else(|e| e.into_inner());
        pools.entry(self.endpoint).or_default().push(Idle {
            tx: self.tx,
            since: Instant::now(),
        });
    }
}

/// An upstream response body. For HTTP/1.1 it returns its connection to the pool once the body
/// has been read to the end; a body dropped before its end takes the connection with it (hyper
/// closes a connection whose response was not read).
pub struct ResponseBody {
    inner: Incoming,
    done: bool,
    back: Option<GiveBack>,
}

impl ResponseBody {
    /// As the proxy's body type.
    pub fn boxed(self) -> Body {
        BodyExt::boxed(self)
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.done = true,
            Some(Ok(_)) => this.done = this.inner.is_end_stream(),
            Some(Err(_)) => this.back = None,
        }
        if this.done
            && let Some(back) = this.back.take()
        {
            back.give_back();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body nobody polled because it was empty (HEAD, 204, 304, Content-Length: 0) is done.
        if (self.done || self.inner.is_end_stream())
            && let Some(back) = self.back.take()
        {
            back.give_back();
        }
    }
}

/// Picks a backendRef by weight (weight 0 never), then a ready endpoint uniformly.
pub fn pick(backends: &[Backend]) -> Option<&Backend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut n = fastrand::u64(0..total);
    for b in backends {
        let w = u64::from(b.weight);
        if n < w {
            return Some(b);
        }
        n -= w;
    }
    None
}

/// A uniformly chosen endpoint of a backend, if it has any.
pub fn endpoint(backend: &Backend) -> Option<SocketAddr> {
    if backend.endpoints.is_empty() {
        return None;
    }
    Some(backend.endpoints[fastrand::usize(0..backend.endpoints.len())])
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::Full;

    use super::*;

    /// A backend on loopback answering "ok" over HTTP/1.1 (or h2c), counting the connections it
    /// accepted and the ones that closed.
    async fn backend(h2c: bool) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (a, c) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    });
                    let io = TokioIo::new(stream);
                    let _ = if h2c {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await
                    } else {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (addr, accepted, closed)
    }

    fn request(method: http::Method) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri("/")
            .header(http::header::HOST, "backend")
            .body(super::super::handler::empty())
            .unwrap()
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}");
    }

    #[tokio::test]
    async fn http1_connections_are_reused_and_closed_with_their_endpoint() {
        let (addr, accepted, closed) = backend(false).await;
        let up = Upstreams::new();
        for method in [http::Method::GET, http::Method::HEAD, http::Method::GET] {
            let resp = up.send_http1(addr, request(method.clone())).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let want: &[u8] = if method == http::Method::HEAD {
                b""
            } else {
                b"ok"
            };
            assert_eq!(body, want);
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one keep-alive connection"
        );
        // A body dropped unread takes its connection with it.
        drop(
            up.send_http1(addr, request(http::Method::GET))
                .await
                .unwrap(),
        );
        eventually("the unread connection closes", || {
            closed.load(Ordering::SeqCst) == 1
        })
        .await;
        let resp = up
            .send_http1(addr, request(http::Method::GET))
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // Endpoints the model no longer has lose their idle connections.
        up.retain(&HashSet::from([addr]));
        assert_eq!(
            closed.load(Ordering::SeqCst),
            1,
            "a kept endpoint keeps its connection"
        );
        up.retain(&HashSet::new());
        eventually("the removed endpoint's connection closes", || {
            closed.load(Ordering::SeqCst) == 2
        })
        .await;
    }

    #[tokio::test]
    async fn h2c_requests_share_one_connection() {
        let (addr, accepted, closed) = backend(true).await;
        let up = Upstreams::new();
        let requests = (0..8).map(|_| {
            let up = up.clone();
            async move {
                let mut req = request(http::Method::GET);
                *req.version_mut() = http::Version::HTTP_2;
                let resp = up.send_h2c(addr, req).await.unwrap();
                resp.into_body().collect().await.unwrap().to_bytes()
            }
        });
        for body in futures::future::join_all(requests).await {
            assert_eq!(body, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        up.retain(&HashSet::new());
        eventually("the removed endpoint's connection closes", || {
            closed.load(Ordering::SeqCst) == 1
        })
        .await;
    }

    fn backend_ref(name: &str, weight: u32) -> Backend {
        Backend {
            name: name.into(),
            weight,
            endpoints: Arc::new(vec!["127.0.0.1:1".parse().unwrap()]),
            h2c: false,
            filters: Vec::new(),
            resolved: true,
        }
    }

    #[test]
    fn weights_are_honoured_and_zero_never_picked() {
        let backends = [
            backend_ref("a", 80),
            backend_ref("b", 20),
            backend_ref("never", 0),
        ];
        let mut counts = std::collections::HashMap::new();
        for _ in 0..10_000 {
            *counts
                .entry(pick(&backends).unwrap().name.clone())
                .or_insert(0) += 1;
        }
        assert!(!counts.contains_key("never"));
        let a = counts["a"];
        assert!(
            (7_500..8_500).contains(&a),
            "80% of 10k within tolerance: {a}"
        );
        assert!(
            pick(&[backend_ref("z", 0)]).is_none(),
            "all-zero weights pick nothing"
        );
    }
}
