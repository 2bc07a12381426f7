//! IPv4 load balancing with NAT: a flow's first packet picks a backend through the service's
//! Maglev ring, both directions get a connection-table entry, and every packet of the flow is
//! rewritten (destination to the backend and source to the gateway's egress address, or the
//! reverse for replies) with incremental checksum updates, then forwarded to the next hop found by
//! `bpf_fib_lookup`. Anything it cannot forward goes to the stack untouched.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::{bpf_fib_lookup, bpf_ktime_get_ns},
};
use gateway_common::{
    listener::{FAMILY_V4, PROTO_TCP, PROTO_UDP},
    nat::{FLOW_F_REPLY, FlowKey, FlowNat, MAGLEV_SIZE},
};

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};

use crate::{
    maps::{BACKENDS, FLOWS, IFADDRS, MAGLEV_RINGS, NAT_CONFIG, SERVICES},
    parse::Packet,
};

/// Per-CPU scratch space for the structures a new flow needs: the BPF stack (512 bytes for the
/// whole call chain) cannot hold them all. Only this program touches it.
#[repr(C)]
pub struct Scratch {
    key: FlowKey,
    reply_key: FlowKey,
    forward: FlowNat,
    reply: FlowNat,
    fib: FibParams,
}

/// See [`Scratch`]. Key 0 only.
#[btf_map]
static SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// What to do with a packet after NAT.
pub enum Forward {
    /// Send it out of this interface (`bpf_redirect`).
    Redirect(u32),
    /// Not ours, or not forwardable here: let the stack have it.
    Pass,
}

const AF_INET: u8 = 2;
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
        u32::from_ne_bytes([p.src[0], p.src[1], p.src[2], p.src[3]]),
        u32::from_ne_bytes([p.dst[0], p.dst[1], p.dst[2], p.dst[3]]),
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

/// RFC 1624 incremental update of a one's-complement checksum for a 16-bit word change.
#[inline(always)]
fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    let mut s: u32 = u32::from(!check) + u32::from(!old) + u32::from(new);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[inline(always)]
fn csum_replace4(check: u16, old: &[u8], new: &[u8]) -> u16 {
    let c = csum_replace2(
        check,
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    );
    csum_replace2(
        c,
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    )
}

