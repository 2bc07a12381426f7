//! Per-route and per-backend request counts and latency histograms of the proxy.

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
}

impl ProxyMetrics {
    /// Empty families.
    pub fn new() -> Self {
        ProxyMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }

    /// Records one request.
    pub fn observe(&self, route: &str, backend: &str, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                backend: backend.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(seconds);
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
