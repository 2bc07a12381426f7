//! nodegate's kernel programs. The entry points are thin: parse the packet ([`parse`]), find the
//! listener it is addressed to ([`maps::LISTENERS`]), count it ([`maps::LISTENER_STATS`]), and hand it on.
#![no_std]
#![no_main]

mod maps;
mod nat;
mod parse;
mod splice;

use aya_ebpf::helpers::{bpf_redirect, bpf_redirect_neigh};
use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use gateway_common::counters::DropReason;
use parse::{Packet, ParseError};

/// XDP entry point (native or generic mode).
#[xdp]
pub fn nodegate_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let ifindex = ctx.ingress_ifindex() as u32;
    match handle(&ctx, ctx.data(), ctx.data_end(), len, ifindex) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Redirect(to) => unsafe { bpf_redirect(to, 0) as u32 },
    }
}

/// TC clsact ingress entry point, for `--attach tc`.
#[classifier]
pub fn nodegate_tc_ingress(ctx: TcContext) -> i32 {
    let len = ctx.len() as u64;
    // Direct packet access needs the headers in the linear part of the skb.
    let _ = ctx.pull_data(core::cmp::min(len as u32, 128));
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    match handle(&ctx, ctx.data(), ctx.data_end(), len, ifindex) {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop => aya_ebpf::bindings::TC_ACT_SHOT,
        // An unresolved next hop: the kernel routes the rewritten packet, resolves the hop and
        // sends it (queued meanwhile) with the Ethernet header it then knows.
        Verdict::Redirect(to) if to & nat::VIA_NEIGH != 0 => unsafe {
            bpf_redirect_neigh(to & !nat::VIA_NEIGH, core::ptr::null_mut(), 0, 0) as i32
        },
        Verdict::Redirect(to) => unsafe { bpf_redirect(to, 0) as i32 },
    }
}

enum Verdict {
    Pass,
    Drop,
    Redirect(u32),
}

#[inline(always)]
fn handle<C: nat::Hook>(ctx: &C, data: usize, data_end: usize, len: u64, ifindex: u32) -> Verdict {
    let packet = match parse::parse(data, data_end) {
        Ok(Some(p)) => p,
        // Not IP, or IP but not TCP/UDP: not ours.
        Ok(None) => return Verdict::Pass,
        Err(e) => {
            let reason = e.reason();
            debug!(ctx, "dropped a malformed packet: reason {}", reason as u32);
            maps::count_drop(reason, len);
            return match e {
                // A frame too short to hold the headers it announces never reaches a socket either.
                ParseError::Truncated | ParseError::BadIpHeader | ParseError::BadL4Header => {
                    Verdict::Drop
                }
            };
        }
    };
    on_packet(ctx, data, data_end, &packet, len, ifindex)
}

#[inline(always)]
fn on_packet<C: nat::Hook>(
    ctx: &C,
    data: usize,
    data_end: usize,
    packet: &Packet,
    len: u64,
    ifindex: u32,
) -> Verdict {
    let listener = maps::find_listener(packet);
    if let Some(listener) = listener {
        maps::count_listener(listener.id, len);
        if packet.tcp_syn {
            debug!(
                ctx,
                "TCP SYN for listener {} from port {}", listener.id, packet.sport
            );
        }
    }
    match nat::handle(
        ctx,
        data,
        data_end,
        packet,
        listener.map(|l| l.id),
        ifindex,
        len,
    ) {
        nat::Forward::Redirect(to) => Verdict::Redirect(to),
        nat::Forward::Pass => Verdict::Pass,
        nat::Forward::NoSnatPort => {
            maps::count_drop(DropReason::NoSnatPort, len);
            Verdict::Drop
        }
        nat::Forward::NoNeighbour => {
            maps::count_drop(DropReason::NoNeighbour, len);
            Verdict::Drop
        }
    }
}

impl ParseError {
    fn reason(&self) -> DropReason {
        match self {
            ParseError::Truncated => DropReason::Truncated,
            ParseError::BadIpHeader => DropReason::BadIpHeader,
            ParseError::BadL4Header => DropReason::BadL4Header,
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
