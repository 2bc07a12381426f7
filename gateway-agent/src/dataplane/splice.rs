//! The userspace side of the passthrough splice: loads the SK_SKB stream verdict program onto
//! `SPLICE_SOCKS` and hands connection pairs to it.

use std::{
    collections::BTreeSet,
    os::fd::{AsRawFd, RawFd},
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

/// The kernel's socket cookie (SO_COOKIE), the key the verdict program looks peers up by.
fn socket_cookie(fd: RawFd) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
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
        })
    }

    /// Bytes (and skbs) the kernel moved for the route counter index `route`, summed over CPUs.
    pub fn spliced(&self, route: u32) -> anyhow::Result<TrafficCounters> {
        Ok(super::stats::sum(&self.stats.get(&route, 0)?))
    }

    /// Puts a connection pair into the kernel: from now on bytes arriving on either socket are
    /// sent out of the other without reaching userspace. `route` indexes the byte counters.
    pub fn splice(
        &self,
        a: &impl AsRawFd,
        b: &impl AsRawFd,
        route: u32,
    ) -> anyhow::Result<Spliced<'_>> {
        let cookies = [socket_cookie(a.as_raw_fd())?, socket_cookie(b.as_raw_fd())?];
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
