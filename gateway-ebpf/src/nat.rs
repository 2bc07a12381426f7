//! IPv4 and IPv6 load balancing with NAT: a flow's first packet picks a backend through the service's
//! Maglev ring, both directions get a connection-table entry, and every packet of the flow is
//! rewritten (destination to the backend and source to the gateway's egress address, or the
//! reverse for replies) with incremental checksum updates, then forwarded to the next hop found by
//! `bpf_fib_lookup`. ICMPv4/ICMPv6 errors about a NATed flow are translated back to its client.
//! Anything it cannot forward goes to the stack untouched.
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "flow keys live in the per-CPU SCRATCH map to keep them off the 512-byte BPF stack; \
              passing them by value, as the lint asks, would copy them onto it"
)]

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::{bpf_fib_lookup, bpf_ktime_get_ns},
    programs::{TcContext, XdpContext},
};
use gateway_common::{
    listener::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP},
    nat::{
        BACKEND_TIME_WAIT_NS, FLOW_F_FIN, FLOW_F_REPLY, FLOW_F_RST, FlowKey, FlowNat, MAGLEV_SIZE,
        SNAT_REUSE_AFTER_CLOSE_NS, UDP_SNAT_STEAL_AFTER_NS, backend_time_wait, flow_closed,
    },
};

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};

use crate::{
    maps::{BACKENDS, FLOWS, IFADDRS, MAGLEV_RINGS, NAT_CONFIG, SERVICES},
    parse::Packet,
};

/// The hook a program runs in, as far as forwarding cares.
pub trait Hook: EbpfContext {
    /// Whether the hook can hand a packet whose next hop is unresolved to the neighbour
    /// subsystem (`bpf_redirect_neigh`, which queues it while the kernel resolves the hop). TC
    /// can; XDP has no skb to queue, so there such a packet is dropped and counted, as Cilium
    /// does, and the agent's managed entries keep the backends' next hops resolved.
    const RESOLVES_NEIGHBOURS: bool;
}

impl Hook for XdpContext {
    const RESOLVES_NEIGHBOURS: bool = false;
}

impl Hook for TcContext {
    const RESOLVES_NEIGHBOURS: bool = true;
}

/// Set in a [`Forward::Redirect`] ifindex (ifindexes are positive `int`s, so bit 31 is free)
/// when the next hop is unresolved: the TC entry point then sends the packet with
/// `bpf_redirect_neigh`, which writes the Ethernet header itself once the hop resolves. Only
/// hooks with [`Hook::RESOLVES_NEIGHBOURS`] ever see it.
pub const VIA_NEIGH: u32 = 1 << 31;

/// Per-CPU scratch space for the structures a new flow needs: the BPF stack (512 bytes for the
/// whole call chain) cannot hold them all. Only this program touches it.
#[repr(C)]
pub struct Scratch {
    key: FlowKey,
    reply_key: FlowKey,
    /// The forward key of an old flow whose SNAT port is being probed.
    old_key: FlowKey,
    forward: FlowNat,
    reply: FlowNat,
    fib: FibParams,
    /// [`pick_port`]'s inputs, kept here rather than in registers it would spill to the stack.
    probe: Probe,
}

/// What [`pick_port`] probes: ports `port_min + (base + i * stride) % span`, at time `now`.
#[repr(C)]
struct Probe {
    base: u32,
    stride: u32,
    port_min: u32,
    span: u32,
    /// The client's source port less `port_min`: its own port's offset in the range, probed
    /// first if below `span`. Kept here rather than in a register of `pick_port`, whose frame
    /// the stack limit leaves no room to spill it to.
    own: u32,
    now: u64,
}

/// See [`Scratch`]. Key 0 only.
#[btf_map]
static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// A flow's end flags: a FIN or RST seen.
const ENDED: u32 = FLOW_F_FIN | FLOW_F_RST;

/// SNAT ports a new flow probes. A probe fails with the probability that a port is taken, so
/// all of them fail with that to this power: at 8, a range a third full (100 ms of new flows at
/// 15k/s with the default range) dropped several SYNs a second; at 16, about one in 10^8.
const SNAT_PROBES: u32 = 16;

