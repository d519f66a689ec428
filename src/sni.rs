//! The TLS ClientHello, read far enough to route by it: the server name
//! (SNI) and the ALPN protocols a client offers, without terminating TLS.
//!
//! This module owns the wire format and nothing else: no sockets, no reads,
//! no clocks, no state between calls. The caller owns the connection, the
//! read buffer and the timeout; [`parse`] only judges the bytes received so
//! far, exactly like [`proxy_protocol::parse`](crate::proxy_protocol::parse).
//!
//! Invariants that callers rely on (the tests and the fuzz target check them):
//! - [`parse`] never panics and never looks past `buf`, nor past its first
//!   [`MAX_BUFFER`] bytes: the verdict on a longer buffer is the verdict on
//!   that prefix.
//! - `Incomplete` is never returned once `MAX_BUFFER` bytes are available, so
//!   a caller that buffers at most `MAX_BUFFER` bytes needs no other limit.
//! - [`parse`] is prefix-consistent: an `Err` stays the same `Err` however
//!   many bytes follow, a `Complete` stays the same `Complete`. So calling it
//!   after every read and stopping at the first answer that is not
//!   `Incomplete` is correct, however the bytes were split.
//! - Rejection is early where it is cheap: a first byte other than a TLS
//!   handshake record's (0x16) fails at once, so plain HTTP sent to a TLS port
//!   is refused on its first read rather than at the timeout.
//!
//! What it accepts: TLS 1.0 to 1.3 handshake records (the record layer says
//! 3.0 to 3.4) carrying one ClientHello, split over any number of records
//! and reads. A record of another type before the ClientHello is complete, an
//! empty record, a duplicate SNI or ALPN extension, two host names, a length
//! that disagrees with its container: all malformed. Unknown extensions are
//! skipped. SSLv2-style hellos are not TLS here. The name is lowercased and
//! loses one trailing dot; it must be a plausible host name (letters,
//! digits, `-`, `_`, dots between non-empty labels, at most 253 bytes).

use std::borrow::Cow;

/// Most bytes of TLS records buffered while waiting for a complete
/// ClientHello. Real ones are 200 to 600 bytes, about 1.8 KiB with a
/// post-quantum key share; 16 KiB is one full TLS record.
pub const MAX_BUFFER: usize = 16 * 1024;

/// A TLS record header: type, version, length.
const RECORD_HEADER: usize = 5;
/// The largest plaintext fragment TLS allows in one record (2^14).
const MAX_FRAGMENT: usize = 1 << 14;
/// A handshake message's header: type and a 24-bit length.
const HANDSHAKE_HEADER: usize = 4;
/// Content type of a handshake record.
const CONTENT_HANDSHAKE: u8 = 0x16;
/// Handshake type of a ClientHello.
const CLIENT_HELLO: u8 = 0x01;
/// Extension number of server_name (RFC 6066).
const EXT_SERVER_NAME: u16 = 0;
/// Extension number of application_layer_protocol_negotiation (RFC 7301).
const EXT_ALPN: u16 = 16;
/// server_name's name type for a DNS host name.
const NAME_TYPE_HOST: u8 = 0;
/// Longest host name, without its trailing dot.
const MAX_HOST_NAME: usize = 253;

/// What a parse of the bytes received so far found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed (never returned once [`MAX_BUFFER`] bytes are
    /// available).
    Incomplete,
    /// The ClientHello is complete.
    Complete(ClientHello),
}

/// What routing needs from a ClientHello.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The host name the client asked for: lowercase, without a trailing
    /// dot; `None` when the client sent no server_name extension.
    pub sni: Option<String>,
    /// The ALPN protocols offered, in the client's order; empty when none.
    pub alpn: Vec<Vec<u8>>,
}

/// Why bytes are not, and can never become, a ClientHello we route.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The bytes do not start with a TLS handshake record.
    #[error("not TLS")]
    NotTls,
    /// TLS records, but not a well-formed ClientHello.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// The ClientHello does not fit in [`MAX_BUFFER`] bytes.
    #[error("ClientHello larger than {MAX_BUFFER} bytes")]
    TooLarge,
}

