//! The userspace side of the passthrough splice: loads the SK_SKB stream verdict program onto
//! `SPLICE_SOCKS` and hands connection pairs to it.

use std::{
    collections::BTreeSet,
    os::fd::{AsFd, AsRawFd},
    sync::Mutex,
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, SockHash},
    programs::SkSkb,
};
use gateway_common::{
    counters::TrafficCounters,
    map_names,
    nat::{MAX_SPLICED_SOCKETS, SplicePeer},
    program_names,
};

/// Owns the splice maps (taken out of the object) and the key allocator.
pub struct Splicer {
    inner: Mutex<Inner>,
    /// `SPLICE_STATS`: per-CPU bytes the verdict program moved, per route counter index.
    stats: PerCpuArray<MapData, TrafficCounters>,
    /// SO_SNDBUF given to each spliced socket (0: TCP's autotuning).
    send_buffer: u32,
}

struct Inner {
    socks: SockHash<MapData, u32>,
    peers: HashMap<MapData, u64, SplicePeer>,
    used: BTreeSet<u32>,
}

/// A connection pair in the kernel; dropping it takes the pair out of the maps.
pub struct Spliced<'a> {
    splicer: &'a Splicer,
    keys: [u32; 2],
    cookies: [u64; 2],
}

/// Sets a socket's send buffer with SO_SNDBUFFORCE (the agent has CAP_NET_ADMIN; the plain
/// SO_SNDBUF is capped by `net.core.wmem_max`), falling back to SO_SNDBUF. Best effort: a
/// socket that keeps its autotuned buffer still relays, only slower.
fn set_send_buffer(socket: &impl AsRawFd, bytes: u32) {
    use crate::sockets::set_int_option;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for option in [libc::SO_SNDBUFFORCE, libc::SO_SNDBUF] {
        if set_int_option(socket, libc::SOL_SOCKET, option, value).is_ok() {
            return;
        }
    }
    tracing::debug!(
        error = %std::io::Error::last_os_error(),
        "could not set a spliced socket's send buffer; keeping TCP's autotuning"
    );
}

impl Splicer {
    /// Loads the verdict program, attaches it to `SPLICE_SOCKS` and takes the maps.
    pub fn new(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let socks: SockHash<MapData, u32> = SockHash::try_from(
            ebpf.take_map(map_names::SPLICE_SOCKS)
                .context("SPLICE_SOCKS map missing")?,
        )?;
        let program: &mut SkSkb = ebpf
            .program_mut(program_names::SPLICE)
            .context("splice program missing from the object")?
            .try_into()?;
        program.load().context("loading the splice program")?;
        program
            .attach(socks.fd())
            .context("attaching the splice program to SPLICE_SOCKS")?;
        let peers: HashMap<MapData, u64, SplicePeer> = HashMap::try_from(
            ebpf.take_map(map_names::SPLICE_PEERS)
                .context("SPLICE_PEERS map missing")?,
        )?;
        let stats = PerCpuArray::try_from(
            ebpf.take_map(map_names::SPLICE_STATS)
                .context("SPLICE_STATS map missing")?,
        )?;
        Ok(Splicer {
            inner: Mutex::new(Inner {
                socks,
                peers,
                used: BTreeSet::new(),
            }),
            stats,
            send_buffer: 0,
        })
    }

    /// Gives every spliced socket a send buffer of `bytes` (as SO_SNDBUF takes them; 0 keeps
    /// TCP's autotuning). The psock backlog that writes redirected bytes backs off whenever the
    /// send buffer is full, so a small autotuned buffer throttles the splice.
    pub fn with_send_buffer(mut self, bytes: u32) -> Self {
        self.send_buffer = bytes;
        self
    }

    /// Bytes (and skbs) the kernel moved for the route counter index `route`, summed over CPUs.
    pub fn spliced(&self, route: u32) -> anyhow::Result<TrafficCounters> {
        Ok(super::stats::sum(&self.stats.get(&route, 0)?))
    }

