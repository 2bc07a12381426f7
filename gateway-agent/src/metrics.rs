//! Prometheus exposition of the data plane's counters (prometheus-client text format).

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::counter::ConstCounter,
    registry::Registry,
};

use gateway_common::counters::TrafficCounters;

use crate::dataplane::DataplaneStats;

/// A counter family: name, help, and which field of the counters it reads.
type Family = (&'static str, &'static str, fn(&TrafficCounters) -> u64);

/// A snapshot of kernel counters, encoded on scrape.
#[derive(Debug)]
struct KernelCounters(DataplaneStats);

impl Collector for KernelCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let families: [Family; 2] = [
            (
                "nodegate_listener_packets",
                "Packets seen by the L4 programs per listener.",
                |c| c.packets,
            ),
            (
                "nodegate_listener_bytes",
                "Bytes seen by the L4 programs per listener.",
                |c| c.bytes,
            ),
        ];
        for (name, help, field) in families {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for l in &self.0.listeners {
                let labels = [
                    ("listener", l.entry.name.clone()),
                    ("address", l.entry.socket.to_string()),
                    (
                        "protocol",
                        format!("{:?}", l.entry.transport).to_lowercase(),
                    ),
                ];
                ConstCounter::new(field(&l.counters)).encode(family.encode_family(&labels)?)?;
            }
        }
        let backend_families: [Family; 2] = [
            (
                "nodegate_backend_packets",
                "Packets the L4 programs forwarded, per backend and direction.",
                |c| c.packets,
            ),
            (
                "nodegate_backend_bytes",
                "Bytes the L4 programs forwarded, per backend and direction.",
                |c| c.bytes,
            ),
        ];
        for (name, help, field) in backend_families {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (addr, to, from) in &self.0.backends {
                for (direction, c) in [("to_backend", to), ("from_backend", from)] {
                    let labels = [
                        ("backend", addr.to_string()),
                        ("direction", direction.to_string()),
                    ];
                    ConstCounter::new(field(c)).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let drop_families: [Family; 2] = [
            (
                "nodegate_dropped_packets",
                "Packets the L4 programs dropped, per reason.",
                |c| c.packets,
            ),
            (
                "nodegate_dropped_bytes",
                "Bytes the L4 programs dropped, per reason.",
                |c| c.bytes,
            ),
        ];
        for (name, help, field) in drop_families {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (reason, c) in &self.0.drops {
                ConstCounter::new(field(c))
                    .encode(family.encode_family(&[("reason", *reason)])?)?;
            }
        }
        Ok(())
    }
}

/// A part of the agent with metric families of its own (the proxy, the passthrough acceptor).
pub trait MetricsSource: Send + Sync {
    /// Adds its families to a registry being encoded.
    fn register(&self, registry: &mut Registry);
}

/// Renders the kernel counters and every source's metrics in the Prometheus text format.
pub fn render(stats: DataplaneStats, sources: &[std::sync::Arc<dyn MetricsSource>]) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(KernelCounters(stats)));
    for source in sources {
        source.register(&mut registry);
    }
    let mut out = String::new();
    // Encoding into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}
