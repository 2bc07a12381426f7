//! A frame sender for `bench l4`: UDP frames handed to the client's veth as XDP frames, the way
//! a NIC hands received frames to its driver, instead of as socket buffers.
//!
//! Why: on veth, a socket's skb reaches the gateway's native XDP program only after veth copies it
//! into a page with XDP headroom (a socket leaves ~16 bytes of headroom, XDP wants 256), and the
//! frame the program redirects is turned back into an skb at the far end. A real NIC's driver
//! runs XDP on the DMA page itself, before any skb exists. Frames sent with
//! `BPF_PROG_TEST_RUN` in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, kernel 5.18+) arrive at
//! the gateway the same way: as pages with headroom, on the peer's NAPI. Every path sees the same
//! frames; the sender costs a few hundred nanoseconds a frame, so the figure is the gateway's.
//!
//! Live mode recycles each page without copying the frame in again, and the paths rewrite what
//! they forward in place (MAC addresses, TTL, NAT), so the program writes the frame's headers
//! before it redirects: `write headers; return bpf_redirect(ifindex, 0)`, as xdp-trafficgen
//! does. It is loaded from raw instructions ([`program`]): the benchmark needs no second eBPF
//! object.

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_FUNC_REDIRECT: i32 = 23;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// Frames per test-run batch (the kernel's limit is 256; NAPI's budget is 64).
const BATCH: u32 = 64;

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (the fields up to `expected_attach_type`; the
/// kernel takes the size passed and requires the rest of its union zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_TEST_RUN` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Ethernet + IPv4 + UDP header bytes: what the program rewrites in every frame.
const HEADERS: usize = 14 + 20 + 8;

/// `*(u32 *)(r2 + off) = imm` for each 4 bytes of `headers` (a 2-byte store for the last two),
/// after checking `data + headers.len() <= data_end`; then `return bpf_redirect(ifindex, 0)`.
fn program(ifindex: u32, headers: &[u8]) -> Vec<Insn> {
    let insn = |code: u8, dst: u8, src: u8, off: i16, imm: i32| Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    };
    let mut stores = Vec::new();
    for (i, chunk) in headers.chunks(4).enumerate() {
        let off = (i * 4) as i16;
        stores.push(match *chunk {
            // BPF_ST | BPF_MEM | BPF_W: stored little-endian, as the bytes lie in memory.
            [a, b, c, d] => insn(0x62, 2, 0, off, i32::from_le_bytes([a, b, c, d])),
            // BPF_ST | BPF_MEM | BPF_H.
            [a, b] => insn(0x6a, 2, 0, off, i32::from(u16::from_le_bytes([a, b]))),
            _ => unreachable!("header length is even"),
        });
    }
    let mut p = vec![
        insn(0x61, 2, 1, 0, 0), // r2 = ctx->data (BPF_LDX | BPF_MEM | BPF_W)
        insn(0x61, 3, 1, 4, 0), // r3 = ctx->data_end
        insn(0xbf, 4, 2, 0, 0), // r4 = r2 (BPF_ALU64 | BPF_MOV | BPF_X)
        insn(0x07, 4, 0, 0, headers.len() as i32), // r4 += len (BPF_ALU64 | BPF_ADD | BPF_K)
        insn(0x2d, 4, 3, stores.len() as i16, 0), // if r4 > r3 skip the stores (BPF_JGT | BPF_X)
    ];
    p.extend(stores);
    p.extend([
        insn(0xb7, 1, 0, 0, ifindex as i32), // r1 = ifindex (BPF_ALU64 | BPF_MOV | BPF_K)
        insn(0xb7, 2, 0, 0, 0),              // r2 = 0
        insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT), // call bpf_redirect
        insn(0x95, 0, 0, 0, 0),              // exit
    ]);
    p
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a live, initialised bpf_attr prefix of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A loaded redirect program and the frame it sends.
pub struct FrameSender {
    prog: OwnedFd,
    frame: Vec<u8>,
}

/// What one frame carries: Ethernet addresses of the client's veth and the gateway's, and the UDP
/// 4-tuple.
pub struct FrameSpec {
    /// The client interface's MAC (source).
    pub src_mac: [u8; 6],
    /// The gateway interface's MAC (destination).
    pub dst_mac: [u8; 6],
    /// Source address and port.
    pub src: (Ipv4Addr, u16),
    /// Destination address and port.
    pub dst: (Ipv4Addr, u16),
    /// UDP payload length.
    pub payload: usize,
}

