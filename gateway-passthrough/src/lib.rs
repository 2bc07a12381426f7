//! TLS passthrough: read a ClientHello without consuming it, take its SNI, steer the connection.

pub mod sni;
