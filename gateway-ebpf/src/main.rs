//! nodegate's kernel programs. The entry points are thin: parse the packet ([`parse`]), find the
//! listener it is addressed to ([`maps::LISTENERS`]), count it ([`maps::LISTENER_STATS`]), and hand it on.
#![no_std]
#![no_main]

mod maps;
mod parse;

use aya_ebpf::{
    EbpfContext,
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
    match handle(&ctx, ctx.data(), ctx.data_end(), len) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

/// TC clsact ingress entry point, for `--attach tc`.
#[classifier]
pub fn nodegate_tc_ingress(ctx: TcContext) -> i32 {
    let len = ctx.len() as u64;
    match handle(&ctx, ctx.data(), ctx.data_end(), len) {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop => aya_ebpf::bindings::TC_ACT_SHOT,
    }
}

enum Verdict {
    Pass,
    Drop,
}

#[inline(always)]
fn handle<C: EbpfContext>(ctx: &C, data: usize, data_end: usize, len: u64) -> Verdict {
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
    on_packet(ctx, &packet, len)
}

#[inline(always)]
fn on_packet<C: EbpfContext>(ctx: &C, packet: &Packet, len: u64) -> Verdict {
    if let Some(listener) = maps::find_listener(packet) {
        maps::count_listener(listener.id, len);
        if packet.tcp_syn {
            debug!(
                ctx,
                "TCP SYN for listener {} from port {}", listener.id, packet.sport
            );
        }
    }
    Verdict::Pass
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