    /// Puts a connection pair into the kernel: from now on bytes arriving on either socket are
    /// sent out of the other without reaching userspace. `route` indexes the byte counters.
    pub fn splice(&self, a: &impl AsFd, b: &impl AsFd, route: u32) -> anyhow::Result<Spliced<'_>> {
        let (a, b) = (a.as_fd(), b.as_fd());
        // SO_COOKIE: the key the verdict program looks peers up by.
        let cookies = [
            socket2::SockRef::from(&a).cookie()?,
            socket2::SockRef::from(&b).cookie()?,
        ];
        if self.send_buffer > 0 {
            for socket in [&a, &b] {
                set_send_buffer(socket, self.send_buffer);
            }
        }
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| anyhow::anyhow!("splice maps poisoned"))?;
        let mut keys = [0u32; 2];
        for k in &mut keys {
            *k = (0..MAX_SPLICED_SOCKETS)
                .find(|i| !inner.used.contains(i))
                .context("splice table full")?;
            inner.used.insert(*k);
        }
        let inserted = (|| -> anyhow::Result<()> {
            for (cookie, peer_key) in [(cookies[0], keys[1]), (cookies[1], keys[0])] {
                inner.peers.insert(
                    cookie,
                    SplicePeer {
                        peer_key,
                        route,
                        bytes: 0,
                    },
                    0,
                )?;
            }
            inner.socks.insert(keys[0], a.as_raw_fd(), 0)?;
            inner.socks.insert(keys[1], b.as_raw_fd(), 0)?;
            Ok(())
        })();
        if let Err(e) = inserted {
            // A socket the kernel refuses (e.g. one the peer already closed): undo under the
            // same lock, so nothing is left in the maps.
            inner.forget(keys, cookies);
            return Err(e.context("putting the pair into SPLICE_SOCKS"));
        }
        Ok(Spliced {
            splicer: self,
            keys,
            cookies,
        })
    }
}

impl Spliced<'_> {
    /// Bytes the kernel has redirected so far from each socket of the pair to the other, in
    /// the order the pair was spliced (`[from a, from b]`).
    pub fn redirected(&self) -> anyhow::Result<[u64; 2]> {
        let inner = self
            .splicer
            .inner
            .lock()
            .map_err(|_| anyhow::anyhow!("splice maps poisoned"))?;
        let mut out = [0u64; 2];
        for (o, c) in out.iter_mut().zip(self.cookies) {
            *o = inner.peers.get(&c, 0)?.bytes;
        }
        Ok(out)
    }
}

impl Inner {
    /// Takes a pair out of the maps and frees its keys.
    fn forget(&mut self, keys: [u32; 2], cookies: [u64; 2]) {
        for (k, c) in keys.iter().zip(cookies) {
            let _ = self.socks.remove(k);
            let _ = self.peers.remove(&c);
            self.used.remove(k);
        }
    }
}

impl Drop for Spliced<'_> {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.splicer.inner.lock() {
            inner.forget(self.keys, self.cookies);
        }
    }
}

#[cfg(test)]
mod tests {
    fn send_buffer(socket: &std::net::TcpStream) -> usize {
        socket2::SockRef::from(socket).send_buffer_size().unwrap()
    }

    /// The splice's send buffer goes past `net.core.wmem_max` (SO_SNDBUFFORCE, as root).
    #[test]
    fn send_buffer_is_forced_past_wmem_max() {
        testbed::require_root("SO_SNDBUFFORCE needs CAP_NET_ADMIN").unwrap();
        let wmem_max: libc::c_int = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let wanted = wmem_max.saturating_mul(2).min(64 << 20);
        super::set_send_buffer(&socket, wanted as u32);
        // The kernel doubles what it is given, for its bookkeeping.
        assert_eq!(send_buffer(&socket), 2 * wanted as usize);
    }
}