/// What to do with a packet after NAT.
pub enum Forward {
    /// Send it out of this interface (`bpf_redirect`).
    Redirect(u32),
    /// Not ours, or not forwardable here: let the stack have it.
    Pass,
    /// Ours but no free SNAT port: drop it; the caller counts it under
    /// `DropReason::NoSnatPort`. The sender retries.
    NoSnatPort,
    /// Ours, but the next hop's neighbour entry is unresolved: drop it; the caller counts it
    /// under `DropReason::NoNeighbour`. The sender retries. The drops are unit variants: a
    /// second variant with a payload makes LLVM pass an undefined payload register on the
    /// other paths, which the verifier refuses to read.
    NoNeighbour,
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IP6_HLIM_OFF: usize = 7;
const IP6_SRC_OFF: usize = 8;
const IP6_DST_OFF: usize = 24;
const IP_CSUM_OFF: usize = 10;
const IP_SRC_OFF: usize = 12;
const IP_DST_OFF: usize = 16;
const TTL_OFF: usize = 8;

#[inline(always)]
fn key_of(p: &Packet) -> FlowKey {
    FlowKey {
        src: p.src,
        dst: p.dst,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        family: p.family,
        _pad: [0; 2],
    }
}

/// A 32-bit mix of the 5-tuple (murmur3's finaliser over the words), the same for every packet
/// of a flow.
#[inline(always)]
fn flow_hash(p: &Packet) -> u32 {
    let mut h: u32 = 0x9747_b28c;
    let words = [
        fold(&p.src),
        fold(&p.dst),
        (u32::from(p.sport) << 16) | u32::from(p.dport),
        u32::from(p.proto),
    ];
    for w in words {
        let mut k = w.wrapping_mul(0xcc9e_2d51);
        k = k.rotate_left(15).wrapping_mul(0x1b87_3593);
        h ^= k;
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The four words of an address xored together (IPv4 has zeros after the first word).
#[inline(always)]
fn fold(a: &[u8; 16]) -> u32 {
    u32::from_ne_bytes([a[0], a[1], a[2], a[3]])
        ^ u32::from_ne_bytes([a[4], a[5], a[6], a[7]])
        ^ u32::from_ne_bytes([a[8], a[9], a[10], a[11]])
        ^ u32::from_ne_bytes([a[12], a[13], a[14], a[15]])
}

/// Incremental checksum update for an address of `len` bytes (4 or 16).
#[inline(always)]
fn csum_replace_addr(check: u16, old: &[u8; 16], new: &[u8; 16], len: usize) -> u16 {
    let mut c = check;
    for i in 0..8 {
        if i * 2 >= len {
            break;
        }
        c = csum_replace2(
            c,
            u16::from_be_bytes([old[i * 2], old[i * 2 + 1]]),
            u16::from_be_bytes([new[i * 2], new[i * 2 + 1]]),
        );
    }
    c
}

/// RFC 1624 incremental update of a one's-complement checksum for a 16-bit word change.
#[inline(always)]
fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    let mut s: u32 = u32::from(!check) + u32::from(!old) + u32::from(new);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Adds the change of a 16-byte address to a checksum delta (see [`csum_apply`]), a 32-bit word
/// at a time: few instructions and few live registers, which keeps the BPF stack small.
#[inline(always)]
fn csum_delta_addr(acc: u64, old: &[u8; 16], new: &[u8; 16]) -> u64 {
    let mut acc = acc;
    for i in 0..4 {
        let o = u32::from_be_bytes([old[i * 4], old[i * 4 + 1], old[i * 4 + 2], old[i * 4 + 3]]);
        let n = u32::from_be_bytes([new[i * 4], new[i * 4 + 1], new[i * 4 + 2], new[i * 4 + 3]]);
        acc += u64::from(!o) + u64::from(n);
    }
    acc
}

/// Adds the change of one 16-bit word to a checksum delta (see [`csum_apply`]).
#[inline(always)]
fn csum_delta16(acc: u64, old: u16, new: u16) -> u64 {
    acc + u64::from(!old) + u64::from(new)
}

/// Applies a delta of `~old + new` terms (one's-complement sums, 16- or 32-bit words alike) to a
/// checksum: RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`, over all the changed words at once.
#[inline(always)]
fn csum_apply(check: u16, delta: u64) -> u16 {
    let mut s = u64::from(!check) + delta;
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Handles a TCP/UDP packet (ICMP errors go to [`handle_icmp_v4`] / [`handle_icmp_v6`]): an existing flow is rewritten and forwarded; a new flow to a
/// listener with a service gets a backend; anything else passes.
#[inline(always)]
pub fn handle<C: Hook>(
    ctx: &C,
    data: usize,
    data_end: usize,
    p: &Packet,
    listener: Option<u32>,
    ifindex: u32,
    len: u64,
) -> Forward {
    if p.proto == crate::parse::PROTO_ICMP {
        return handle_icmp_v4(ctx, data, data_end, p, ifindex);
    }
    if p.proto == crate::parse::PROTO_ICMPV6 {
        return handle_icmp_v6(ctx, data, data_end, p, ifindex);
    }
    if p.proto != PROTO_TCP && p.proto != PROTO_UDP {
        return Forward::Pass;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Forward::Pass;
    };
    let s = unsafe { &mut *scratch };
    s.key = key_of(p);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = FLOWS.get_ptr_mut(&s.key) {
        // A SYN on a flow that has ended is a new connection on a reused tuple (the client's
        // TIME_WAIT gave way, as tcp_tw_reuse lets it): as conntrack does, it is NATed afresh
        // below, with today's backends and flags of its own, instead of inheriting the old
        // flow's end flags (which would let its SNAT port go to another flow while it lives).
        let reopened = p.tcp_syn && unsafe { (*entry).flags } & ENDED != 0;
        if !reopened {
            let nat = unsafe {
                (*entry).last_seen_ns = now;
                (*entry).flags |= p.tcp_end;
                &*entry
            };
            return counted(
                rewrite_and_forward(ctx, data, data_end, p, nat, ifindex, &mut s.fib),
                nat,
                len,
            );
        }
    }
    let Some(listener) = listener else {
        return Forward::Pass;
    };
    // A TCP segment that does not open a connection has no flow to join: the stack answers it.
    if p.proto == PROTO_TCP && !p.tcp_syn {
        return Forward::Pass;
    }
    let Some(service) = SERVICES.get_ptr(listener) else {
        return Forward::Pass;
    };
    let service = unsafe { *service };
    if service.backends == 0 {
        return Forward::Pass;
    }
    let index = service.ring_slot * MAGLEV_SIZE + flow_hash(p) % MAGLEV_SIZE;
    let Some(backend_id) = MAGLEV_RINGS.get_ptr(index) else {
        return Forward::Pass;
    };
    let backend_id = unsafe { *backend_id };
    let Some(backend) = BACKENDS.get_ptr(backend_id) else {
        return Forward::Pass;
    };
    let backend = unsafe { &*backend };
    if backend.family != p.family {
        return Forward::Pass;
    }
    // Where does the backend live? Its egress interface gives the SNAT source address.
    let egress = match fib(ctx, ifindex, p.family, &p.src, &backend.addr, &mut s.fib) {
        Ok(egress) => egress,
        Err(f) => return f,
    };
    let Some(ifaddr) = IFADDRS.get_ptr(egress & !VIA_NEIGH) else {
        return Forward::Pass;
    };
    // The reply tuple: backend → the gateway's SNAT address (port chosen below).
    s.reply_key.src = backend.addr;
    s.reply_key.dst = [0u8; 16];
    if p.family == FAMILY_V4 {
        s.reply_key.dst[..4].copy_from_slice(unsafe { &(*ifaddr).v4 });
    } else {
        s.reply_key.dst = unsafe { (*ifaddr).v6 };
    }
    if s.reply_key.dst == [0u8; 16] {
        return Forward::Pass;
    }
    let Some(cfg) = NAT_CONFIG.get_ptr(0) else {
        return Forward::Pass;
    };
    let (port_min, port_max) = unsafe { ((*cfg).port_min, (*cfg).port_max) };
    if port_max <= port_min {
        return Forward::Pass;
    }
    let span = u32::from(port_max - port_min) + 1;
    s.reply_key.sport = backend.port;
    s.reply_key.dport = 0;
    s.reply_key.proto = p.proto;
    s.reply_key.family = p.family;
    s.reply_key._pad = [0; 2];
    let base = flow_hash(p).rotate_left(7);
    s.probe = Probe {
        base,
        stride: (base >> 16) | 1,
        port_min: u32::from(port_min),
        span,
        own: u32::from(p.sport).wrapping_sub(u32::from(port_min)),
        now,
    };
    let found = pick_port(s);
    if !found {
        // Passing it would hand a packet addressed to a Gateway to the stack, which would
        // refuse it (RST) or route it unNATed; as Cilium does, drop and count.
        return Forward::NoSnatPort;
    }
    s.forward = FlowNat {
        new_src: s.reply_key.dst,
        new_dst: backend.addr,
        new_sport: s.reply_key.dport,
        new_dport: backend.port,
        backend: backend_id,
        last_seen_ns: now,
        flags: 0,
        listener,
    };
    s.reply = FlowNat {
        new_src: p.dst,
        new_dst: p.src,
        new_sport: p.dport,
        new_dport: p.sport,
        backend: backend_id,
        last_seen_ns: now,
        flags: FLOW_F_REPLY,
        listener,
    };
    if FLOWS.insert(&s.key, &s.forward, 0).is_err()
        || FLOWS.insert(&s.reply_key, &s.reply, 0).is_err()
    {
        return Forward::Pass;
    }
    counted(
        rewrite_and_forward(ctx, data, data_end, p, &s.forward, ifindex, &mut s.fib),
        &s.forward,
        len,
    )
}

/// Probes ports of the range ([`Probe`]) for one whose reply tuple (`s.reply_key`, its port set
/// here) is free: [`SNAT_PROBES`] probes. The first is the client's own source port, if the range
/// holds it: as conntrack and Cilium keep it, clients whose ports are in the range never contend
/// with each other for one (a client's own ports are distinct). The others are from the flow's
/// hash, by double hashing (a stride from the hash's other half), as consecutive probes would
/// pile new flows onto the runs of taken ports and fail at a quarter full. A port whose backend
/// may still hold TIME_WAIT, or an idle UDP flow's, is kept as the fallback, taken only if no
/// other is free. Returns whether a port was found. A BPF subprogram: inlined into `handle`, the
/// loop's state would not fit the 512-byte stack.
#[inline(never)]
fn pick_port(s: &mut Scratch) -> bool {
    // Never 0 (`handle` checks the range), but the division's panic path would end the
    // subprogram without an exit, which the verifier refuses.
    let span = s.probe.span.max(1);
    let mut fallback = u32::MAX;
    for attempt in 0..SNAT_PROBES {
        let offset = if attempt == 0 && s.probe.own < span {
            s.probe.own
        } else {
            s.probe
                .base
                .wrapping_add(attempt.wrapping_mul(s.probe.stride))
                % span
        };
        let port = (s.probe.port_min + offset) as u16;
        s.reply_key.dport = port;
        match FLOWS.get_ptr(&s.reply_key) {
            None => return true,
            // A closed TCP flow gives its port up (the insert overwrites its reply entry; the
            // agent ages the orphaned forward entry).
            Some(e) => match reusable(s, e) {
                REUSE_FREE => return true,
                REUSE_TIME_WAIT | REUSE_IDLE if fallback == u32::MAX => fallback = u32::from(port),
                _ => {}
            },
        }
    }
    if fallback == u32::MAX {
        return false;
    }
    s.reply_key.dport = fallback as u16;
    if s.reply_key.proto == PROTO_UDP {
        // The idle UDP flow loses its port: without its forward entry its next packet starts a
        // flow of its own instead of leaving from a port that is now the new flow's.
        evict_forward(s);
    }
    true
}

/// [`reusable`]: the port is held by a live flow (or one closed less than
/// [`SNAT_REUSE_AFTER_CLOSE_NS`] ago).
const REUSE_NO: u32 = 0;
/// [`reusable`]: the port is free to take.
const REUSE_FREE: u32 = 1;
/// [`reusable`]: free, but its backend may still hold the old tuple in TIME_WAIT.
const REUSE_TIME_WAIT: u32 = 2;
/// [`reusable`]: held by a UDP flow idle past [`UDP_SNAT_STEAL_AFTER_NS`]; taken only if no
/// probe found a free port, and then with [`evict_forward`].
const REUSE_IDLE: u32 = 3;

/// Sets `s.old_key` to the forward key of the flow whose reply entry is `reply`: the tuple the
/// reply entry rewrites to, reversed.
#[inline(always)]
fn old_forward_key(s: &mut Scratch, reply: &FlowNat) {
    s.old_key.src = reply.new_dst;
    s.old_key.dst = reply.new_src;
    s.old_key.sport = reply.new_dport;
    s.old_key.dport = reply.new_sport;
    s.old_key.proto = s.reply_key.proto;
    s.old_key.family = s.reply_key.family;
    s.old_key._pad = [0; 2];
}

/// Removes the forward entry of the flow whose reply entry is at `s.reply_key` (an idle UDP flow
/// whose port a new flow takes). A BPF subprogram, like [`pick_port`], for the stack's sake.
#[inline(never)]
fn evict_forward(s: &mut Scratch) {
    let Some(reply) = FLOWS.get_ptr(&s.reply_key) else {
        return;
    };
    old_forward_key(s, unsafe { &*reply });
    let _ = FLOWS.remove(&s.old_key);
}

/// Whether the SNAT port of the old flow whose reply entry is `reply` (keyed `s.reply_key`)
/// may go to a new flow (whose key is `s.key`):
/// - at once if the old flow had the same tuple;
/// - otherwise never before nothing has come from the backend for
///   [`SNAT_REUSE_AFTER_CLOSE_NS`]; then free if the reply entry is orphaned (its forward entry
///   gone, or NATed afresh to another port);
/// - a UDP flow's only once idle both ways past [`UDP_SNAT_STEAL_AFTER_NS`], as the last resort;
/// - a TCP flow's once closed (a RST either way or a FIN each way, as conntrack's TIME_WAIT gives
///   way to a new SYN), as the last resort while the backend, if it closed first, may still hold
///   TIME_WAIT ([`backend_time_wait`], for [`BACKEND_TIME_WAIT_NS`]).
///
/// The agent's aging (`aging::expired`) judges a flow closed the same way. A BPF subprogram:
/// inlined, [`pick_port`]'s sixteen copies of it take the verifier far longer.
#[inline(never)]
fn reusable(s: &mut Scratch, reply: *const FlowNat) -> u32 {
    let reply = unsafe { &*reply };
    let now = s.probe.now;
    old_forward_key(s, reply);
    // The port was this very tuple's (a SYN reopening its closed flow, or retried after the
    // client reset a refused one): the backend sees the same tuple again, as through conntrack.
    if s.old_key.sport == s.key.sport
        && s.old_key.dport == s.key.dport
        && same_addr(&s.old_key.src, &s.key.src)
        && same_addr(&s.old_key.dst, &s.key.dst)
    {
        return REUSE_FREE;
    }
    let quiet = now.saturating_sub(reply.last_seen_ns);
    if quiet <= SNAT_REUSE_AFTER_CLOSE_NS {
        return REUSE_NO;
    }
    let Some(forward) = FLOWS.get_ptr(&s.old_key) else {
        return REUSE_FREE;
    };
    let forward = unsafe { &*forward };
    if forward.new_sport != s.reply_key.dport
        || forward.new_dport != s.reply_key.sport
        || !same_addr(&forward.new_dst, &s.reply_key.src)
    {
        return REUSE_FREE;
    }
    if s.reply_key.proto == PROTO_UDP {
        let idle = now.saturating_sub(forward.last_seen_ns).min(quiet);
        return if idle > UDP_SNAT_STEAL_AFTER_NS {
            REUSE_IDLE
        } else {
            REUSE_NO
        };
    }
    if !flow_closed(forward.flags, reply.flags) {
        REUSE_NO
    } else if quiet <= BACKEND_TIME_WAIT_NS && backend_time_wait(forward, reply) {
        REUSE_TIME_WAIT
    } else {
        REUSE_FREE
    }
}

/// Whether two 16-byte addresses are equal, compared as two words in place (no memcmp in BPF,
/// and no copies on the 512-byte stack).
#[inline(always)]
fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a, b) = (a.as_ptr().cast::<u64>(), b.as_ptr().cast::<u64>());
    // SAFETY: both point at 16 readable bytes; read_unaligned has no alignment requirement.
    unsafe {
        a.read_unaligned() == b.read_unaligned()
            && a.add(1).read_unaligned() == b.add(1).read_unaligned()
    }
}

/// Counts a forwarded packet on its backend.
#[inline(always)]
fn counted(f: Forward, nat: &FlowNat, len: u64) -> Forward {
    if let Forward::Redirect(_) = f {
        crate::maps::count_backend(nat.backend, nat.flags & FLOW_F_REPLY != 0, len);
    }
    f
}

/// Rewrites addresses and ports (with incremental checksums), then looks up the next hop, sets
/// the Ethernet addresses, decrements the TTL and asks for a redirect.
#[inline(always)]
fn rewrite_and_forward<C: Hook>(
    ctx: &C,
    data: usize,
    data_end: usize,
    p: &Packet,
    nat: &FlowNat,
    ingress: u32,
    params: &mut FibParams,
) -> Forward {
    let ifindex = match fib(ctx, ingress, p.family, &nat.new_src, &nat.new_dst, params) {
        Ok(egress) => egress,
        Err(f) => return f,
    };
    let ip = data + p.l3_off;
    let l4 = data + p.l4_off;
    if l4 + 8 > data_end {
        return Forward::Pass;
    }
    let check_off = if p.proto == PROTO_TCP { 16 } else { 6 };
    if p.proto == PROTO_TCP && l4 + 20 > data_end {
        return Forward::Pass;
    }
    let addr_len = if p.family == FAMILY_V4 { 4 } else { 16 };
    unsafe {
        if p.family == FAMILY_V4 {
            if ip + 20 > data_end {
                return Forward::Pass;
            }
            // IPv4 header: addresses, TTL and header checksum.
            let ip_check_ptr = (ip + IP_CSUM_OFF) as *mut [u8; 2];
            let mut ip_check = u16::from_be_bytes(*ip_check_ptr);
            ip_check = csum_replace_addr(ip_check, &p.src, &nat.new_src, 4);
            ip_check = csum_replace_addr(ip_check, &p.dst, &nat.new_dst, 4);
            let ttl_ptr = (ip + TTL_OFF) as *mut [u8; 2];
            let ttl_proto = *ttl_ptr;
            if ttl_proto[0] <= 1 {
                return Forward::Pass; // the stack sends the ICMP time-exceeded
            }
            let new_ttl_proto = [ttl_proto[0] - 1, ttl_proto[1]];
            ip_check = csum_replace2(
                ip_check,
                u16::from_be_bytes(ttl_proto),
                u16::from_be_bytes(new_ttl_proto),
            );
            *ttl_ptr = new_ttl_proto;
            *((ip + IP_SRC_OFF) as *mut [u8; 4]) = [
                nat.new_src[0],
                nat.new_src[1],
                nat.new_src[2],
                nat.new_src[3],
            ];
            *((ip + IP_DST_OFF) as *mut [u8; 4]) = [
                nat.new_dst[0],
                nat.new_dst[1],
                nat.new_dst[2],
                nat.new_dst[3],
            ];
            *ip_check_ptr = ip_check.to_be_bytes();
        } else {
            if ip + 40 > data_end {
                return Forward::Pass;
            }
            // IPv6 header: addresses and hop limit (no header checksum).
            let hlim = (ip + IP6_HLIM_OFF) as *mut u8;
            if *hlim <= 1 {
                return Forward::Pass;
            }
            *hlim -= 1;
            *((ip + IP6_SRC_OFF) as *mut [u8; 16]) = nat.new_src;
            *((ip + IP6_DST_OFF) as *mut [u8; 16]) = nat.new_dst;
        }

        // L4: ports, and the checksum (which covers the pseudo-header addresses too). A UDP
        // checksum of 0 means "none" and stays 0.
        let l4_check_ptr = (l4 + check_off) as *mut [u8; 2];
        let mut l4_check = u16::from_be_bytes(*l4_check_ptr);
        // UDP over IPv6 always carries a checksum.
        let has_check = p.proto == PROTO_TCP || p.family == FAMILY_V6 || l4_check != 0;
        if has_check {
            l4_check = csum_replace_addr(l4_check, &p.src, &nat.new_src, addr_len);
            l4_check = csum_replace_addr(l4_check, &p.dst, &nat.new_dst, addr_len);
            l4_check = csum_replace2(l4_check, p.sport, nat.new_sport);
            l4_check = csum_replace2(l4_check, p.dport, nat.new_dport);
            if p.proto == PROTO_UDP && l4_check == 0 {
                l4_check = 0xffff;
            }
        }
        *(l4 as *mut [u8; 2]) = nat.new_sport.to_be_bytes();
        *((l4 + 2) as *mut [u8; 2]) = nat.new_dport.to_be_bytes();
        if has_check {
            *l4_check_ptr = l4_check.to_be_bytes();
        }
    }
    set_l2(data, data_end, params, ifindex)
}

/// Writes the next hop's Ethernet addresses (`hop`, from [`fib`]) and asks for a redirect to
/// `egress`; an unresolved hop ([`VIA_NEIGH`]) has no addresses yet and leaves them to the
/// neighbour subsystem.
#[inline(always)]
fn set_l2(data: usize, data_end: usize, hop: &FibParams, egress: u32) -> Forward {
    if egress & VIA_NEIGH != 0 {
        return Forward::Redirect(egress);
    }
    if data + 12 > data_end {
        return Forward::Pass;
    }
    unsafe {
        *(data as *mut [u8; 6]) = hop.dmac;
        *((data + 6) as *mut [u8; 6]) = hop.smac;
    }
    Forward::Redirect(egress)
}

/// `bpf_fib_lookup` for (src, dst) of `family`: the egress ifindex (the source and next-hop MACs
/// are left in `params` for [`set_l2`]), or what to do with the packet instead. An unresolved
/// next hop gives the ifindex with [`VIA_NEIGH`] in a hook that can resolve it; elsewhere the
/// packet is dropped (the stack would answer a packet addressed to the gateway itself, not
/// forward it). Every other verdict (no route, forwarding off, fragmentation needed) passes it.
#[inline(always)]
fn fib<C: Hook>(
    ctx: &C,
    ingress: u32,
    family: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
    params: &mut FibParams,
) -> Result<u32, Forward> {
    *params = unsafe { core::mem::zeroed() };
    params.ifindex = ingress;
    if family == FAMILY_V4 {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
    } else {
        params.family = AF_INET6;
        // SAFETY: the unions' IPv6 members are plain arrays of the same size as the addresses.
        unsafe {
            params.__bindgen_anon_3.ipv6_src = core::mem::transmute::<[u8; 16], [u32; 4]>(*src);
            params.__bindgen_anon_4.ipv6_dst = core::mem::transmute::<[u8; 16], [u32; 4]>(*dst);
        }
    }
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        // The lookup filled in the egress interface before it found no neighbour.
        if C::RESOLVES_NEIGHBOURS {
            if params.ifindex & VIA_NEIGH != 0 {
                return Err(Forward::NoNeighbour);
            }
            return Ok(params.ifindex | VIA_NEIGH);
        }
        crate::maps::note_unresolved_hop(params, family, unsafe { bpf_ktime_get_ns() });
        return Err(Forward::NoNeighbour);
    }
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return Err(Forward::Pass);
    }
    Ok(params.ifindex)
}