/// Handles an IPv4 TCP/UDP packet: an existing flow is rewritten and forwarded; a new flow to a
/// listener with a service gets a backend; anything else passes.
#[inline(always)]
pub fn handle_v4<C: EbpfContext>(
    ctx: &C,
    data: usize,
    data_end: usize,
    p: &Packet,
    listener: Option<u32>,
    ifindex: u32,
) -> Forward {
    if p.family != FAMILY_V4 || (p.proto != PROTO_TCP && p.proto != PROTO_UDP) {
        return Forward::Pass;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Forward::Pass;
    };
    let s = unsafe { &mut *scratch };
    s.key = key_of(p);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = FLOWS.get_ptr_mut(&s.key) {
        let nat = unsafe {
            (*entry).last_seen_ns = now;
            (*entry).flags |= p.tcp_end;
            &*entry
        };
        return rewrite_and_forward(ctx, data, data_end, p, nat, ifindex, &mut s.fib);
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
    let backend = unsafe { *backend };
    if backend.family != FAMILY_V4 {
        return Forward::Pass;
    }
    // Where does the backend live? Its egress interface gives the SNAT source address.
    let Some((egress, _, _)) = fib(ctx, ifindex, &p.src[..4], &backend.addr[..4], &mut s.fib)
    else {
        return Forward::Pass;
    };
    let Some(ifaddr) = IFADDRS.get_ptr(egress) else {
        return Forward::Pass;
    };
    let snat_ip = unsafe { (*ifaddr).v4 };
    let Some(cfg) = NAT_CONFIG.get_ptr(0) else {
        return Forward::Pass;
    };
    let (port_min, port_max) = unsafe { ((*cfg).port_min, (*cfg).port_max) };
    if port_max <= port_min {
        return Forward::Pass;
    }
    let span = u32::from(port_max - port_min) + 1;
    let mut snat_ip16 = [0u8; 16];
    snat_ip16[..4].copy_from_slice(&snat_ip);
    s.reply_key = FlowKey {
        src: backend.addr,
        dst: snat_ip16,
        sport: backend.port,
        dport: 0,
        proto: p.proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    // Probe a few ports from the flow's hash for one whose reply tuple is free.
    let base = flow_hash(p).rotate_left(7);
    let mut found = false;
    for attempt in 0..8u32 {
        s.reply_key.dport = port_min + ((base.wrapping_add(attempt)) % span) as u16;
        if FLOWS.get_ptr(&s.reply_key).is_none() {
            found = true;
            break;
        }
    }
    if !found {
        return Forward::Pass;
    }
    s.forward = FlowNat {
        new_src: snat_ip16,
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
    rewrite_and_forward(ctx, data, data_end, p, &s.forward, ifindex, &mut s.fib)
}

/// Rewrites addresses and ports (with incremental checksums), then looks up the next hop, sets
/// the Ethernet addresses, decrements the TTL and asks for a redirect.
#[inline(always)]
fn rewrite_and_forward<C: EbpfContext>(
    ctx: &C,
    data: usize,
    data_end: usize,
    p: &Packet,
    nat: &FlowNat,
    ingress: u32,
    params: &mut FibParams,
) -> Forward {
    let Some((ifindex, smac, dmac)) =
        fib(ctx, ingress, &nat.new_src[..4], &nat.new_dst[..4], params)
    else {
        return Forward::Pass;
    };
    let ip = data + p.l3_off;
    let l4 = data + p.l4_off;
    if ip + 20 > data_end || l4 + 8 > data_end {
        return Forward::Pass;
    }
    let check_off = if p.proto == PROTO_TCP { 16 } else { 6 };
    if p.proto == PROTO_TCP && l4 + 20 > data_end {
        return Forward::Pass;
    }
    unsafe {
        // IPv4 header: addresses, TTL and header checksum.
        let ip_check_ptr = (ip + IP_CSUM_OFF) as *mut [u8; 2];
        let mut ip_check = u16::from_be_bytes(*ip_check_ptr);
        ip_check = csum_replace4(ip_check, &p.src[..4], &nat.new_src[..4]);
        ip_check = csum_replace4(ip_check, &p.dst[..4], &nat.new_dst[..4]);
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

        // L4: ports, and the checksum (which covers the pseudo-header addresses too). A UDP
        // checksum of 0 means "none" and stays 0.
        let l4_check_ptr = (l4 + check_off) as *mut [u8; 2];
        let mut l4_check = u16::from_be_bytes(*l4_check_ptr);
        let has_check = p.proto == PROTO_TCP || l4_check != 0;
        if has_check {
            l4_check = csum_replace4(l4_check, &p.src[..4], &nat.new_src[..4]);
            l4_check = csum_replace4(l4_check, &p.dst[..4], &nat.new_dst[..4]);
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

        // Ethernet: next hop.
        if data + 12 > data_end {
            return Forward::Pass;
        }
        *(data as *mut [u8; 6]) = dmac;
        *((data + 6) as *mut [u8; 6]) = smac;
    }
    Forward::Redirect(ifindex)
}

/// `bpf_fib_lookup` for an IPv4 (src, dst): (egress ifindex, source MAC, next-hop MAC).
#[inline(always)]
fn fib<C: EbpfContext>(
    ctx: &C,
    ingress: u32,
    src: &[u8],
    dst: &[u8],
    params: &mut FibParams,
) -> Option<(u32, [u8; 6], [u8; 6])> {
    *params = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.ifindex = ingress;
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return None;
    }
    Some((params.ifindex, params.smac, params.dmac))
}
