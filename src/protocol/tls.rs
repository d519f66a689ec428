//! The TLS ClientHello, read far enough to route by it: the server name
//! (SNI) and the ALPN protocols a client offers, without terminating TLS.
//!
//! This module owns the wire format and nothing else: no sockets, no reads,
//! no clocks. The caller owns the connection, the read buffer and the
//! timeout; [`parse`] only judges the bytes received so far, exactly like
//! [`proxy::parse`](super::proxy::parse), and [`Reading`] does the same
//! for a buffer that grows, remembering the records it has taken in.
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
    Reading::default().judge(buf)
}

/// A ClientHello judged as its bytes arrive: [`Reading::judge`] gives the
/// verdict [`parse`] gives on the same bytes, but looks at each whole record
/// once, however many reads it came in, so one-byte records read one at a
/// time cost linear work, not quadratic. Each call's bytes must start with
/// the previous call's.
#[derive(Debug, Default)]
pub struct Reading {
    /// Bytes of the buffer taken in: whole records, their fragments added
    /// to `handshake`.
    taken: usize,
    /// The handshake bytes of those records.
    handshake: Vec<u8>,
}

impl Reading {
    /// Judges `buf`, the bytes a client sent so far.
    pub fn judge(&mut self, buf: &[u8]) -> Result<Parsed, ParseError> {
        let buf = buf.get(..MAX_BUFFER).unwrap_or(buf);
        loop {
            let rest = buf.get(self.taken..).unwrap_or(&[]);
            let header = rest.get(..RECORD_HEADER).unwrap_or(rest);
            check_record_header(header, self.taken == 0)?;
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
            let Some(fragment) = body.get(..len) else {
                // The record so far, judged with the records before it.
                if let Some(hello) = judge_handshake(&self.handshake, body)? {
                    return Ok(Parsed::Complete(hello));
                }
                return incomplete(buf);
            };
            #[cfg(test)]
            tests::BYTES_TAKEN.with(|t| t.set(t.get() + fragment.len()));
            self.handshake.extend_from_slice(fragment);
            self.taken += RECORD_HEADER + len;
            if let Some(hello) = judge_handshake(&self.handshake, &[])? {
                return Ok(Parsed::Complete(hello));
            }
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

/// Judges the handshake bytes gathered so far, `whole` then `more`: the
/// ClientHello once all of it is here, `None` while more is needed. Only a
/// complete ClientHello is copied together.
fn judge_handshake(whole: &[u8], more: &[u8]) -> Result<Option<ClientHello>, ParseError> {
    let at = |i: usize| whole.get(i).or_else(|| more.get(i - whole.len())).copied();
    match at(0) {
        None => return Ok(None),
        Some(CLIENT_HELLO) => {}
        Some(_) => {
            return Err(ParseError::Malformed(
                "first handshake message is not a ClientHello",
            ))
        }
    }
    let (Some(a), Some(b), Some(c)) = (at(1), at(2), at(3)) else {
        return Ok(None);
    };
    let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
    // Even in one record it could not fit under the cap.
    if RECORD_HEADER + HANDSHAKE_HEADER + len > MAX_BUFFER {
        return Err(ParseError::TooLarge);
    }
    let end = HANDSHAKE_HEADER + len;
    if whole.len() + more.len() < end {
        return Ok(None);
    }
    let hs: Cow<'_, [u8]> = if more.is_empty() {
        Cow::Borrowed(whole)
    } else if whole.is_empty() {
        Cow::Borrowed(more)
    } else {
        Cow::Owned([whole, more].concat())
    };
    client_hello(&hs[HANDSHAKE_HEADER..end]).map(Some)
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
mod tests {
    use super::*;

    thread_local! {
        /// Bytes of record fragments [`Reading`] took into its handshake.
        pub(super) static BYTES_TAKEN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    use crate::testing::XorShift;

    /// A ClientHello from OpenSSL (Python's `ssl`, captured through a memory
    /// BIO) for `API.Example.com.` offering ALPN `h2` and `http/1.1`.
    const OPENSSL_HELLO: &[u8] = include_bytes!("../../tests/data/client_hello_openssl.bin");

    /// One extension: type and data.
    fn ext(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend((data.len() as u16).to_be_bytes());
        out.extend(data);
        out
    }

    fn sni_ext(name: &[u8]) -> Vec<u8> {
        let mut entry = vec![NAME_TYPE_HOST];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name);
        let mut list = (entry.len() as u16).to_be_bytes().to_vec();
        list.extend(entry);
        ext(EXT_SERVER_NAME, &list)
    }

    fn alpn_ext(protocols: &[&[u8]]) -> Vec<u8> {
        let mut entries = Vec::new();
        for p in protocols {
            entries.push(p.len() as u8);
            entries.extend(*p);
        }
        let mut list = (entries.len() as u16).to_be_bytes().to_vec();
        list.extend(entries);
        ext(EXT_ALPN, &list)
    }

    /// A ClientHello body with `extensions` (already encoded), or none at all.
    fn body(session: usize, extensions: Option<&[u8]>) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend([7u8; 32]);
        b.push(session as u8);
        b.extend(vec![1u8; session]);
        b.extend([0, 4, 0x13, 0x01, 0x13, 0x02]);
        b.extend([1, 0]);
        if let Some(e) = extensions {
            b.extend((e.len() as u16).to_be_bytes());
            b.extend(e);
        }
        b
    }

    /// The handshake message around a body.
    fn handshake(body: &[u8]) -> Vec<u8> {
        let len = body.len() as u32;
        let mut hs = vec![CLIENT_HELLO];
        hs.extend(&len.to_be_bytes()[1..]);
        hs.extend(body);
        hs
    }

    /// `hs` split into handshake records of the given fragment sizes (the last
    /// one repeating).
    fn records(hs: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = hs;
        let mut i = 0;
        while !rest.is_empty() {
            let n = sizes[i.min(sizes.len() - 1)].clamp(1, rest.len());
            out.extend([CONTENT_HANDSHAKE, 3, 1]);
            out.extend((n as u16).to_be_bytes());
            out.extend(&rest[..n]);
            rest = &rest[n..];
            i += 1;
        }
        out
    }

    fn hello(sni: Option<&str>, alpn: &[&str]) -> ClientHello {
        ClientHello {
            sni: sni.map(str::to_owned),
            alpn: alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
        }
    }

    fn complete(buf: &[u8]) -> ClientHello {
        match parse(buf) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn openssl_hello_parses() {
        assert_eq!(
            complete(OPENSSL_HELLO),
            hello(Some("api.example.com"), &["h2", "http/1.1"])
        );
    }

    #[test]
    fn openssl_hello_byte_by_byte_and_over_records() {
        let expected = complete(OPENSSL_HELLO);
        for n in 0..OPENSSL_HELLO.len() {
            assert_eq!(parse(&OPENSSL_HELLO[..n]), Ok(Parsed::Incomplete), "at {n}");
        }
        // The same handshake re-split into records of 1, 2, 7 and 100 bytes.
        let hs = &OPENSSL_HELLO[RECORD_HEADER..];
        for size in [1, 2, 7, 100] {
            let split = records(hs, &[size]);
            if split.len() > MAX_BUFFER {
                assert_eq!(parse(&split), Err(ParseError::TooLarge), "{size}");
                continue;
            }
            for n in 0..split.len() {
                assert_eq!(parse(&split[..n]), Ok(Parsed::Incomplete), "{size} at {n}");
            }
            assert_eq!(complete(&split), expected, "{size}");
        }
    }

    #[test]
    fn bytes_after_the_hello_are_not_judged() {
        let mut buf = OPENSSL_HELLO.to_vec();
        buf.extend(b"\x14\x03\x03\x00\x01\x01 and then anything");
        assert_eq!(complete(&buf).sni.as_deref(), Some("api.example.com"));
    }

    #[test]
    fn names_are_normalised() {
        for (raw, want) in [
            ("WWW.Example.COM", "www.example.com"),
            ("a.b.", "a.b"),
            ("x", "x"),
            ("_srv.a-b.c", "_srv.a-b.c"),
            ("10.0.0.1", "10.0.0.1"),
        ] {
            let e = sni_ext(raw.as_bytes());
            let buf = records(&handshake(&body(0, Some(&e))), &[500]);
            assert_eq!(complete(&buf).sni.as_deref(), Some(want), "{raw}");
        }
    }

    #[test]
    fn no_sni_no_alpn_no_extensions() {
        let buf = records(&handshake(&body(32, None)), &[500]);
        assert_eq!(complete(&buf), ClientHello::default());
        let buf = records(&handshake(&body(0, Some(&[]))), &[500]);
        assert_eq!(complete(&buf), ClientHello::default());
        let mut e = ext(0xff01, &[0]);
        e.extend(alpn_ext(&[b"h2"]));
        let buf = records(&handshake(&body(0, Some(&e))), &[500]);
        assert_eq!(complete(&buf), hello(None, &["h2"]));
    }

    #[test]
    fn bad_hellos() {
        use ParseError::*;
        let with = |e: &[u8]| records(&handshake(&body(0, Some(e))), &[1000]);
        let good = sni_ext(b"a.example");
        let cases: Vec<(&str, Vec<u8>, ParseError)> = vec![
            ("http", b"GET / HTTP/1.1\r\n".to_vec(), NotTls),
            ("alert", vec![0x15, 3, 3, 0, 2, 2, 40], NotTls),
            ("sslv2", vec![0x80, 0x2e, 0x01, 0x03, 0x01], NotTls),
            ("major", vec![0x16, 2], NotTls),
            ("minor", vec![0x16, 3, 9], NotTls),
            (
                "empty record",
                vec![0x16, 3, 1, 0, 0],
                Malformed("empty record"),
            ),
            (
                "huge record",
                vec![0x16, 3, 1, 0x40, 1],
                Malformed("record too long"),
            ),
            (
                "server hello",
                records(&[2, 0, 0, 0], &[10]),
                Malformed("first handshake message is not a ClientHello"),
            ),
            ("too large", records(&[1, 0, 0x40, 0], &[10]), TooLarge),
            (
                "duplicate sni",
                with(&[good.clone(), good.clone()].concat()),
                Malformed("two server_name extensions"),
            ),
            (
                "duplicate alpn",
                with(&[alpn_ext(&[b"a"]), alpn_ext(&[b"b"])].concat()),
                Malformed("two ALPN extensions"),
            ),
            ("empty name", with(&sni_ext(b"")), Malformed("host name")),
            ("dot only", with(&sni_ext(b".")), Malformed("host name")),
            (
                "empty label",
                with(&sni_ext(b"a..b")),
                Malformed("host name"),
            ),
            ("space", with(&sni_ext(b"a b")), Malformed("host name")),
            ("nul", with(&sni_ext(b"a\0")), Malformed("host name")),
            (
                "too long name",
                with(&sni_ext(&[b'a'; 254])),
                Malformed("host name"),
            ),
            (
                "empty alpn list",
                with(&ext(EXT_ALPN, &[0, 0])),
                Malformed("ALPN list"),
            ),
            (
                "empty alpn name",
                with(&ext(EXT_ALPN, &[0, 1, 0])),
                Malformed("empty ALPN protocol"),
            ),
            (
                "short ext",
                with(&[0, 0, 0, 9, 1]),
                Malformed("extension length"),
            ),
            (
                "trailing",
                [records(
                    &handshake(&[body(0, Some(&good)), vec![0]].concat()),
                    &[1000],
                )]
                .concat(),
                Malformed("bytes after the extensions"),
            ),
            (
                "no suites",
                records(
                    &handshake(&[vec![3, 3], vec![0; 32], vec![0, 0, 0, 1, 0]].concat()),
                    &[100],
                ),
                Malformed("cipher suites"),
            ),
            (
                "long session",
                records(&handshake(&body(33, None)), &[100]),
                Malformed("session id longer than 32"),
            ),
        ];
        for (name, buf, want) in cases {
            assert_eq!(parse(&buf), Err(want), "{name}");
        }
        // A record of another type in the middle of the hello.
        let mut split = records(&OPENSSL_HELLO[RECORD_HEADER..], &[50]);
        split[55] = 0x17;
        assert_eq!(
            parse(&split),
            Err(Malformed("record type changed inside the ClientHello"))
        );
    }

    #[test]
    fn two_host_names_and_other_name_types() {
        let entry = |t: u8, n: &[u8]| {
            [vec![t], (n.len() as u16).to_be_bytes().to_vec(), n.to_vec()].concat()
        };
        let list = |entries: Vec<u8>| {
            ext(
                EXT_SERVER_NAME,
                &[(entries.len() as u16).to_be_bytes().to_vec(), entries].concat(),
            )
        };
        let two = list([entry(0, b"a"), entry(0, b"b")].concat());
        let buf = records(&handshake(&body(0, Some(&two))), &[500]);
        assert_eq!(parse(&buf), Err(ParseError::Malformed("two host names")));
        let other = list([entry(7, b"??"), entry(0, b"b")].concat());
        let buf = records(&handshake(&body(0, Some(&other))), &[500]);
        assert_eq!(complete(&buf).sni.as_deref(), Some("b"));
    }

    #[test]
    fn cap_is_enforced() {
        // A hello that fits only with small records: over the cap in 1-byte ones.
        let big = ext(0xfe00, &vec![0; 3000]);
        let hs = handshake(&body(0, Some(&[sni_ext(b"x.y"), big].concat())));
        assert_eq!(
            complete(&records(&hs, &[16000])).sni.as_deref(),
            Some("x.y")
        );
        let tiny = records(&hs, &[1]);
        assert!(tiny.len() > MAX_BUFFER);
        assert_eq!(parse(&tiny), Err(ParseError::TooLarge));
        assert_eq!(parse(&tiny[..MAX_BUFFER]), Err(ParseError::TooLarge));
        assert_eq!(parse(&tiny[..MAX_BUFFER - 1]), Ok(Parsed::Incomplete));
        // The largest that fits in one record, and one byte more.
        let pad = |n: usize| handshake(&body(0, Some(&ext(0xfe00, &vec![0; n]))));
        let fits = MAX_BUFFER - RECORD_HEADER - pad(0).len();
        assert!(complete(&records(&pad(fits), &[MAX_FRAGMENT]))
            .sni
            .is_none());
        assert_eq!(
            parse(&records(&pad(fits + 1), &[MAX_FRAGMENT])),
            Err(ParseError::TooLarge)
        );
    }

    #[test]
    fn labels() {
        assert_eq!(ParseError::NotTls.label(), "not_tls");
        assert_eq!(ParseError::Malformed("x").label(), "malformed");
        assert_eq!(ParseError::TooLarge.label(), "oversized");
        assert_eq!(
            ParseError::Malformed("host name").to_string(),
            "malformed ClientHello: host name"
        );
    }

    /// A random host name of one to four labels.
    fn random_name(rng: &mut XorShift) -> String {
        const CHARS: &[u8] = b"abcXYZ019-_";
        let labels = 1 + rng.below(4);
        (0..labels)
            .map(|_| {
                let n = 1 + rng.below(12);
                String::from_utf8(rng.bytes(n, CHARS)).unwrap()
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    /// A random valid ClientHello in random records, and what it must parse to.
    fn random_hello(rng: &mut XorShift) -> (Vec<u8>, ClientHello) {
        let mut want = ClientHello::default();
        let mut exts: Vec<Vec<u8>> = Vec::new();
        if rng.below(4) != 0 {
            let name = random_name(rng);
            let dot = if rng.below(4) == 0 { "." } else { "" };
            exts.push(sni_ext(format!("{name}{dot}").as_bytes()));
            want.sni = Some(name.to_ascii_lowercase());
        }
        if rng.below(2) == 0 {
            let protocols: Vec<Vec<u8>> = (0..1 + rng.below(3))
                .map(|_| {
                    let n = 1 + rng.below(8);
                    rng.bytes(n, &[])
                })
                .collect();
            let refs: Vec<&[u8]> = protocols.iter().map(Vec::as_slice).collect();
            exts.push(alpn_ext(&refs));
            want.alpn = protocols;
        }
        for _ in 0..rng.below(4) {
            let kind = 17 + rng.below(60000) as u16;
            let n = rng.below(300);
            exts.push(ext(kind, &rng.bytes(n, &[])));
        }
        // Shuffle the extensions' order.
        for i in (1..exts.len()).rev() {
            exts.swap(i, rng.below(i + 1));
        }
        let exts = exts.concat();
        let no_block = exts.is_empty() && rng.below(2) == 0;
        let b = body(rng.below(33), (!no_block).then_some(exts.as_slice()));
        let sizes: Vec<usize> = (0..4)
            .map(|_| match rng.below(10) {
                0 => 1 + rng.below(4),
                1..=3 => 1 + rng.below(200),
                _ => MAX_FRAGMENT,
            })
            .collect();
        (records(&handshake(&b), &sizes), want)
    }

    /// The invariants the module docs promise, for one input.
    fn check_invariants(buf: &[u8], rng: &mut XorShift) {
        let result = parse(buf);
        if buf.len() >= MAX_BUFFER {
            assert_ne!(result, Ok(Parsed::Incomplete));
            assert_eq!(parse(&buf[..MAX_BUFFER]), result);
        }
        // A prefix's verdict, once not Incomplete, is final.
        if !buf.is_empty() {
            let cut = rng.below(buf.len());
            let prefix = parse(&buf[..cut]);
            if prefix != Ok(Parsed::Incomplete) {
                assert_eq!(prefix, result, "{buf:?} at {cut}");
            }
            // Judged as it grows, in two reads, the verdict is the same.
            let mut reading = Reading::default();
            let first = reading.judge(&buf[..cut]);
            assert_eq!(first, prefix, "{buf:?} at {cut}");
            if first == Ok(Parsed::Incomplete) {
                assert_eq!(reading.judge(buf), result, "{buf:?} after {cut}");
            }
        }
    }

    #[test]
    fn one_byte_records_read_one_at_a_time_are_taken_in_once() {
        // 2,729 one-byte records, the most that fit: parsed again from
        // byte 0 after every read, that was 3.7 million bytes of handshake
        // copied for a ClientHello of 2,729.
        let body = body(0, Some(&ext(0xff01, &vec![0; 2_700])));
        let hs = handshake(&body);
        let buf = records(&hs, &[1]);
        let buf = &buf[..buf.len().min(MAX_BUFFER)];
        BYTES_TAKEN.with(|t| t.set(0));
        let mut reading = Reading::default();
        let verdicts: Vec<_> = (1..=buf.len())
            .map(|end| reading.judge(&buf[..end]))
            .take_while(|v| *v == Ok(Parsed::Incomplete))
            .collect();
        let verdict = reading.judge(buf);
        let taken = BYTES_TAKEN.with(|t| t.get());
        assert!(
            taken <= buf.len(),
            "{taken} bytes taken in for {}",
            buf.len()
        );
        assert_eq!(verdict, parse(buf));
        assert!(
            matches!(verdict, Ok(Parsed::Complete(_)) | Err(ParseError::TooLarge)),
            "{verdict:?}"
        );
        for (end, v) in verdicts.iter().enumerate().step_by(61) {
            assert_eq!(*v, parse(&buf[..=end]), "at {end}");
        }
    }

    #[test]
    fn random_and_mutated_hellos_never_break_invariants() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let (mut complete_count, mut valid) = (0usize, 0usize);
        for i in 0..200_000 {
            let buf = match i % 4 {
                0 => {
                    let (buf, want) = random_hello(&mut rng);
                    if buf.len() <= MAX_BUFFER {
                        assert_eq!(parse(&buf), Ok(Parsed::Complete(want)), "{buf:?}");
                        let cut = rng.below(buf.len());
                        assert_eq!(parse(&buf[..cut]), Ok(Parsed::Incomplete));
                        valid += 1;
                    }
                    buf
                }
                1 => {
                    let n = rng.below(600);
                    let mut b = vec![CONTENT_HANDSHAKE, 3, rng.below(5) as u8];
                    b.extend(rng.bytes(n, &[]));
                    b
                }
                _ => {
                    // A valid hello with a few bit flips, a random cut or
                    // random bytes after it.
                    let (mut b, _) = random_hello(&mut rng);
                    b.truncate(MAX_BUFFER);
                    for _ in 0..rng.below(4) {
                        let at = rng.below(b.len());
                        b[at] ^= 1 << rng.below(8);
                    }
                    match rng.below(3) {
                        0 => b.truncate(rng.below(b.len() + 1)),
                        1 => {
                            let n = rng.below(100);
                            b.extend(rng.bytes(n, &[]));
                        }
                        _ => {}
                    }
                    b
                }
            };
            if matches!(parse(&buf), Ok(Parsed::Complete(_))) {
                complete_count += 1;
            }
            check_invariants(&buf, &mut rng);
        }
        assert!(valid > 40_000, "only {valid} valid");
        // The mutated inputs must reach the accepting paths too.
        assert!(complete_count > 60_000, "only {complete_count} complete");
    }
}
