//! A ClientHello parser for SNI steering (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2, RFC 6066 §3).
//!
//! It reads the bytes a client sent first — one or more TLS records of content type handshake that
//! together carry the ClientHello, which may be fragmented across records — and returns the
//! server name and ALPN protocols. It never allocates more than the bound it is given, never
//! panics, and says whether more bytes could complete a hello ([`HelloError::Incomplete`]) or
//! whether none can ([`HelloError::Malformed`], [`HelloError::TooLarge`], [`HelloError::NotTls`]).

/// The content type of TLS handshake records.
const CONTENT_HANDSHAKE: u8 = 22;
/// The handshake message type of a ClientHello.
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Extension numbers.
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
/// RFC 8446 §5.1: a record's fragment is at most 2^14 bytes (plus expansion we do not accept here).
const MAX_RECORD_LEN: usize = 1 << 14;
/// Default bound on the bytes read while looking for a complete ClientHello.
pub const DEFAULT_MAX_HELLO: usize = 64 * 1024;

/// What a ClientHello says about where it wants to go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// The `host_name` entry of the server_name extension, lowercased, without a trailing dot.
    pub server_name: Option<String>,
    /// The ALPN protocol names offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
    /// How many bytes of the input the records holding the hello took.
    pub consumed: usize,
}

/// Why no ClientHello could be read (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The bytes so far are a valid prefix; at least this many more are needed.
    #[error("incomplete ClientHello: at least {0} more bytes needed")]
    Incomplete(usize),
    /// The first bytes are not a TLS handshake record.
    #[error("not a TLS handshake")]
    NotTls,
    /// The hello would be larger than the bound.
    #[error("ClientHello larger than {0} bytes")]
    TooLarge(usize),
    /// The bytes contradict the TLS grammar.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

/// Parses the ClientHello at the start of `buf`, reading no more than `max` bytes of records.
pub fn parse_client_hello(buf: &[u8], max: usize) -> Result<ClientHello, HelloError> {
    let (handshake, consumed) = reassemble(buf, max)?;
    let mut hello = parse_handshake(&handshake)?;
    hello.consumed = consumed;
    Ok(hello)
}