impl FrameSender {
    /// Loads the sender's program for `spec`'s frame; `ifindex` is the client's interface in the
    /// namespace the sender will run in.
    pub fn new(ifindex: u32, spec: &FrameSpec) -> anyhow::Result<Self> {
        let frame = udp_frame(spec);
        let insns = program(ifindex, &frame[..HEADERS]);
        let license = c"GPL";
        let mut name = [0u8; 16];
        name[..8].copy_from_slice(b"framegen");
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_XDP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            ..Default::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr).context("loading the frame sender's program")?;
        // SAFETY: the kernel returned a new fd that nothing else owns.
        let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { prog, frame })
    }

    /// Sends `count` copies of the frame (in batches of [`BATCH`]); call it on a thread in the
    /// client's namespace. Frames the target cannot take are dropped by the kernel, as a NIC's
    /// ring drops them.
    pub fn send(&self, count: u32) -> anyhow::Result<()> {
        let mut attr = TestRunAttr {
            prog_fd: self.prog.as_raw_fd() as u32,
            data_size_in: self.frame.len() as u32,
            data_in: self.frame.as_ptr() as u64,
            repeat: count.max(1),
            flags: BPF_F_TEST_XDP_LIVE_FRAMES,
            batch_size: BATCH,
            ..Default::default()
        };
        // Live mode reports no return value: a frame the redirect cannot deliver is dropped
        // and counted by the target, and the benchmark sees it as not delivered.
        bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN (live frames)")?;
        Ok(())
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next().context("short MAC")?, 16)
            .with_context(|| format!("MAC {s}"))?;
    }
    if parts.next().is_some() {
        bail!("MAC {s} too long");
    }
    Ok(mac)
}

/// One's-complement sum of `data` folded to 16 bits (not inverted).
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        acc += u32::from(word);
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

/// An Ethernet + IPv4 + UDP frame with valid checksums and a `0x5a` payload (as the socket
/// sender's).
fn udp_frame(spec: &FrameSpec) -> Vec<u8> {
    let udp_len = 8 + spec.payload;
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&spec.dst_mac);
    f.extend_from_slice(&spec.src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(ip_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0]); // id 0, DF
    f.extend_from_slice(&[64, 17, 0, 0]); // TTL, UDP, checksum below
    f.extend_from_slice(&spec.src.0.octets());
    f.extend_from_slice(&spec.dst.0.octets());
    let ip_csum = !(sum16(&f[ip_start..], 0) as u16);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&ip_csum.to_be_bytes());
    let udp_start = f.len();
    f.extend_from_slice(&spec.src.1.to_be_bytes());
    f.extend_from_slice(&spec.dst.1.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(udp_start + udp_len, 0x5a);
    // The pseudo-header: addresses, protocol, UDP length.
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&spec.src.0.octets());
    pseudo.extend_from_slice(&spec.dst.0.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let mut csum = !(sum16(&f[udp_start..], sum16(&pseudo, 0)) as u16);
    if csum == 0 {
        csum = 0xffff;
    }
    f[udp_start + 6..udp_start + 8].copy_from_slice(&csum.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_checksums_verify() {
        let spec = FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: (Ipv4Addr::new(10, 90, 1, 2), 40000),
            dst: (Ipv4Addr::new(10, 90, 1, 1), 7000),
            payload: 64,
        };
        let f = udp_frame(&spec);
        assert_eq!(f.len(), 14 + 20 + 8 + 64);
        // A header with its checksum in sums to 0xffff.
        assert_eq!(sum16(&f[14..34], 0), 0xffff);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&f[26..34]);
        pseudo.extend_from_slice(&[0, 17, 0, 72]);
        assert_eq!(sum16(&f[34..], sum16(&pseudo, 0)), 0xffff);
        assert_eq!(&f[0..6], &spec.dst_mac);
        assert_eq!(f.last(), Some(&0x5a));
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:0a:ff:00:10:01").unwrap(),
            [2, 10, 255, 0, 16, 1]
        );
        assert!(parse_mac("02:0a:ff:00:10").is_err());
        assert!(parse_mac("02:0a:ff:00:10:01:00").is_err());
    }
}