/// ICMP types that carry the offending packet and are translated back to the client:
/// destination unreachable (port unreachable, fragmentation needed, ...), time exceeded,
/// parameter problem.
const ICMP_ERRORS: [u8; 3] = [3, 11, 12];

/// Translates an ICMPv4 error a backend (or a router towards it) sent about a NATed flow back to
/// the client: the outer packet goes from the service address to the client, and the packet it
/// quotes is rewritten to the client's own view (client → service), with the ICMP and quoted IP
/// checksums updated.
#[inline(always)]
fn handle_icmp_v4<C: Hook>(
    ctx: &C,
    data: usize,
    data_end: usize,
    p: &Packet,
    ifindex: u32,
) -> Forward {
    let icmp = data + p.l4_off;
    let inner = icmp + 8;
    let inner_l4 = inner + 20;
    let ip = data + p.l3_off;
    if ip + 20 > data_end || inner_l4 + 8 > data_end {
        return Forward::Pass;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Forward::Pass;
    };
    let s = unsafe { &mut *scratch };
    unsafe {
        let ty = *(icmp as *const u8);
        if !ICMP_ERRORS.contains(&ty) {
            return Forward::Pass;
        }
        // Quoted IPv4 header without options, quoting TCP or UDP.
        let vihl = *(inner as *const u8);
        let proto = *((inner + 9) as *const u8);
        if vihl != 0x45 || (proto != PROTO_TCP && proto != PROTO_UDP) {
            return Forward::Pass;
        }
        let q_src = *((inner + 12) as *const [u8; 4]);
        let q_dst = *((inner + 16) as *const [u8; 4]);
        let q_sport = u16::from_be_bytes(*(inner_l4 as *const [u8; 2]));
        let q_dport = u16::from_be_bytes(*((inner_l4 + 2) as *const [u8; 2]));
        s.key = quoted_reply_key(FAMILY_V4, proto, q_sport, q_dport);
        s.key.src[..4].copy_from_slice(&q_dst);
        s.key.dst[..4].copy_from_slice(&q_src);
        let Some(reply) = reply_entry(&s.key) else {
            return Forward::Pass;
        };
        // reply: new_src = service address, new_dst = client, new_sport = service port,
        // new_dport = client port.
        let nat = &*reply;
        let egress = match fib(
            ctx,
            ifindex,
            FAMILY_V4,
            &nat.new_src,
            &nat.new_dst,
            &mut s.fib,
        ) {
            Ok(egress) => egress,
            Err(f) => return f,
        };
        let client = [
            nat.new_dst[0],
            nat.new_dst[1],
            nat.new_dst[2],
            nat.new_dst[3],
        ];
        let service = [
            nat.new_src[0],
            nat.new_src[1],
            nat.new_src[2],
            nat.new_src[3],
        ];

        // Quoted packet: client → service, as the client sent it.
        let icmp_check_ptr = (icmp + 2) as *mut [u8; 2];
        let mut icmp_check = u16::from_be_bytes(*icmp_check_ptr);
        let q_check_ptr = (inner + 10) as *mut [u8; 2];
        let old_q_check = u16::from_be_bytes(*q_check_ptr);
        let mut q_check = old_q_check;
        let mut q_src16 = [0u8; 16];
        q_src16[..4].copy_from_slice(&q_src);
        let mut q_dst16 = [0u8; 16];
        q_dst16[..4].copy_from_slice(&q_dst);
        q_check = csum_replace_addr(q_check, &q_src16, &nat.new_dst, 4);
        q_check = csum_replace_addr(q_check, &q_dst16, &nat.new_src, 4);
        icmp_check = csum_replace_addr(icmp_check, &q_src16, &nat.new_dst, 4);
        icmp_check = csum_replace_addr(icmp_check, &q_dst16, &nat.new_src, 4);
        icmp_check = csum_replace2(icmp_check, old_q_check, q_check);
        icmp_check = csum_replace2(icmp_check, q_sport, nat.new_dport);
        icmp_check = csum_replace2(icmp_check, q_dport, nat.new_sport);
        *((inner + 12) as *mut [u8; 4]) = client;
        *((inner + 16) as *mut [u8; 4]) = service;
        *q_check_ptr = q_check.to_be_bytes();
        *(inner_l4 as *mut [u8; 2]) = nat.new_dport.to_be_bytes();
        *((inner_l4 + 2) as *mut [u8; 2]) = nat.new_sport.to_be_bytes();
        *icmp_check_ptr = icmp_check.to_be_bytes();

        // Outer header: service → client, TTL decremented.
        let ip_check_ptr = (ip + IP_CSUM_OFF) as *mut [u8; 2];
        let mut ip_check = u16::from_be_bytes(*ip_check_ptr);
        ip_check = csum_replace_addr(ip_check, &p.src, &nat.new_src, 4);
        ip_check = csum_replace_addr(ip_check, &p.dst, &nat.new_dst, 4);
        let ttl_ptr = (ip + TTL_OFF) as *mut [u8; 2];
        let ttl_proto = *ttl_ptr;
        if ttl_proto[0] <= 1 {
            return Forward::Pass;
        }
        let new_ttl_proto = [ttl_proto[0] - 1, ttl_proto[1]];
        ip_check = csum_replace2(
            ip_check,
            u16::from_be_bytes(ttl_proto),
            u16::from_be_bytes(new_ttl_proto),
        );
        *ttl_ptr = new_ttl_proto;
        *((ip + IP_SRC_OFF) as *mut [u8; 4]) = service;
        *((ip + IP_DST_OFF) as *mut [u8; 4]) = client;
        *ip_check_ptr = ip_check.to_be_bytes();
        set_l2(data, data_end, &s.fib, egress)
    }
}