/// Concatenates the fragments of handshake records until the first handshake message is whole.
/// Returns the message (header included) and how many input bytes its records took.
fn reassemble(buf: &[u8], max: usize) -> Result<(Vec<u8>, usize), HelloError> {
    let mut message = Vec::new();
    let mut offset = 0;
    loop {
        if let Some(total) = handshake_len(&message) {
            if total > max {
                return Err(HelloError::TooLarge(max));
            }
            if message.len() >= total {
                message.truncate(total);
                return Ok((message, offset));
            }
        }
        let header = buf.get(offset..offset + 5);
        let Some(header) = header else {
            let have = buf.len() - offset.min(buf.len());
            if offset == 0 && !buf.is_empty() && buf[0] != CONTENT_HANDSHAKE {
                return Err(HelloError::NotTls);
            }
            return Err(HelloError::Incomplete(5 - have));
        };
        if header[0] != CONTENT_HANDSHAKE {
            return Err(if offset == 0 {
                HelloError::NotTls
            } else {
                HelloError::Malformed("a non-handshake record interrupts the ClientHello")
            });
        }
        // Record versions are 0x0300..=0x0304 (0x0301 is what TLS 1.3 clients send).
        if header[1] != 3 || header[2] > 4 {
            return Err(if offset == 0 {
                HelloError::NotTls
            } else {
                HelloError::Malformed("bad record version")
            });
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 {
            return Err(HelloError::Malformed("empty handshake record"));
        }
        if len > MAX_RECORD_LEN {
            return Err(HelloError::Malformed("record longer than 2^14 bytes"));
        }
        if offset + 5 + len > max {
            return Err(HelloError::TooLarge(max));
        }
        let Some(fragment) = buf.get(offset + 5..offset + 5 + len) else {
            return Err(HelloError::Incomplete(offset + 5 + len - buf.len()));
        };
        message.extend_from_slice(fragment);
        offset += 5 + len;
        if message.len() >= 4 && message[0] != HANDSHAKE_CLIENT_HELLO {
            return Err(HelloError::Malformed(
                "first handshake message is not a ClientHello",
            ));
        }
    }
}

/// The length (header included) of the handshake message `message` starts with, once known.
fn handshake_len(message: &[u8]) -> Option<usize> {
    let h = message.get(..4)?;
    Some(4 + (usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3])))
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if self.buf.len() < n {
            return Err(HelloError::Malformed(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a `len_bytes`-byte length prefix.
    fn vec(&mut self, len_bytes: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        let len = match len_bytes {
            1 => usize::from(self.u8(what)?),
            _ => usize::from(self.u16(what)?),
        };
        self.take(len, what)
    }
}

fn parse_handshake(message: &[u8]) -> Result<ClientHello, HelloError> {
    let mut r = Reader { buf: &message[4..] };
    let version = r.u16("client_version")?;
    if version >> 8 != 3 {
        return Err(HelloError::Malformed("client_version is not TLS"));
    }
    r.take(32, "random")?;
    let session_id = r.vec(1, "legacy_session_id")?;
    if session_id.len() > 32 {
        return Err(HelloError::Malformed("session id longer than 32 bytes"));
    }
    let suites = r.vec(2, "cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("cipher_suites"));
    }
    if r.vec(1, "compression_methods")?.is_empty() {
        return Err(HelloError::Malformed("compression_methods"));
    }
    let mut hello = ClientHello::default();
    if r.buf.is_empty() {
        // RFC 5246 §7.4.1.2: a hello without extensions is valid (and has no SNI).
        return Ok(hello);
    }
    let mut exts = Reader {
        buf: r.vec(2, "extensions")?,
    };
    let mut seen = Vec::new();
    while !exts.buf.is_empty() {
        let ty = exts.u16("extension type")?;
        let body = exts.vec(2, "extension body")?;
        // RFC 8446 §4.2: there MUST NOT be more than one extension of the same type.
        if seen.contains(&ty) {
            return Err(HelloError::Malformed("duplicate extension"));
        }
        seen.push(ty);
        match ty {
            EXT_SERVER_NAME => hello.server_name = parse_server_name(body)?,
            EXT_ALPN => hello.alpn = parse_alpn(body)?,
            _ => {}
        }
    }
    Ok(hello)
}

/// RFC 6066 §3: `ServerNameList server_name_list<1..2^16-1>`, entries of type host_name (0).
fn parse_server_name(body: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader { buf: body };
    let mut list = Reader {
        buf: r.vec(2, "server_name_list")?,
    };
    if !r.buf.is_empty() {
        return Err(HelloError::Malformed("bytes after server_name_list"));
    }
    let mut host = None;
    while !list.buf.is_empty() {
        let name_type = list.u8("name_type")?;
        let name = list.vec(2, "server name")?;
        if name_type == 0 {
            // "The ServerNameList MUST NOT contain more than one name of the same name_type."
            if host.is_some() {
                return Err(HelloError::Malformed("two host_name entries"));
            }
            host = Some(normalize_host(name)?);
        }
    }
    Ok(host)
}

/// A DNS hostname: ASCII letters, digits, '-', '.', '_' (seen in the wild), 1..=253 bytes, no
/// empty label; returned lowercased without a trailing dot.
fn normalize_host(name: &[u8]) -> Result<String, HelloError> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return Err(HelloError::Malformed("host_name length"));
    }
    if name
        .split(|b| *b == b'.')
        .any(|label| label.is_empty() || label.len() > 63)
    {
        return Err(HelloError::Malformed("host_name label"));
    }
    if !name
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(HelloError::Malformed("host_name characters"));
    }
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

