//! Ages the connection table: a flow's two entries are removed together once the flow has been
//! idle past its timeout — UDP by idle time, TCP by idle time, or sooner once closed (a RST, or a
//! FIN in both directions). The LRU bound still caps the table in between sweeps.

use std::time::Duration;

use anyhow::Context as _;
use aya::{Ebpf, maps::HashMap};
use gateway_common::{
    listener::PROTO_UDP,
    map_names,
    nat::{
        BACKEND_TIME_WAIT_NS, FLOW_F_FIN, FLOW_F_REPLY, FLOW_F_RST, FlowKey, FlowNat,
        backend_time_wait, flow_closed,
    },
};

/// How long flows may stay idle.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// UDP flows.
    pub udp_idle: Duration,
    /// TCP flows that are open.
    pub tcp_idle: Duration,
    /// TCP flows after a RST, or a FIN each way.
    pub tcp_closed: Duration,
}

/// The key of the other direction of a flow: the tuple this entry rewrites to, reversed.
fn partner(key: &FlowKey, nat: &FlowNat) -> FlowKey {
    FlowKey {
        src: nat.new_dst,
        dst: nat.new_src,
        sport: nat.new_dport,
        dport: nat.new_sport,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Removes expired flows; returns how many entries went.
pub fn sweep(ebpf: &mut Ebpf, now_ns: u64, t: Timeouts) -> anyhow::Result<usize> {
    // One batch lookup per few thousand entries; aya's iterator (two syscalls an entry) only
    // if the kernel refuses batches (before 5.6).
    let batched = match ebpf.map(map_names::FLOWS) {
        Some(aya::maps::Map::LruHashMap(data) | aya::maps::Map::HashMap(data)) => {
            use std::os::fd::AsFd as _;
            super::batch::lookup_all(data.fd().as_fd())
                .inspect_err(|e| tracing::debug!(error = %e, "batch lookup refused; iterating"))
                .ok()
        }
        _ => None,
    };
    let mut flows: HashMap<_, FlowKey, FlowNat> = HashMap::try_from(
        ebpf.map_mut(map_names::FLOWS)
            .context("FLOWS map missing")?,
    )?;
    let entries: Vec<(FlowKey, FlowNat)> =
        batched.unwrap_or_else(|| flows.iter().filter_map(Result::ok).collect());
    let mut removed = 0;
    for (key, snapshot) in expired(&entries, now_ns, t) {
        // The kernel may have reused the key since the snapshot (a SNAT port given to a new
        // flow, a client port reopened): a newer last_seen means a live flow, which stays.
        let still_stale = flows
            .get(key, 0)
            .is_ok_and(|now| now.last_seen_ns == snapshot.last_seen_ns);
        if still_stale && flows.remove(key).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The entries of `entries` whose flow has been idle past its timeout at `now_ns` (as read, so
/// the sweep can tell whether the kernel has touched them since). An entry's
/// partner counts only if it points back: once the kernel has given a closed flow's SNAT port
/// to a new flow, the old forward entry's partner key holds the new flow's reply entry, and the
/// old entry is an orphan, aged on its own (closed if it saw a FIN or RST).
fn expired(entries: &[(FlowKey, FlowNat)], now_ns: u64, t: Timeouts) -> Vec<&(FlowKey, FlowNat)> {
    let lookup: std::collections::HashMap<[u8; 40], FlowNat> =
        entries.iter().map(|(k, v)| (key_bytes(k), *v)).collect();
    let mut doomed = Vec::new();
    for entry @ (key, nat) in entries {
        let other_key = partner(key, nat);
        let other = lookup
            .get(&key_bytes(&other_key))
            .filter(|o| partner(&other_key, o) == *key);
        let last_seen = other.map_or(nat.last_seen_ns, |o| o.last_seen_ns.max(nat.last_seen_ns));
        let closed = match other {
            Some(o) => flow_closed(nat.flags, o.flags),
            None => nat.flags & (FLOW_F_RST | FLOW_F_FIN) != 0,
        };
        // A backend that closed first holds TIME_WAIT: the kernel hands the port to a new flow
        // only as a last resort while it lasts, which it can tell only while the entries stay.
        let backend_time_wait = other.is_some_and(|o| {
            let (forward, reply) = if nat.flags & FLOW_F_REPLY != 0 {
                (o, nat)
            } else {
                (nat, o)
            };
            backend_time_wait(forward, reply)
        });
        let limit = if key.proto == PROTO_UDP {
            t.udp_idle
        } else if closed && backend_time_wait {
            t.tcp_closed.max(Duration::from_nanos(BACKEND_TIME_WAIT_NS))
        } else if closed {
            t.tcp_closed
        } else {
            t.tcp_idle
        };
        if now_ns.saturating_sub(last_seen) > limit.as_nanos() as u64 {
            doomed.push(entry);
        }
    }
    doomed
}

fn key_bytes(k: &FlowKey) -> [u8; 40] {
    let mut out = [0u8; 40];
    out[..16].copy_from_slice(&k.src);
    out[16..32].copy_from_slice(&k.dst);
    out[32..34].copy_from_slice(&k.sport.to_ne_bytes());
    out[34..36].copy_from_slice(&k.dport.to_ne_bytes());
    out[36] = k.proto;
    out[37] = k.family;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partner_of_a_partner_is_the_entry_itself() {
        let client = FlowKey {
            src: [1; 16],
            dst: [2; 16],
            sport: 1000,
            dport: 80,
            proto: 6,
            family: 6,
            _pad: [0; 2],
        };
        let forward = FlowNat {
            new_src: [3; 16],
            new_dst: [4; 16],
            new_sport: 61000,
            new_dport: 8080,
            ..FlowNat::default()
        };
        let reply_key = partner(&client, &forward);
        assert_eq!(
            (
                reply_key.src,
                reply_key.dst,
                reply_key.sport,
                reply_key.dport
            ),
            ([4; 16], [3; 16], 8080, 61000)
        );
        let reply = FlowNat {
            new_src: client.dst,
            new_dst: client.src,
            new_sport: client.dport,
            new_dport: client.sport,
            ..FlowNat::default()
        };
        assert_eq!(partner(&reply_key, &reply), client);
    }

    const SEC: u64 = 1_000_000_000;
    const T: Timeouts = Timeouts {
        udp_idle: Duration::from_secs(30),
        tcp_idle: Duration::from_secs(3600),
        tcp_closed: Duration::from_secs(10),
    };

    /// A TCP flow from client port `cport` through SNAT port `snat`: (forward, reply) entries.
    fn tcp_flow(cport: u16, snat: u16, flags: [u32; 2], seen: u64) -> [(FlowKey, FlowNat); 2] {
        let key = |src, dst, sport, dport| FlowKey {
            src: [src; 16],
            dst: [dst; 16],
            sport,
            dport,
            proto: 6,
            family: 4,
            _pad: [0; 2],
        };
        let nat = |new_src, new_dst, new_sport, new_dport, flags| FlowNat {
            new_src: [new_src; 16],
            new_dst: [new_dst; 16],
            new_sport,
            new_dport,
            last_seen_ns: seen,
            flags,
            ..FlowNat::default()
        };
        // client 1 → VIP 2:80, rewritten gateway 3:snat → backend 4:8080, and back.
        [
            (key(1, 2, cport, 80), nat(3, 4, snat, 8080, flags[0])),
            (key(4, 3, 8080, snat), nat(2, 1, 80, cport, flags[1])),
        ]
    }

    #[test]
    fn flows_expire_by_state_and_orphans_age_alone() {
        let now = 100 * SEC;
        let fin = gateway_common::nat::FLOW_F_FIN;
        let open = tcp_flow(1000, 61000, [0, 0], now - 20 * SEC);
        let closed = tcp_flow(1001, 61001, [fin, fin], now - 20 * SEC);
        let half = tcp_flow(1002, 61002, [fin, 0], now - 20 * SEC);
        // Port 61003 was given to a new flow (client port 1004): the old forward entry
        // (client port 1003, FIN) now points at the new flow's reply entry.
        let [old_forward, _] = tcp_flow(1003, 61003, [fin, fin], now - 20 * SEC);
        let reused = tcp_flow(1004, 61003, [0, 0], now - SEC);
        let mut entries = Vec::new();
        for pair in [open, closed, half, reused] {
            entries.extend(pair);
        }
        entries.push(old_forward);
        let mut doomed: Vec<FlowKey> = expired(&entries, now, T).iter().map(|e| e.0).collect();
        doomed.sort_by_key(|k| (k.sport, k.dport));
        let mut want = vec![closed[0].0, old_forward.0, closed[1].0];
        want.sort_by_key(|k| (k.sport, k.dport));
        assert_eq!(
            doomed, want,
            "the closed pair and the orphan go; open, half-closed and the new flow stay"
        );
    }

    /// Closed flows whose backend closed first (its reply entry seen last: it sent the final
    /// ACK) stay for the backend's TIME_WAIT, so the kernel keeps seeing that their ports are
    /// the last resort; a flow the client closed first, or one reset, goes after
    /// `tcp_closed` as before.
    #[test]
    fn flows_the_backend_closed_first_stay_for_its_time_wait() {
        let now = 100 * SEC;
        let (fin, rst) = (FLOW_F_FIN, FLOW_F_RST);
        let closed_by = |cport, snat, seen: u64, backend_last: bool, end: u32| {
            let [(fk, mut f), (rk, mut r)] = tcp_flow(cport, snat, [end, end | FLOW_F_REPLY], seen);
            if backend_last {
                r.last_seen_ns += 1_000;
            } else {
                f.last_seen_ns += 1_000;
            }
            [(fk, f), (rk, r)]
        };
        let cases = [
            // (flow, whether it is gone at `now`)
            (closed_by(2000, 62000, now - 20 * SEC, true, fin), false),
            (closed_by(2001, 62001, now - 61 * SEC, true, fin), true),
            (closed_by(2002, 62002, now - 20 * SEC, false, fin), true),
            (closed_by(2003, 62003, now - 20 * SEC, true, rst), true),
        ];
        let entries: Vec<_> = cases.iter().flat_map(|(pair, _)| *pair).collect();
        let doomed: Vec<FlowKey> = expired(&entries, now, T).iter().map(|e| e.0).collect();
        for (pair, gone) in cases {
            for (key, _) in pair {
                assert_eq!(
                    doomed.contains(&key),
                    gone,
                    "client port {}: gone {gone} expected",
                    pair[0].0.sport
                );
            }
        }
    }
}