/// The `FLOWS` key of the reply entry for a quoted packet the gateway sent (SNAT address:port →
/// backend:port): the reply direction is keyed backend → SNAT address, so source and destination
/// swap. The caller fills in the addresses (`src` = quoted destination, `dst` = quoted source).
#[inline(always)]
fn quoted_reply_key(family: u8, proto: u8, q_sport: u16, q_dport: u16) -> FlowKey {
    FlowKey {
        src: [0; 16],
        dst: [0; 16],
        sport: q_dport,
        dport: q_sport,
        proto,
        family,
        _pad: [0; 2],
    }
}

/// The reply-direction entry under `key`, if there is one. Its `new_src` is the service address
/// the client used, `new_dst` the client, `new_sport` the service port, `new_dport` the client's.
#[inline(always)]
fn reply_entry(key: &FlowKey) -> Option<*const FlowNat> {
    let entry = FLOWS.get_ptr(key)?;
    if unsafe { (*entry).flags } & FLOW_F_REPLY == 0 {
        return None;
    }
    Some(entry)
}

/// ICMPv6 error types that quote the offending packet and are translated back to the client
/// (RFC 4443): destination unreachable, packet too big, time exceeded, parameter problem.
const ICMP6_ERRORS: [u8; 4] = [1, 2, 3, 4];