impl ParseError {
    /// A short stable name, for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            ParseError::NotTls => "not_tls",
            ParseError::Malformed(_) => "malformed",
            ParseError::TooLarge => "oversized",
        }
    }
}

/// Judges the bytes a client sent so far: a complete ClientHello, not yet,
/// or never. See the module docs for the guarantees.
pub fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    let buf = buf.get(..MAX_BUFFER).unwrap_or(buf);
    // The handshake bytes so far, borrowed while they come in one record.
    let mut handshake: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut rest = buf;
    let mut first = true;
    loop {
        let header = rest.get(..RECORD_HEADER).unwrap_or(rest);
        check_record_header(header, first)?;
        let Some(len) = header
            .get(3..5)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return incomplete(buf);
        };
        if len == 0 {
            return Err(ParseError::Malformed("empty record"));
        }
        if len > MAX_FRAGMENT {
            return Err(ParseError::Malformed("record too long"));
        }
        let body = rest.get(RECORD_HEADER..).unwrap_or(&[]);
        let fragment = body.get(..len).unwrap_or(body);
        if handshake.is_empty() {
            handshake = Cow::Borrowed(fragment);
        } else {
            handshake.to_mut().extend_from_slice(fragment);
        }
        first = false;
        if let Some(hello) = judge_handshake(&handshake)? {
            return Ok(Parsed::Complete(hello));
        }
        match body.get(len..) {
            Some(next) => rest = next,
            None => return incomplete(buf),
        }
    }
}

/// `Incomplete`, unless the cap is reached.
fn incomplete(buf: &[u8]) -> Result<Parsed, ParseError> {
    if buf.len() >= MAX_BUFFER {
        Err(ParseError::TooLarge)
    } else {
        Ok(Parsed::Incomplete)
    }
}

/// Checks the bytes present of a record header (up to 5).
fn check_record_header(header: &[u8], first: bool) -> Result<(), ParseError> {
    let wrong = if first {
        ParseError::NotTls
    } else {
        ParseError::Malformed("record type changed inside the ClientHello")
    };
    match header {
        [] => Ok(()),
        [t, ..] if *t != CONTENT_HANDSHAKE => Err(wrong),
        [_, major, ..] if *major != 3 => Err(wrong),
        [_, _, minor, ..] if *minor > 4 => Err(wrong),
        _ => Ok(()),
    }
}

/// Judges the handshake bytes gathered so far: the ClientHello once all of it
/// is here, `None` while more is needed.
fn judge_handshake(hs: &[u8]) -> Result<Option<ClientHello>, ParseError> {
    match hs.first() {
        None => return Ok(None),
        Some(&CLIENT_HELLO) => {}
        Some(_) => {
            return Err(ParseError::Malformed(
                "first handshake message is not a ClientHello",
            ))
        }
    }
    let Some(&[a, b, c]) = hs.get(1..HANDSHAKE_HEADER) else {
        return Ok(None);
    };
    let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
    // Even in one record it could not fit under the cap.
    if RECORD_HEADER + HANDSHAKE_HEADER + len > MAX_BUFFER {
        return Err(ParseError::TooLarge);
    }
    match hs.get(HANDSHAKE_HEADER..HANDSHAKE_HEADER + len) {
        Some(body) => client_hello(body).map(Some),
        None => Ok(None),
    }
}

