//! The SNAT port range the L4 NAT draws from (`NAT_CONFIG`): `--snat-ports FIRST-LAST`, or by
//! default the widest span of unprivileged ports that the kernel's own ephemeral range
//! (net.ipv4.ip_local_port_range, where the host's outgoing connections, the L7 proxy's
//! among them, take their ports) leaves free. Kept apart, a NATed flow never shares a tuple
//! with a connection of the host's; wide, the range holds a port for every new flow of the
//! last few hundred milliseconds even at tens of thousands of connections a second.

use anyhow::Context as _;

use crate::cli::SnatPorts;

/// Lowest port `auto` hands out: the privileged ports belong to the host's services.
const FIRST_UNPRIVILEGED: u16 = 1024;

/// Where the kernel keeps its ephemeral range.
const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The range to program: the one given, or [`outside`] the kernel's ephemeral range.
pub fn resolve(ports: SnatPorts) -> anyhow::Result<(u16, u16)> {
    match ports {
        SnatPorts::Range(a, b) => Ok((a, b)),
        SnatPorts::Auto => {
            let text = std::fs::read_to_string(LOCAL_PORT_RANGE)
                .with_context(|| format!("reading {LOCAL_PORT_RANGE} for --snat-ports auto"))?;
            let local = parse_local_range(&text)
                .with_context(|| format!("{LOCAL_PORT_RANGE} holds {text:?}"))?;
            outside(local).with_context(|| {
                format!(
                    "the ephemeral range {}-{} leaves no ports for SNAT: pass --snat-ports",
                    local.0, local.1
                )
            })
        }
    }
}

/// "FIRST\tLAST\n" as the kernel writes it.
fn parse_local_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let (a, b) = (it.next()?.ok()?, it.next()?.ok()?);
    (a <= b).then_some((a, b))
}

/// The wider of the spans below and above `local` (from [`FIRST_UNPRIVILEGED`] up), if either
/// holds at least two ports.
fn outside(local: (u16, u16)) -> Option<(u16, u16)> {
    let below = (local.0 > FIRST_UNPRIVILEGED + 1).then(|| (FIRST_UNPRIVILEGED, local.0 - 1));
    let above =
        (local.1 < u16::MAX - 1).then(|| (local.1.max(FIRST_UNPRIVILEGED - 1) + 1, u16::MAX));
    let width = |r: &(u16, u16)| u32::from(r.1 - r.0);
    match (below, above) {
        (Some(b), Some(a)) => Some(if width(&a) > width(&b) { a } else { b }),
        (b, a) => b.or(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_the_widest_span_outside_the_ephemeral_range() {
        for (local, want) in [
            // The kernel's default: 31744 ports below against 4536 above.
            ((32768, 60999), Some((1024, 32767))),
            // Ephemeral ports low: the span above is wider.
            ((1024, 20000), Some((20001, 65535))),
            ((2000, 20000), Some((20001, 65535))),
            ((40000, 65535), Some((1024, 39999))),
            // Nothing left either side.
            ((1024, 65535), None),
            ((1025, 65534), None),
            ((1, 65535), None),
            // Below 1024 counts as taken, never handed out.
            ((500, 600), Some((1024, 65535))),
        ] {
            assert_eq!(outside(local), want, "ephemeral {local:?}");
        }
    }

    #[test]
    fn reads_the_kernels_format() {
        assert_eq!(parse_local_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_local_range("60999 32768"), None);
        assert_eq!(parse_local_range("32768"), None);
        assert_eq!(parse_local_range("x y"), None);
    }

    #[test]
    fn a_given_range_is_kept() {
        assert_eq!(
            resolve(SnatPorts::Range(61000, 61001)).unwrap(),
            (61000, 61001)
        );
    }
}