/// The IPv6 counterpart of [`handle_icmp_v4`]: an ICMPv6 error a backend (or a router towards
/// it) sent about a NATed flow goes back to the client from the service address, quoting the
/// packet as the client sent it (client → service, the client's ports). IPv6 has no header
/// checksum; the ICMPv6 checksum covers the pseudo-header, so the outer address changes enter it
/// as well as every quoted word that changes, including the quoted TCP/UDP checksum, which is
/// updated too when the quote reaches it. The rest of the message (a Packet Too Big's MTU, a
/// Parameter Problem's pointer) is kept as it is.
///
/// Inlined like the rest: the whole program shares one 512-byte stack frame, which is why the
/// checksum deltas are summed a 32-bit word at a time ([`csum_delta_addr`]) rather than folded
/// 16 bits at a time (those unrolled updates spilled too many registers).
#[inline(always)]
fn handle_icmp_v6<C: Hook>(
    ctx: &C,
    data: usize,
    data_end: usize,
    p: &Packet,
    ifindex: u32,
) -> Forward {
    let ip = data + p.l3_off;
    let icmp = data + p.l4_off;
    let inner = icmp + 8;
    let inner_l4 = inner + 40;
    // Too short to quote an IPv6 header and the ports: not one we can translate; the stack
    // decides (and drops it if it is malformed).
    if ip + 40 > data_end || inner_l4 + 8 > data_end {
        return Forward::Pass;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Forward::Pass;
    };
    let s = unsafe { &mut *scratch };
    unsafe {
        let ty = *(icmp as *const u8);
        if !ICMP6_ERRORS.contains(&ty) {
            return Forward::Pass;
        }
        // Quoted IPv6 header without extension headers, quoting TCP or UDP.
        let version = *(inner as *const u8) >> 4;
        let proto = *((inner + 6) as *const u8);
        if version != 6 || (proto != PROTO_TCP && proto != PROTO_UDP) {
            return Forward::Pass;
        }
        let q_sport = u16::from_be_bytes(*(inner_l4 as *const [u8; 2]));
        let q_dport = u16::from_be_bytes(*((inner_l4 + 2) as *const [u8; 2]));
        s.key = quoted_reply_key(FAMILY_V6, proto, q_sport, q_dport);
        s.key.src = *((inner + IP6_DST_OFF) as *const [u8; 16]);
        s.key.dst = *((inner + IP6_SRC_OFF) as *const [u8; 16]);
        let Some(reply) = reply_entry(&s.key) else {
            return Forward::Pass;
        };
        let nat = &*reply;
        let egress = match fib(
            ctx,
            ifindex,
            FAMILY_V6,
            &nat.new_src,
            &nat.new_dst,
            &mut s.fib,
        ) {
            Ok(egress) => egress,
            Err(f) => return f,
        };
        let hlim = (ip + IP6_HLIM_OFF) as *mut u8;
        if *hlim <= 1 {
            return Forward::Pass;
        }

        let icmp_check_ptr = (icmp + 2) as *mut [u8; 2];
        // One delta for every quoted word that changes: SNAT address → backend becomes
        // client → service, with the client's ports. It enters the quoted TCP/UDP checksum (whose
        // pseudo-header holds the same addresses) and the ICMPv6 checksum alike.
        let mut quoted = csum_delta_addr(0, &s.key.dst, &nat.new_dst);
        quoted = csum_delta_addr(quoted, &s.key.src, &nat.new_src);
        quoted = csum_delta16(quoted, q_sport, nat.new_dport);
        quoted = csum_delta16(quoted, q_dport, nat.new_sport);
        // The outer addresses are in the ICMPv6 pseudo-header: service → client.
        let mut outer = csum_delta_addr(quoted, &p.src, &nat.new_src);
        outer = csum_delta_addr(outer, &p.dst, &nat.new_dst);
        // The quoted TCP/UDP checksum, when quoted (a UDP checksum of 0 stays 0).
        let q_check_at = if proto == PROTO_TCP {
            inner_l4 + 16
        } else {
            inner_l4 + 6
        };
        let q_check_ptr = q_check_at as *mut [u8; 2];
        if q_check_at + 2 <= data_end {
            let old_q_check = u16::from_be_bytes(*q_check_ptr);
            if proto == PROTO_TCP || old_q_check != 0 {
                let mut q_check = csum_apply(old_q_check, quoted);
                if proto == PROTO_UDP && q_check == 0 {
                    q_check = 0xffff;
                }
                outer = csum_delta16(outer, old_q_check, q_check);
                *q_check_ptr = q_check.to_be_bytes();
            }
        }
        let icmp_check = csum_apply(u16::from_be_bytes(*icmp_check_ptr), outer);
        *((inner + IP6_SRC_OFF) as *mut [u8; 16]) = nat.new_dst;
        *((inner + IP6_DST_OFF) as *mut [u8; 16]) = nat.new_src;
        *(inner_l4 as *mut [u8; 2]) = nat.new_dport.to_be_bytes();
        *((inner_l4 + 2) as *mut [u8; 2]) = nat.new_sport.to_be_bytes();
        *icmp_check_ptr = icmp_check.to_be_bytes();

        // Outer header: service → client, hop limit decremented.
        *hlim -= 1;
        *((ip + IP6_SRC_OFF) as *mut [u8; 16]) = nat.new_src;
        *((ip + IP6_DST_OFF) as *mut [u8; 16]) = nat.new_dst;
        set_l2(data, data_end, &s.fib, egress)
    }
}
