//! A network namespace with only `lo` up, for the loopback benchmarks (L7, TLS): fixed ports
//! cannot collide with anything else on the machine, and deleting it removes every socket.

use testbed::Netns;

/// A namespace `ngbench-<tag>-<pid>` that is deleted on drop.
pub struct LoopNs {
    /// The namespace (commands and threads run in it through testbed's helpers).
    pub ns: Netns,
}

impl LoopNs {
    /// Creates the namespace and brings `lo` up.
    pub fn create(tag: &str) -> anyhow::Result<Self> {
        let name = format!("ngbench-{tag}-{}", std::process::id());
        let _ = testbed::sh("ip", &["netns", "del", &name]);
        testbed::sh("ip", &["netns", "add", &name])?;
        let ns = LoopNs {
            ns: Netns { name: name.clone() },
        };
        ns.ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for LoopNs {
    fn drop(&mut self) {
        let _ = testbed::sh("ip", &["netns", "del", &self.ns.name]);
    }
}