/// Reads the fields of a complete ClientHello body.
fn client_hello(body: &[u8]) -> Result<ClientHello, ParseError> {
    use ParseError::Malformed;
    let mut r = Reader(body);
    let [major, _] = r.array().ok_or(Malformed("truncated version"))?;
    if major != 3 {
        return Err(Malformed("version"));
    }
    r.take(32).ok_or(Malformed("truncated random"))?;
    let session = r.vec8().ok_or(Malformed("session id"))?;
    if session.len() > 32 {
        return Err(Malformed("session id longer than 32"));
    }
    let suites = r.vec16().ok_or(Malformed("cipher suites"))?;
    if suites.0.is_empty() || suites.0.len() % 2 != 0 {
        return Err(Malformed("cipher suites"));
    }
    let compression = r.vec8().ok_or(Malformed("compression methods"))?;
    if compression.is_empty() {
        return Err(Malformed("compression methods"));
    }
    let mut hello = ClientHello::default();
    if r.0.is_empty() {
        return Ok(hello);
    }
    let mut extensions = r.vec16().ok_or(Malformed("extensions"))?;
    if !r.0.is_empty() {
        return Err(Malformed("bytes after the extensions"));
    }
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !extensions.0.is_empty() {
        let kind = extensions.u16().ok_or(Malformed("extension"))?;
        let data = extensions.vec16().ok_or(Malformed("extension length"))?;
        match kind {
            EXT_SERVER_NAME if seen_sni => return Err(Malformed("two server_name extensions")),
            EXT_SERVER_NAME => {
                seen_sni = true;
                hello.sni = server_name(data)?;
            }
            EXT_ALPN if seen_alpn => return Err(Malformed("two ALPN extensions")),
            EXT_ALPN => {
                seen_alpn = true;
                hello.alpn = alpn(data)?;
            }
            _ => {}
        }
    }
    Ok(hello)
}

/// The host name in a server_name extension's data (RFC 6066 section 3).
/// An empty extension (as a server sends it) carries no name.
fn server_name(mut data: Reader<'_>) -> Result<Option<String>, ParseError> {
    use ParseError::Malformed;
    if data.0.is_empty() {
        return Ok(None);
    }
    let mut list = data.vec16().ok_or(Malformed("server_name list"))?;
    if !data.0.is_empty() || list.0.is_empty() {
        return Err(Malformed("server_name list"));
    }
    let mut host = None;
    while !list.0.is_empty() {
        let kind = list.u8().ok_or(Malformed("server_name entry"))?;
        let name = list.vec16().ok_or(Malformed("server_name entry"))?;
        if kind != NAME_TYPE_HOST {
            continue;
        }
        if host.is_some() {
            return Err(Malformed("two host names"));
        }
        host = Some(host_name(name.0)?);
    }
    Ok(host)
}

/// A host name, checked and normalised: lowercase, no trailing dot.
fn host_name(raw: &[u8]) -> Result<String, ParseError> {
    let bad = ParseError::Malformed("host name");
    let name = raw.strip_suffix(b".").unwrap_or(raw);
    if name.is_empty() || name.len() > MAX_HOST_NAME {
        return Err(bad);
    }
    let char_ok = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_');
    if !name
        .split(|&c| c == b'.')
        .all(|label| !label.is_empty() && label.iter().all(char_ok))
    {
        return Err(bad);
    }
    Ok(name
        .iter()
        .map(|c| char::from(c.to_ascii_lowercase()))
        .collect())
}

/// The protocol names in an ALPN extension's data (RFC 7301 section 3.1).
fn alpn(mut data: Reader<'_>) -> Result<Vec<Vec<u8>>, ParseError> {
    use ParseError::Malformed;
    let mut list = data.vec16().ok_or(Malformed("ALPN list"))?;
    if !data.0.is_empty() || list.0.is_empty() {
        return Err(Malformed("ALPN list"));
    }
    let mut protocols = Vec::new();
    while !list.0.is_empty() {
        let name = list.vec8().ok_or(Malformed("ALPN protocol"))?;
        if name.is_empty() {
            return Err(Malformed("empty ALPN protocol"));
        }
        protocols.push(name.to_vec());
    }
    Ok(protocols)
}

/// A cursor over a byte slice; every read checks its length first.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let taken = self.0.get(..n)?;
        self.0 = self.0.get(n..)?;
        Some(taken)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }

    /// A vector with a two-byte length, as a reader of its contents.
    fn vec16(&mut self) -> Option<Reader<'a>> {
        let len = self.u16()?;
        self.take(usize::from(len)).map(Reader)
    }
}

#[cfg(test)]
mod tests;
