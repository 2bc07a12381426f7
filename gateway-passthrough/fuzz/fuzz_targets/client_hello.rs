//! Any bytes, any bound: the parser returns a result and never panics, and a hello it accepts
//! never claims more bytes than it was given.
#![no_main]

use gateway_passthrough::sni::parse_client_hello;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (bound, wire) = match data.split_first() {
        Some((b, rest)) => (usize::from(*b) * 256 + 1, rest),
        None => (1, data),
    };
    if let Ok(hello) = parse_client_hello(wire, bound) {
        assert!(hello.consumed <= wire.len());
        assert!(hello.consumed <= bound);
    }
});
