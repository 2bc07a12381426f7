//! Per-route and per-backend request counts and latency histograms of the proxy.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

/// Labels of a served request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `Kind namespace/name` of the route, or `none`.
    pub route: String,
    /// `namespace/service:port` of the backend, or `none` when none was reached.
    pub backend: String,
    /// Response status code.
    pub code: String,
}

/// Labels of a latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `Kind namespace/name` of the route, or `none`.
    pub route: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~8 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 15,
    ))
}

/// The proxy's metric families (cheap to clone: they share their storage).
#[derive(Clone)]
pub struct ProxyMetrics {
    /// Requests by route, backend and status code.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to the response head, by route, in seconds.
    pub latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Handles on the families' series, found by borrowed names: a request costs a few map
    /// lookups and no label strings once its series exist.
    handles: Arc<Mutex<HashMap<String, RouteHandles>>>,
}

/// The series of one route.
struct RouteHandles {
    latency: Histogram,
    /// Request counters by backend, then status code.
    requests: HashMap<String, HashMap<u16, Counter>>,
}

impl ProxyMetrics {
    /// Empty families.
    pub fn new() -> Self {
        ProxyMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            handles: Arc::default(),
        }
    }

    /// Records one request.
    pub fn observe(&self, route: &str, backend: &str, code: u16, seconds: f64) {
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        if !handles.contains_key(route) {
            let latency = self
                .latency
                .get_or_create(&RouteLabels {
                    route: route.to_string(),
                })
                .clone();
            handles.insert(
                route.to_string(),
                RouteHandles {
                    latency,
                    requests: HashMap::new(),
                },
            );
        }
        let r = handles.get_mut(route).expect("inserted above");
        r.latency.observe(seconds);
        if !r.requests.contains_key(backend) {
            r.requests.insert(backend.to_string(), HashMap::new());
        }
        let by_code = r.requests.get_mut(backend).expect("inserted above");
        by_code
            .entry(code)
            .or_insert_with(|| {
                self.requests
                    .get_or_create(&RequestLabels {
                        route: route.to_string(),
                        backend: backend.to_string(),
                        code: code.to_string(),
                    })
                    .clone()
            })
            .inc();
    }
}

impl crate::metrics::MetricsSource for ProxyMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "nodegate_http_requests",
            "Requests served by the L7 proxy, by route, backend and status code.",
            self.requests.clone(),
        );
        registry.register(
            "nodegate_http_request_duration_seconds",
            "Time from request to response head in the L7 proxy, by route.",
            self.latency.clone(),
        );
    }
}
