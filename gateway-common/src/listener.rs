//! The `LISTENERS` map: which (address, port, protocol) triples the data plane owns.
//!
//! Key: [`ListenerKey`]; value: [`ListenerValue`]. Written by the agent (from the compiled model, one
//! entry per Gateway listener socket), read by the XDP and TC programs on every packet. A listener bound
//! to the unspecified address (0.0.0.0 or ::) is stored with an all-zero `addr` and matches any
//! destination address of its family; the programs look up the exact address first, then the wildcard.

/// Address family of a [`ListenerKey`].
pub const FAMILY_V4: u8 = 4;
/// Address family of a [`ListenerKey`].
pub const FAMILY_V6: u8 = 6;
/// IANA protocol number of TCP, as stored in [`ListenerKey::proto`].
pub const PROTO_TCP: u8 = 6;
/// IANA protocol number of UDP, as stored in [`ListenerKey::proto`].
pub const PROTO_UDP: u8 = 17;

/// Key of the `LISTENERS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ListenerKey {
    /// Destination address: IPv4 in the first four bytes (network order, rest zero) or IPv6.
    pub addr: [u8; 16],
    /// Destination port in host byte order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// Value of the `LISTENERS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ListenerValue {
    /// Dense listener id: the index of this listener's counters in `LISTENER_STATS`.
    pub id: u32,
    /// `LISTENER_F_*` bits.
    pub flags: u32,
}

/// Capacity of `LISTENERS` and `LISTENER_STATS`: listener ids are below this.
pub const MAX_LISTENERS: u32 = 1024;

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::ListenerValue {}
}