/// RFC 7301 §3.1: `ProtocolName protocol_name_list<2..2^16-1>`, each name non-empty.
fn parse_alpn(body: &[u8]) -> Result<Vec<Vec<u8>>, HelloError> {
    let mut r = Reader { buf: body };
    let mut list = Reader {
        buf: r.vec(2, "protocol_name_list")?,
    };
    let mut out = Vec::new();
    while !list.buf.is_empty() {
        let name = list.vec(1, "protocol name")?;
        if name.is_empty() {
            return Err(HelloError::Malformed("empty protocol name"));
        }
        out.push(name.to_vec());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a ClientHello handshake message with the given extensions.
    fn hello_message(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        let mut ext_bytes = Vec::new();
        for (ty, data) in exts {
            ext_bytes.extend(ty.to_be_bytes());
            ext_bytes.extend((data.len() as u16).to_be_bytes());
            ext_bytes.extend(data);
        }
        body.extend((ext_bytes.len() as u16).to_be_bytes());
        body.extend(ext_bytes);
        let mut msg = vec![1];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    fn sni_ext(name: &str) -> (u16, Vec<u8>) {
        let mut entry = vec![0];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name.as_bytes());
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend(entry);
        (EXT_SERVER_NAME, data)
    }

    fn alpn_ext(protocols: &[&str]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for p in protocols {
            list.push(p.len() as u8);
            list.extend(p.as_bytes());
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        (EXT_ALPN, data)
    }

    /// Wraps `message` in records of at most `chunk` bytes each.
    fn records(message: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in message.chunks(chunk) {
            out.extend([CONTENT_HANDSHAKE, 3, 1]);
            out.extend((part.len() as u16).to_be_bytes());
            out.extend(part);
        }
        out
    }

    #[test]
    fn reads_sni_and_alpn() {
        let msg = hello_message(&[sni_ext("Example.COM."), alpn_ext(&["h2", "http/1.1"])]);
        let wire = records(&msg, MAX_RECORD_LEN);
        let hello = parse_client_hello(&wire, DEFAULT_MAX_HELLO).unwrap();
        assert_eq!(hello.server_name.as_deref(), Some("example.com"));
        assert_eq!(hello.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(hello.consumed, wire.len());
    }

    #[test]
    fn reassembles_a_hello_fragmented_across_records() {
        let msg = hello_message(&[sni_ext("a.example"), alpn_ext(&["h2"])]);
        for chunk in [1, 2, 3, 7, 64] {
            let wire = records(&msg, chunk);
            let hello = parse_client_hello(&wire, DEFAULT_MAX_HELLO).unwrap();
            assert_eq!(
                hello.server_name.as_deref(),
                Some("a.example"),
                "chunk {chunk}"
            );
            assert_eq!(hello.consumed, wire.len());
        }
    }

    #[test]
    fn every_strict_prefix_is_incomplete_never_an_error() {
        let msg = hello_message(&[sni_ext("prefix.example")]);
        for chunk in [5, 40, MAX_RECORD_LEN] {
            let wire = records(&msg, chunk);
            for cut in 0..wire.len() {
                match parse_client_hello(&wire[..cut], DEFAULT_MAX_HELLO) {
                    Err(HelloError::Incomplete(n)) => assert!(n > 0),
                    other => panic!("prefix {cut}/{} (chunk {chunk}): {other:?}", wire.len()),
                }
            }
        }
    }

    #[test]
    fn no_sni_is_a_hello_without_a_name() {
        let msg = hello_message(&[alpn_ext(&["h2"])]);
        let hello = parse_client_hello(&records(&msg, 100), DEFAULT_MAX_HELLO).unwrap();
        assert_eq!(hello.server_name, None);
    }

    #[test]
    fn rejects_what_the_rfcs_forbid() {
        let cases: Vec<(&str, Vec<u8>, HelloError)> = vec![
            (
                "plain HTTP",
                b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                HelloError::NotTls,
            ),
            (
                "duplicate extension (RFC 8446 4.2)",
                records(&hello_message(&[sni_ext("a.b"), sni_ext("c.d")]), 999),
                HelloError::Malformed("duplicate extension"),
            ),
            (
                "empty label",
                records(&hello_message(&[sni_ext("a..b")]), 999),
                HelloError::Malformed("host_name label"),
            ),
            (
                "non-hostname bytes",
                records(&hello_message(&[sni_ext("a b")]), 999),
                HelloError::Malformed("host_name characters"),
            ),
            (
                "server hello instead of client hello",
                {
                    let mut m = hello_message(&[]);
                    m[0] = 2;
                    records(&m, 999)
                },
                HelloError::Malformed("first handshake message is not a ClientHello"),
            ),
            (
                "alert record in the middle",
                {
                    let mut w = records(&hello_message(&[sni_ext("x.y")]), 10);
                    w[15] = 21;
                    w
                },
                HelloError::Malformed("a non-handshake record interrupts the ClientHello"),
            ),
        ];
        for (name, wire, want) in cases {
            assert_eq!(
                parse_client_hello(&wire, DEFAULT_MAX_HELLO),
                Err(want),
                "{name}"
            );
        }
    }

    #[test]
    fn a_hello_larger_than_the_bound_is_refused_before_it_is_read() {
        let big = "x".repeat(60);
        let names: Vec<String> = (0..40).map(|i| format!("{big}{i}")).collect();
        let protocols: Vec<&str> = names.iter().map(String::as_str).collect();
        let msg = hello_message(&[sni_ext("big.example"), alpn_ext(&protocols)]);
        let wire = records(&msg, 512);
        assert_eq!(
            parse_client_hello(&wire[..600], 1024),
            Err(HelloError::TooLarge(1024))
        );
        assert!(parse_client_hello(&wire, DEFAULT_MAX_HELLO).is_ok());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator (xorshift) standing in for the fuzzer in unit tests.
        let mut state = 0x9e3779b97f4a7c15u64;
        let base = records(
            &hello_message(&[sni_ext("fuzz.example"), alpn_ext(&["h2"])]),
            33,
        );
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut wire = base.clone();
            let flips = (state % 4 + 1) as usize;
            for k in 0..flips {
                let pos = ((state >> (8 * k)) as usize) % wire.len();
                wire[pos] ^= (state >> (16 + k)) as u8;
            }
            let cut = (state as usize >> 3) % (wire.len() + 1);
            let _ = parse_client_hello(&wire[..cut], 4096);
        }
    }
}
