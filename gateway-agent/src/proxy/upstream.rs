//! Upstream connections: pooled keep-alive HTTP/1.1 and multiplexed h2c clients, and the
//! weighted choice of backend and endpoint.

use std::net::SocketAddr;

use gateway_model::http::Backend;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

/// The two client pools: HTTP/1.1 (keep-alive) and HTTP/2 cleartext (prior knowledge).
pub struct Upstreams {
    /// HTTP/1.1 pool.
    pub http1: Client<HttpConnector, super::handler::Body>,
    /// h2c pool (appProtocol h2c, gRPC).
    pub h2c: Client<HttpConnector, super::handler::Body>,
}

impl Upstreams {
    /// Fresh pools.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .build(connector.clone());
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        Upstreams { http1, h2c }
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
    use std::sync::Arc;

    use super::*;

    fn backend(name: &str, weight: u32) -> Backend {
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
        let backends = [backend("a", 80), backend("b", 20), backend("never", 0)];
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
            pick(&[backend("z", 0)]).is_none(),
            "all-zero weights pick nothing"
        );
    }
}
