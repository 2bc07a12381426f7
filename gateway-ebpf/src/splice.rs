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
const SK_DROP: u32 = 0;

/// Redirects the bytes of a spliced socket to its peer's send queue.
#[stream_verdict]
pub fn nodegate_splice(ctx: SkBuffContext) -> u32 {
    // A FIN arrives as an empty skb. Redirected, the kernel's psock backlog fails to send zero
    // bytes and reports EPIPE on the peer, stopping its transmit; the FIN itself is already
    // handled by TCP (the agent passes it on), so there is nothing to move.
    if ctx.len() == 0 {
        return SK_DROP;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) };
    let Some(entry) = SPLICE_PEERS.get_ptr_mut(cookie) else {
        return SK_PASS;
    };
    // One socket's receive path runs under its lock, so this entry has one writer at a time.
    unsafe { (*entry).bytes += u64::from(ctx.len()) };
    let peer = unsafe { *entry };
    if let Some(c) = SPLICE_STATS.get_ptr_mut(peer.route) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(ctx.len());
        }
    }
    SPLICE_SOCKS.redirect_skb(&ctx, peer.peer_key, 0) as u32
}
