//! TLS passthrough splice: once the agent has chosen a backend for a connection, both sockets go
//! into `SPLICE_SOCKS` and this stream verdict program sends every byte arriving on one socket out
//! of the other, inside the kernel.

use aya_ebpf::{
    btf_maps::{HashMap, PerCpuArray, SockHash},
    helpers::bpf_get_socket_cookie,
    macros::{btf_map, stream_verdict},
    programs::SkBuffContext,
};
use gateway_common::{
    counters::TrafficCounters,
    listener::MAX_LISTENERS,
    nat::{MAX_SPLICED_SOCKETS, SplicePeer},
};

/// Spliced sockets: key (allocated by the agent, two per connection) → socket. Written by the
/// agent; the kernel removes a socket when it closes. Read by [`nodegate_splice`].
#[btf_map]
static SPLICE_SOCKS: SockHash<u32, { MAX_SPLICED_SOCKETS as usize }> = SockHash::new();

/// Socket cookie → the peer's key and the route's counter index. Written and cleaned up by the
/// agent; read here.
#[btf_map]
static SPLICE_PEERS: HashMap<u64, SplicePeer, { MAX_SPLICED_SOCKETS as usize }> = HashMap::new();

/// Per-CPU spliced bytes per TLSRoute counter index. Written here; summed by the agent.
#[btf_map]
static SPLICE_STATS: PerCpuArray<TrafficCounters, { MAX_LISTENERS as usize }> = PerCpuArray::new();

const SK_PASS: u32 = 1;

/// Redirects the bytes of a spliced socket to its peer's send queue.
#[stream_verdict]
pub fn nodegate_splice(ctx: SkBuffContext) -> u32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) };
    let Some(peer) = SPLICE_PEERS.get_ptr(cookie) else {
        return SK_PASS;
    };
    let peer = unsafe { *peer };
    if let Some(c) = SPLICE_STATS.get_ptr_mut(peer.route) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(ctx.len());
        }
    }
    SPLICE_SOCKS.redirect_skb(&ctx, peer.peer_key, 0) as u32
}
