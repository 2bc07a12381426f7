//! Bounds-checked packet parsing shared by the XDP and TC programs: Ethernet (one optional VLAN tag),
//! IPv4 (with options) or IPv6 (no extension headers), then TCP or UDP ports.

use core::mem;

use gateway_common::listener::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

/// IANA protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IANA next-header number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_HDR_LEN: usize = 4;

/// Why a packet could not be parsed.
pub enum ParseError {
    /// The frame ends before a header it announces.
    Truncated,
    /// IPv4 IHL below 5.
    BadIpHeader,
    /// TCP data offset below 5.
    BadL4Header,
}

/// The fields of a TCP/UDP packet the programs act on.
pub struct Packet {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// Source address (IPv4 in the first four bytes).
    pub src: [u8; 16],
    /// Destination address (IPv4 in the first four bytes).
    pub dst: [u8; 16],
    /// Source port, host order.
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// A TCP segment with SYN set and ACK clear (a connection attempt).
    pub tcp_syn: bool,
    /// TCP FIN or RST flags: `FLOW_F_FIN` / `FLOW_F_RST` bits.
    pub tcp_end: u32,
    /// Offset of the IP header from the start of the frame.
    pub l3_off: usize,
    /// Offset of the TCP/UDP header.
    pub l4_off: usize,
}

/// Returns a pointer to a `T` at `offset` from `start` if the whole `T` lies before `end`.
#[inline(always)]
pub fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Result<*const T, ParseError> {
    if start + offset + mem::size_of::<T>() > end {
        return Err(ParseError::Truncated);
    }
    Ok((start + offset) as *const T)
}

/// Parses the headers between `data` and `data_end`. `Ok(None)` for anything that is not TCP, UDP,
/// ICMPv4 over IPv4 or ICMPv6 over IPv6 (ARP, fragments after the first, IPv6 extension headers):
/// those are not ours.
#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Result<Option<Packet>, ParseError> {
    let eth: *const EthHdr = ptr_at(data, data_end, 0)?;
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut offset = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        // The VLAN tag's TCI (2 bytes) is followed by the encapsulated ethertype.
        let inner: *const [u8; 2] = ptr_at(data, data_end, offset + 2)?;
        ether_type = u16::from_be_bytes(unsafe { *inner });
        offset += VLAN_HDR_LEN;
    }
    let mut packet = Packet {
        family: 0,
        proto: 0,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        tcp_syn: false,
        tcp_end: 0,
        l3_off: offset,
        l4_off: 0,
    };
    match ether_type {
        ETH_P_IPV4 => {
            let ip: *const Ipv4Hdr = ptr_at(data, data_end, offset)?;
            let ip = unsafe { &*ip };
            let ihl = (ip.vihl & 0x0f) as usize;
            if ihl < 5 {
                return Err(ParseError::BadIpHeader);
            }
            // A non-first fragment carries no L4 header.
            let frag_offset = u16::from_be_bytes(ip.frags) & 0x1fff;
            if frag_offset != 0 {
                return Ok(None);
            }
            packet.family = FAMILY_V4;
            packet.proto = ip.proto;
            packet.src[..4].copy_from_slice(&ip.src_addr);
            packet.dst[..4].copy_from_slice(&ip.dst_addr);
            offset += ihl * 4;
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(data, data_end, offset)?;
            let ip = unsafe { &*ip };
            packet.family = FAMILY_V6;
            packet.proto = ip.next_hdr;
            packet.src = ip.src_addr;
            packet.dst = ip.dst_addr;
            offset += Ipv6Hdr::LEN;
        }
        _ => return Ok(None),
    }
    packet.l4_off = offset;
    match packet.proto {
        PROTO_TCP => {
            let tcp: *const TcpHdr = ptr_at(data, data_end, offset)?;
            let tcp = unsafe { &*tcp };
            if tcp.doff() < 5 {
                return Err(ParseError::BadL4Header);
            }
            packet.sport = u16::from_be_bytes(tcp.source);
            packet.dport = u16::from_be_bytes(tcp.dest);
            packet.tcp_syn = tcp.syn() != 0 && tcp.ack() == 0;
            if tcp.fin() != 0 {
                packet.tcp_end |= gateway_common::nat::FLOW_F_FIN;
            }
            if tcp.rst() != 0 {
                packet.tcp_end |= gateway_common::nat::FLOW_F_RST;
            }
        }
        PROTO_UDP => {
            let udp: *const UdpHdr = ptr_at(data, data_end, offset)?;
            let udp = unsafe { &*udp };
            packet.sport = u16::from_be_bytes(udp.src);
            packet.dport = u16::from_be_bytes(udp.dst);
        }
        // ICMP errors about NATed flows are translated (nat::handle_icmp_v4 and
        // nat::handle_icmp_v6); ports stay 0. Everything else ICMP (echo, neighbour discovery)
        // passes there untouched.
        PROTO_ICMP if packet.family == FAMILY_V4 => {}
        PROTO_ICMPV6 if packet.family == FAMILY_V6 => {}
        _ => return Ok(None),
    }
    Ok(Some(packet))
}
