//! The PROXY protocol (HAProxy's spec, v1 text and v2 binary): writing a
//! header that tells a backend who the real client was, and reading one that
//! a front proxy put before a client's bytes.
//!
//! This module owns the wire format and nothing else: no sockets, no reads,
//! no clocks, no state between calls. The caller owns the connection, the
//! read buffer and the timeout; [`parse`] only judges the bytes received so
//! far, and [`encode`] only appends to a `Vec`.
//!
//! Invariants that callers rely on (the tests and the fuzz target check them):
//! - [`parse`] never panics and never looks past `buf`. On
//!   `Complete { len, .. }`, `len <= buf.len()` and `len <= MAX_HEADER`, and
//!   `buf[len..]` is payload it did not judge.
//! - [`parse`] is prefix-consistent: every proper prefix of a complete header
//!   is `Incomplete`; an `Err` stays an `Err` however many bytes follow; a
//!   `Complete` stays the same `Complete`. So calling it after every read and
//!   stopping at the first answer that is not `Incomplete` is correct.
//! - `Incomplete` is never returned once `MAX_HEADER` bytes are available, so
//!   a caller that buffers at most `MAX_HEADER` bytes needs no other limit.
//! - Rejection is early: as soon as the bytes can no longer become a valid
//!   header they are refused (a first byte other than `P` or `\r` fails at
//!   once), so a client that doesn't speak the protocol isn't left waiting
//!   for a timeout. One allowance: while a v1 line is still arriving its
//!   addresses are judged only by characters and length (cheap, and never
//!   wrong about a real prefix); the full grammar applies once CRLF arrives.
//!
//! Choices where the spec leaves room:
//! - v1 is strict: single spaces, ports decimal without sign or leading zero,
//!   addresses in the family the protocol word names (an IPv6 address under
//!   `TCP4` is a family mismatch, not silently accepted). `UNKNOWN` may carry
//!   anything up to the first CRLF, as the spec requires receivers to ignore it.
//! - v2 with the PROXY command accepts `TCP4` (0x11), `TCP6` (0x21), `UNSPEC`
//!   (0x00) and UNIX stream (0x31); the last two yield no addresses. Datagram
//!   transports (UDP, UNIX dgram) are refused: this is a TCP proxy and such a
//!   header means the sender is confused about what it is talking to. Every
//!   other family byte is invalid per spec. With the LOCAL command the family
//!   byte is ignored, as the spec says, and no addresses are returned.
//! - v2 TLVs after the address block are skipped without validation; only
//!   the declared length is trusted, capped by [`MAX_HEADER`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

// Which header version to send is a setting, so the type is config's.
pub use crate::config::ProxyVersion as Version;

/// Most bytes a header may take before we give up (v1 is at most 107 by spec;
/// v2 is 16 + len, we cap len).
///
/// The v2 cap of 512 bytes after the fixed 16: the largest address block is
/// 216 bytes (UNIX) and a TCP6 one is 36, which leaves 476 bytes of TLVs over
/// IPv6. That covers what real senders attach (ALPN, an SNI authority of at
/// most 255, a UNIQUE_ID of at most 128 by spec, CRC32C, a short SSL block,
/// cloud endpoint IDs) while keeping the bytes a caller must buffer per
/// not-yet-identified connection small and fixed. A header that declares more
/// is refused as soon as its length field arrives, before the bytes do.
pub const MAX_HEADER: usize = V2_FIXED_LEN + 512;

/// What a parse of the bytes received so far found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed (call again with more; never returned once
    /// [`MAX_HEADER`] bytes are available).
    Incomplete,
    /// A full header of `len` bytes; the payload starts at `buf[len]`.
    Complete {
        /// Length of the header; `buf[len..]` is the client's payload.
        len: usize,
        /// `(source, dest)`; `None` for v1 UNKNOWN, v2 LOCAL, or v2
        /// UNSPEC/UNIX families.
        addresses: Option<(SocketAddr, SocketAddr)>,
    },
}

/// Why bytes are not, and can never become, a valid PROXY protocol header.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The bytes start with neither `PROXY ` (v1) nor the v2 signature.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// No CRLF within the 107 bytes v1 allows.
    #[error("v1 header too long")]
    V1TooLong,
    /// The protocol word is not `TCP4`, `TCP6` or `UNKNOWN`.
    #[error("v1 bad protocol")]
    V1BadProtocol,
    /// Two spaces in a row, or a space before the CRLF.
    #[error("v1 fields not separated by single spaces")]
    V1BadSpacing,
    /// A `TCP4`/`TCP6` line ended before its four fields.
    #[error("v1 missing field")]
    V1MissingField,
    /// A `TCP4`/`TCP6` line has more than four fields.
    #[error("v1 extra field")]
    V1ExtraField,
    /// The source address is not a valid address.
    #[error("v1 bad source address")]
    V1BadSourceAddress,
    /// The destination address is not a valid address.
    #[error("v1 bad destination address")]
    V1BadDestAddress,
    /// An address is valid but of the other family than the protocol word.
    #[error("v1 address family does not match the protocol")]
    V1FamilyMismatch,
    /// The source port is not a decimal in 0..=65535 without sign or leading zero.
    #[error("v1 bad source port")]
    V1BadSourcePort,
    /// The destination port is not a decimal in 0..=65535 without sign or leading zero.
    #[error("v1 bad destination port")]
    V1BadDestPort,
    /// The v2 version nibble is not 2.
    #[error("v2 unsupported version")]
    V2UnsupportedVersion,
    /// The v2 command nibble is neither LOCAL (0) nor PROXY (1).
    #[error("v2 bad command")]
    V2BadCommand,
    /// The v2 family/transport byte is not one the spec defines.
    #[error("v2 bad address family")]
    V2BadFamily,
    /// The v2 transport is a datagram one (UDP or UNIX dgram); this proxies TCP.
    #[error("v2 datagram transport not supported")]
    V2Datagram,
    /// The v2 length is too short for the address block its family needs.
    #[error("v2 address block shorter than its family needs")]
    V2ShortAddressBlock,
    /// The v2 length declares a header longer than [`MAX_HEADER`].
    #[error("header longer than {} bytes", MAX_HEADER)]
    Oversized,
}

/// v1 starts with this; the space is part of it, so `PROXY\r\n` is not v1.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The spec's worst case: `PROXY UNKNOWN` with two full IPv6 addresses and
/// two 5-digit ports, CRLF included.
const V1_MAX_LEN: usize = 107;
/// The longest textual IPv4 address, `255.255.255.255`.
const V1_MAX_IPV4_TEXT: usize = 15;
/// The longest textual IPv6 address, `ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`.
const V1_MAX_IPV6_TEXT: usize = 45;

/// The v2 signature; chosen by the spec so it can't start any text protocol.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport, 16-bit length.
const V2_FIXED_LEN: usize = 16;
/// Version 2 in the high nibble of byte 12.
const V2_VERSION: u8 = 2;
const V2_CMD_LOCAL: u8 = 0;
const V2_CMD_PROXY: u8 = 1;
const V2_FAM_UNSPEC: u8 = 0x00;
const V2_FAM_TCP4: u8 = 0x11;
const V2_FAM_UDP4: u8 = 0x12;
const V2_FAM_TCP6: u8 = 0x21;
const V2_FAM_UDP6: u8 = 0x22;
const V2_FAM_UNIX_STREAM: u8 = 0x31;
const V2_FAM_UNIX_DGRAM: u8 = 0x32;
/// Address block sizes: two addresses then two 16-bit ports; UNIX is two
/// 108-byte paths.
const V2_ADDR_LEN_TCP4: usize = 4 + 4 + 2 + 2;
const V2_ADDR_LEN_TCP6: usize = 16 + 16 + 2 + 2;
const V2_ADDR_LEN_UNIX: usize = 108 + 108;

/// Appends a header announcing a TCP connection from `source` to `dest`
/// (families must match; if they differ, map IPv4 to IPv4-mapped IPv6 so both
/// are v6).
///
/// IPv6 scope IDs and flow labels are not carried: neither version has a
/// field for them. A v2 header carries no TLVs.
pub fn encode(version: Version, source: SocketAddr, dest: SocketAddr, out: &mut Vec<u8>) {
    encode_with_tlvs(version, source, dest, &[], out);
}

/// Appends a v2 header announcing a UDP datagram from `source` to `dest`
/// (the specification's DGRAM families, UDP4 or UDP6), which goes in front
/// of each datagram relayed: a backend learns the client's address from
/// every datagram. Families are made equal as [`encode`] does.
pub fn encode_datagram(source: SocketAddr, dest: SocketAddr, out: &mut Vec<u8>) {
    let (source, dest) = match (source, dest) {
        (SocketAddr::V4(_), SocketAddr::V6(_)) | (SocketAddr::V6(_), SocketAddr::V4(_)) => {
            (to_v6(source), to_v6(dest))
        }
        _ => (source, dest),
    };
    let start = out.len();
    encode_v2(source, dest, &[], out);
    // The family byte follows the signature and the version/command byte.
    let family = &mut out[start + V2_SIGNATURE.len() + 1];
    *family = if *family == V2_FAM_TCP4 {
        V2_FAM_UDP4
    } else {
        V2_FAM_UDP6
    };
}

/// [`encode`], with `tlvs` (whole TLVs, such as [`forwardable_tlvs`] gives)
/// after a v2 header's addresses; v1 has no room for them.
pub fn encode_with_tlvs(
    version: Version,
    source: SocketAddr,
    dest: SocketAddr,
    tlvs: &[u8],
    out: &mut Vec<u8>,
) {
    let (source, dest) = match (source, dest) {
        (SocketAddr::V4(_), SocketAddr::V6(_)) | (SocketAddr::V6(_), SocketAddr::V4(_)) => {
            (to_v6(source), to_v6(dest))
        }
        _ => (source, dest),
    };
    match version {
        Version::V1 => encode_v1(source, dest, out),
        Version::V2 => encode_v2(source, dest, tlvs, out),
    }
}

fn to_v6(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        SocketAddr::V6(_) => addr,
    }
}

/// Lets `write!` format straight into the caller's buffer, so a v1 header
/// costs no allocation of its own.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn encode_v1(source: SocketAddr, dest: SocketAddr, out: &mut Vec<u8>) {
    use fmt::Write as _;
    let proto = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    // Can't fail: VecWriter never errors and std's Display for IpAddr and u16
    // only propagates the writer's errors. IpAddr's Display gives bare IPv6
    // (no brackets) and dotted IPv4-mapped, both of which parse back.
    let _ = write!(
        VecWriter(out),
        "PROXY {proto} {} {} {} {}\r\n",
        source.ip(),
        dest.ip(),
        source.port(),
        dest.port()
    );
}

fn encode_v2(source: SocketAddr, dest: SocketAddr, tlvs: &[u8], out: &mut Vec<u8>) {
    // The header's length field is 16 bits: TLVs that would not fit stay out.
    let tlvs = if V2_ADDR_LEN_TCP6 + tlvs.len() <= usize::from(u16::MAX) {
        tlvs
    } else {
        &[]
    };
    out.extend_from_slice(&V2_SIGNATURE);
    out.push((V2_VERSION << 4) | V2_CMD_PROXY);
    let len = |addresses: usize| ((addresses + tlvs.len()) as u16).to_be_bytes();
    match (source.ip(), dest.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(V2_FAM_TCP4);
            out.extend_from_slice(&len(V2_ADDR_LEN_TCP4));
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        // `encode` has made the families equal, so this arm is V6/V6; mapping
        // again is a no-op kept so this function is total on its own.
        (s, d) => {
            out.push(V2_FAM_TCP6);
            out.extend_from_slice(&len(V2_ADDR_LEN_TCP6));
            out.extend_from_slice(&v6_of(s).octets());
            out.extend_from_slice(&v6_of(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&dest.port().to_be_bytes());
    out.extend_from_slice(tlvs);
}

/// TLV types that describe the header they came in, not the connection, so
/// they are not passed on: CRC32C (a checksum of that header) and NOOP.
const V2_TLV_NOT_FORWARDED: [u8; 2] = [0x03, 0x04];

/// The TLVs of `header`, a complete v2 header as [`parse`] judged it, that
/// can be passed on to a backend in a header of ringlb's: every TLV after
/// the address block but a checksum or a NOOP, as they came. Empty for a v1
/// header, a v2 header without TLVs, or TLVs whose lengths do not add up to
/// the header's (then none is trusted).
pub fn forwardable_tlvs(header: &[u8]) -> Vec<u8> {
    if !header.starts_with(&V2_SIGNATURE) {
        return Vec::new();
    }
    let addresses = match header.get(13) {
        Some(&(V2_FAM_TCP4 | V2_FAM_UDP4)) => V2_ADDR_LEN_TCP4,
        Some(&(V2_FAM_TCP6 | V2_FAM_UDP6)) => V2_ADDR_LEN_TCP6,
        Some(&(V2_FAM_UNIX_STREAM | V2_FAM_UNIX_DGRAM)) => V2_ADDR_LEN_UNIX,
        _ => 0,
    };
    let Some(rest) = header.get(V2_FIXED_LEN + addresses..) else {
        return Vec::new();
    };
    let mut list = Tlvs(rest);
    let mut out = Vec::new();
    for (kind, tlv) in list.by_ref() {
        if !V2_TLV_NOT_FORWARDED.contains(&kind) {
            out.extend_from_slice(tlv);
        }
    }
    if !list.0.is_empty() {
        return Vec::new();
    }
    out
}

/// The TLVs of a list, each as its type and the whole TLV; it ends at the
/// first whose length runs past the list, which stays in `.0`.
struct Tlvs<'a>(&'a [u8]);

impl<'a> Iterator for Tlvs<'a> {
    type Item = (u8, &'a [u8]);

    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let head = self.0.get(..3)?;
        let end = 3 + usize::from(u16::from_be_bytes([head[1], head[2]]));
        let tlv = self.0.get(..end)?;
        self.0 = &self.0[end..];
        Some((head[0], tlv))
    }
}

/// TLV types by which cloud load balancers name the private endpoint a
/// connection came through.
const PP2_TYPE_GCP: u8 = 0xE0;
const PP2_TYPE_AWS: u8 = 0xEA;
const PP2_TYPE_AZURE: u8 = 0xEE;

/// Longest endpoint ID kept for the access log (AWS's are 22 characters).
const MAX_ENDPOINT_ID: usize = 64;

/// The private endpoint a connection came through, from `tlvs` (a TLV list
/// as [`forwardable_tlvs`] gives it), for the access log: AWS's VPC endpoint
/// ID (type 0xEA, subtype 1) as it came, e.g. `vpce-08d2bf15fac5001c9`,
/// with any byte that is not printable ASCII escaped; Azure's Private Link
/// ID (0xEE, subtype 1, a little-endian u32) as `azure:N`; Google's Private
/// Service Connect ID (0xE0, a big-endian u64) as `gcp:N`. The first one
/// found; `None` without any.
pub fn endpoint_id(tlvs: &[u8]) -> Option<String> {
    Tlvs(tlvs).find_map(|(kind, tlv)| {
        let value = &tlv[3..];
        match (kind, value) {
            (PP2_TYPE_AWS, [1, id @ ..]) if !id.is_empty() => {
                let id = &id[..id.len().min(MAX_ENDPOINT_ID)];
                Some(id.escape_ascii().to_string())
            }
            (PP2_TYPE_AZURE, &[1, a, b, c, d]) => {
                Some(format!("azure:{}", u32::from_le_bytes([a, b, c, d])))
            }
            (PP2_TYPE_GCP, &[a, b, c, d, e, f, g, h]) => Some(format!(
                "gcp:{}",
                u64::from_be_bytes([a, b, c, d, e, f, g, h])
            )),
            _ => None,
        }
    })
}

fn v6_of(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Parses a v1 or v2 header at the start of `buf` (either version is
/// accepted, detected by signature).
///
/// Call it again with the longer buffer after each read until it returns
/// something other than `Ok(Parsed::Incomplete)`; see the module docs for the
/// guarantees that makes safe.
pub fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    if buf.is_empty() {
        Ok(Parsed::Incomplete)
    } else if agrees_with(buf, V1_PREFIX) {
        parse_v1(buf)
    } else if agrees_with(buf, &V2_SIGNATURE) {
        parse_v2(buf)
    } else {
        Err(ParseError::NotProxy)
    }
}

/// True when `buf` and `magic` agree on every byte both have: `buf` is a
/// prefix of `magic` or starts with it.
fn agrees_with(buf: &[u8], magic: &[u8]) -> bool {
    buf.iter().zip(magic).all(|(a, b)| a == b)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ParseError> {
    // Only the first 107 bytes can hold the line; never look further, so a
    // long payload after a short header costs nothing.
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let Some(body) = window.get(V1_PREFIX.len()..) else {
        // Still inside "PROXY ", which `parse` has already matched.
        return Ok(Parsed::Incomplete);
    };
    if let Some(cr) = body.windows(2).position(|w| w == b"\r\n") {
        let line = body.get(..cr).unwrap_or_default();
        let addresses = check_v1_line(line, true)?;
        return Ok(Parsed::Complete {
            len: V1_PREFIX.len() + cr + 2,
            addresses,
        });
    }
    // No CRLF yet. Judge what has arrived first, so a bad field is reported
    // as such rather than as the length it happened to run to.
    match body.strip_suffix(b"\r") {
        // A trailing CR is either the terminator, so the line is whole, or a
        // CR inside the line, which only UNKNOWN tolerates, and a whole-line
        // check accepts UNKNOWN anyway. Either way the whole-line check is
        // the right test of whether this can still become a header.
        Some(line) => check_v1_line(line, true)?,
        None => check_v1_line(body, false)?,
    };
    // The CRLF must end by byte 107, so with 107 bytes in hand it's too
    // late, and with 106 only a CR in the last slot can still make it.
    let too_late =
        buf.len() >= V1_MAX_LEN || (buf.len() == V1_MAX_LEN - 1 && buf.last() != Some(&b'\r'));
    if too_late {
        return Err(ParseError::V1TooLong);
    }
    Ok(Parsed::Incomplete)
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

/// Checks the text between `PROXY ` and CRLF. With `whole` false the line is
/// still arriving: its last field may be cut short, so that field is only
/// checked for being a possible start of a valid one. Returns the addresses
/// when `whole` (for TCP4/TCP6), otherwise `None`.
fn check_v1_line(line: &[u8], whole: bool) -> Result<Option<(SocketAddr, SocketAddr)>, ParseError> {
    const PROTOCOLS: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];
    let mut fields = line.split(|&b| b == b' ');
    let proto = fields.next().unwrap_or_default();
    if !whole && !line.contains(&b' ') {
        // The protocol word itself is still arriving.
        return if PROTOCOLS.iter().any(|p| p.starts_with(proto)) {
            Ok(None)
        } else {
            Err(ParseError::V1BadProtocol)
        };
    }
    let family = match proto {
        b"TCP4" => Family::V4,
        b"TCP6" => Family::V6,
        // The spec: with UNKNOWN the receiver ignores everything up to CRLF.
        b"UNKNOWN" => return Ok(None),
        // "PROXY  TCP4 ...": the protocol is there, one space too late.
        b"" if !line.is_empty() => return Err(ParseError::V1BadSpacing),
        _ => return Err(ParseError::V1BadProtocol),
    };

    let mut src_ip = None;
    let mut dst_ip = None;
    let mut src_port = None;
    let mut dst_port = None;
    let mut fields = fields.enumerate().peekable();
    while let Some((i, field)) = fields.next() {
        // Only the last field of an unfinished line can be cut short.
        let complete = whole || fields.peek().is_some();
        if field.is_empty() && complete {
            return Err(ParseError::V1BadSpacing);
        }
        match (i, complete) {
            (0, true) => src_ip = Some(v1_ip(field, family, ParseError::V1BadSourceAddress)?),
            (1, true) => dst_ip = Some(v1_ip(field, family, ParseError::V1BadDestAddress)?),
            (2, true) => src_port = Some(v1_port(field).ok_or(ParseError::V1BadSourcePort)?),
            (3, true) => dst_port = Some(v1_port(field).ok_or(ParseError::V1BadDestPort)?),
            (0, false) => v1_ip_start(field, family, ParseError::V1BadSourceAddress)?,
            (1, false) => v1_ip_start(field, family, ParseError::V1BadDestAddress)?,
            (2, false) if !v1_port_start(field) => return Err(ParseError::V1BadSourcePort),
            (3, false) if !v1_port_start(field) => return Err(ParseError::V1BadDestPort),
            (2 | 3, false) => {}
            _ => return Err(ParseError::V1ExtraField),
        }
    }
    if !whole {
        return Ok(None);
    }
    match (src_ip, dst_ip, src_port, dst_port) {
        (Some(si), Some(di), Some(sp), Some(dp)) => {
            Ok(Some((SocketAddr::new(si, sp), SocketAddr::new(di, dp))))
        }
        _ => Err(ParseError::V1MissingField),
    }
}

/// A complete v1 address field. `bad` says which field it is; a valid
/// address of the other family is a mismatch rather than garbage, which makes
/// a misconfigured sender easier to diagnose.
fn v1_ip(field: &[u8], family: Family, bad: ParseError) -> Result<IpAddr, ParseError> {
    let text = std::str::from_utf8(field).map_err(|_| bad)?;
    // std's parsers are strict in the ways the spec wants: exactly four
    // decimal octets without leading zeros, IPv6 without brackets or zone.
    let v4 = text.parse::<Ipv4Addr>();
    let v6 = text.parse::<Ipv6Addr>();
    match (family, v4, v6) {
        (Family::V4, Ok(a), _) => Ok(IpAddr::V4(a)),
        (Family::V6, _, Ok(a)) => Ok(IpAddr::V6(a)),
        (Family::V4, Err(_), Ok(_)) | (Family::V6, Ok(_), Err(_)) => {
            Err(ParseError::V1FamilyMismatch)
        }
        _ => Err(bad),
    }
}

/// Could `field` still grow into an address of `family`? Judged by
/// characters and length only, which never refuses a real prefix.
fn v1_ip_start(field: &[u8], family: Family, bad: ParseError) -> Result<(), ParseError> {
    let v4_char = |b: &u8| b.is_ascii_digit() || *b == b'.';
    let v6_char = |b: &u8| b.is_ascii_hexdigit() || *b == b':' || *b == b'.';
    match family {
        Family::V4 if field.len() <= V1_MAX_IPV4_TEXT && field.iter().all(v4_char) => Ok(()),
        // A colon can only mean IPv6 text under a TCP4 line.
        Family::V4 if field.contains(&b':') && field.iter().all(v6_char) => {
            Err(ParseError::V1FamilyMismatch)
        }
        Family::V6 if field.len() <= V1_MAX_IPV6_TEXT && field.iter().all(v6_char) => Ok(()),
        _ => Err(bad),
    }
}

/// A complete v1 port: decimal, no sign, no leading zero, at most 65535.
fn v1_port(field: &[u8]) -> Option<u16> {
    if field.is_empty() || !v1_port_start(field) {
        return None;
    }
    u16::try_from(decimal(field)?).ok()
}

/// Could `field` still grow into a valid port? Each rule in [`v1_port`] only
/// gets harder to meet as digits are added, so checking them on the prefix
/// never refuses a real port.
fn v1_port_start(field: &[u8]) -> bool {
    let leading_zero = field.len() > 1 && field.first() == Some(&b'0');
    field.len() <= 5 && !leading_zero && decimal(field).is_some_and(|v| v <= u32::from(u16::MAX))
}

/// The value of an all-ASCII-digit string, `None` for anything else (or if
/// it overflows, which the length limits already prevent).
fn decimal(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |acc, &b| {
        let d = char::from(b).to_digit(10)?;
        acc.checked_mul(10)?.checked_add(d)
    })
}

/// What a v2 header with the PROXY command says is in its address block.
#[derive(Clone, Copy)]
enum V2Block {
    /// Nothing we use: UNSPEC family, UNIX stream, or the LOCAL command.
    Ignored {
        min_len: usize,
    },
    Tcp4,
    Tcp6,
}

impl V2Block {
    fn min_len(self) -> usize {
        match self {
            V2Block::Ignored { min_len } => min_len,
            V2Block::Tcp4 => V2_ADDR_LEN_TCP4,
            V2Block::Tcp6 => V2_ADDR_LEN_TCP6,
        }
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ParseError> {
    // `parse` has checked the signature bytes present; each later byte is
    // judged as soon as it arrives so a bad header fails without waiting.
    let Some(&ver_cmd) = buf.get(V2_SIGNATURE.len()) else {
        return Ok(Parsed::Incomplete);
    };
    if ver_cmd >> 4 != V2_VERSION {
        return Err(ParseError::V2UnsupportedVersion);
    }
    let local = match ver_cmd & 0x0f {
        V2_CMD_LOCAL => true,
        V2_CMD_PROXY => false,
        _ => return Err(ParseError::V2BadCommand),
    };

    let Some(&fam) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    let block = if local {
        // The spec: with LOCAL the receiver uses the real endpoints and
        // ignores the protocol block, family included.
        V2Block::Ignored { min_len: 0 }
    } else {
        match fam {
            V2_FAM_UNSPEC => V2Block::Ignored { min_len: 0 },
            V2_FAM_TCP4 => V2Block::Tcp4,
            V2_FAM_TCP6 => V2Block::Tcp6,
            V2_FAM_UNIX_STREAM => V2Block::Ignored {
                min_len: V2_ADDR_LEN_UNIX,
            },
            V2_FAM_UDP4 | V2_FAM_UDP6 | V2_FAM_UNIX_DGRAM => return Err(ParseError::V2Datagram),
            _ => return Err(ParseError::V2BadFamily),
        }
    };

    // The high length byte alone can already prove the header oversized.
    let Some(&len_hi) = buf.get(14) else {
        return Ok(Parsed::Incomplete);
    };
    if V2_FIXED_LEN + (usize::from(len_hi) << 8) > MAX_HEADER {
        return Err(ParseError::Oversized);
    }
    let Some(&len_lo) = buf.get(15) else {
        return Ok(Parsed::Incomplete);
    };
    let declared = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    let total = V2_FIXED_LEN + declared;
    if total > MAX_HEADER {
        return Err(ParseError::Oversized);
    }
    if declared < block.min_len() {
        return Err(ParseError::V2ShortAddressBlock);
    }

    let Some(rest) = buf.get(V2_FIXED_LEN..total) else {
        return Ok(Parsed::Incomplete);
    };
    // TLVs, if any, follow the address block; they are skipped unread.
    let addresses = match block {
        V2Block::Ignored { .. } => None,
        V2Block::Tcp4 => {
            Some(v2_addresses::<4>(rest, IpAddr::from).ok_or(ParseError::V2ShortAddressBlock)?)
        }
        V2Block::Tcp6 => {
            Some(v2_addresses::<16>(rest, IpAddr::from).ok_or(ParseError::V2ShortAddressBlock)?)
        }
    };
    Ok(Parsed::Complete {
        len: total,
        addresses,
    })
}

/// Reads source address, destination address, source port, destination port
/// (all network order) where each address is `N` bytes (4 or 16). `None` if
/// the block is too short, which the length check before makes impossible.
fn v2_addresses<const N: usize>(
    block: &[u8],
    ip: fn([u8; N]) -> IpAddr,
) -> Option<(SocketAddr, SocketAddr)> {
    let src = ip(take(block, 0)?);
    let dst = ip(take(block, N)?);
    let src_port = u16::from_be_bytes(take(block, 2 * N)?);
    let dst_port = u16::from_be_bytes(take(block, 2 * N + 2)?);
    Some((
        SocketAddr::new(src, src_port),
        SocketAddr::new(dst, dst_port),
    ))
}

/// `N` bytes of `buf` from `at`, or `None` if they are not all there.
fn take<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn datagram_headers_carry_the_udp_families() {
        let mut out = Vec::new();
        let (client, front) = ("192.0.2.1:5353", "198.51.100.2:53");
        encode_datagram(client.parse().unwrap(), front.parse().unwrap(), &mut out);
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x12, 0, 12, 192, 0, 2, 1, 198, 51, 100, 2]);
        want.extend_from_slice(&5353u16.to_be_bytes());
        want.extend_from_slice(&53u16.to_be_bytes());
        assert_eq!(out, want);
        // Mixed families go as IPv6, UDP6.
        out.clear();
        encode_datagram(
            client.parse().unwrap(),
            "[2001:db8::1]:53".parse().unwrap(),
            &mut out,
        );
        assert_eq!(out[12..16], [0x21, 0x22, 0, 36]);
        assert_eq!(out.len(), 16 + 36);
    }

    use super::*;

    #[test]
    fn endpoint_ids_of_the_three_clouds_and_none_of_anything_else() {
        let aws = [&[0xea, 0x00, 0x17, 0x01][..], b"vpce-08d2bf15fac5001c9"].concat();
        let azure = [0xee, 0x00, 0x05, 0x01, 0x15, 0xcd, 0x5b, 0x07];
        let gcp = [0xe0, 0x00, 0x08, 0, 0, 0, 0, 0, 0, 0x30, 0x39];
        let authority = [&[0x02, 0x00, 0x03][..], b"a.b"].concat();
        assert_eq!(
            endpoint_id(&[&authority[..], &aws].concat()).as_deref(),
            Some("vpce-08d2bf15fac5001c9")
        );
        assert_eq!(endpoint_id(&azure).as_deref(), Some("azure:123456789"));
        assert_eq!(endpoint_id(&gcp).as_deref(), Some("gcp:12345"));
        assert_eq!(endpoint_id(&authority), None);
        // A subtype other than the endpoint ID, a wrong length, a control
        // character, a TLV cut short.
        assert_eq!(endpoint_id(&[0xea, 0x00, 0x02, 0x02, b'x']), None);
        assert_eq!(endpoint_id(&[0xe0, 0x00, 0x02, 1, 2]), None);
        assert_eq!(
            endpoint_id(&[0xea, 0x00, 0x03, 0x01, b'x', 0x1b]).as_deref(),
            Some("x\\x1b")
        );
        assert_eq!(endpoint_id(&aws[..10]), None);
    }

    #[test]
    fn forwardable_tlvs_are_the_header_s_but_checksum_and_noop_and_round_trip() {
        let endpoint = [0xea, 0x00, 0x02, 0x01, b'x'];
        let crc = [0x03, 0x00, 0x04, 9, 9, 9, 9];
        let noop = [0x04, 0x00, 0x00];
        let s: SocketAddr = "192.0.2.1:5555".parse().unwrap();
        let d: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let mut header = Vec::new();
        let tlvs = [&endpoint[..], &crc, &noop].concat();
        encode_with_tlvs(Version::V2, s, d, &tlvs, &mut header);
        assert!(matches!(parse(&header), Ok(Parsed::Complete { len, .. }) if len == header.len()));
        assert_eq!(forwardable_tlvs(&header), endpoint);
        // Passed on, they come out of ringlb's header the same.
        let mut again = Vec::new();
        encode_with_tlvs(Version::V2, s, d, &forwardable_tlvs(&header), &mut again);
        assert_eq!(forwardable_tlvs(&again), endpoint);
        // None in v1, none without TLVs, and none from lengths that do not add up.
        let mut v1 = Vec::new();
        encode_with_tlvs(Version::V1, s, d, &tlvs, &mut v1);
        assert!(v1.starts_with(b"PROXY TCP6 "));
        assert!(forwardable_tlvs(&v1).is_empty());
        let mut plain = Vec::new();
        encode(Version::V2, s, d, &mut plain);
        assert!(forwardable_tlvs(&plain).is_empty());
        let mut bad = Vec::new();
        encode_with_tlvs(Version::V2, s, d, &[0xea, 0x00, 0x09, 1], &mut bad);
        assert!(forwardable_tlvs(&bad).is_empty());
    }
    use crate::testing::XorShift;
    use std::net::{SocketAddrV4, SocketAddrV6};

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), port))
    }

    fn v6(s: &str, port: u16) -> SocketAddr {
        SocketAddr::V6(SocketAddrV6::new(s.parse().unwrap(), port, 0, 0))
    }

    fn encoded(version: Version, source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
        let mut out = Vec::new();
        encode(version, source, dest, &mut out);
        out
    }

    fn v2_header(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    /// A v2 header whose length field says `len` but with no bytes after it.
    fn v2_head_only(ver_cmd: u8, fam: u8, len: u16) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    fn pairs() -> Vec<(SocketAddr, SocketAddr)> {
        vec![
            (v4([192, 0, 2, 1], 56324), v4([198, 51, 100, 2], 443)),
            (v4([0, 0, 0, 0], 0), v4([255, 255, 255, 255], 65535)),
            (v6("2001:db8::1", 40000), v6("2001:db8::2", 8080)),
            (
                v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
                v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
            ),
            (v6("::", 0), v6("::1", 1)),
            // Mixed families: encode maps the IPv4 side to IPv4-mapped IPv6.
            (v4([203, 0, 113, 7], 1234), v6("2001:db8::80", 80)),
            (v6("2001:db8::7", 1234), v4([203, 0, 113, 80], 80)),
        ]
    }

    /// What parse should give back for a pair: the pair itself, with both
    /// sides mapped to IPv6 when the families differ.
    fn expected(source: SocketAddr, dest: SocketAddr) -> (SocketAddr, SocketAddr) {
        if source.is_ipv4() == dest.is_ipv4() {
            (source, dest)
        } else {
            (to_v6(source), to_v6(dest))
        }
    }

    type Addresses = Option<(SocketAddr, SocketAddr)>;

    /// Every valid header the tests know, each with what parse must return.
    fn valid_headers() -> Vec<(Vec<u8>, Addresses)> {
        let mut all = Vec::new();
        for (s, d) in pairs() {
            for version in [Version::V1, Version::V2] {
                all.push((encoded(version, s, d), Some(expected(s, d))));
            }
        }
        all.push((b"PROXY UNKNOWN\r\n".to_vec(), None));
        all.push((b"PROXY UNKNOWN anything \x00\xff\r goes\r\n".to_vec(), None));
        // The spec's worst case: exactly 107 bytes.
        let longest = format!(
            "PROXY UNKNOWN {0} {0} 65535 65535\r\n",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(longest.len(), V1_MAX_LEN);
        all.push((longest.into_bytes(), None));
        all.push((
            b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 0\r\n".to_vec(),
            Some((v6("::ffff:192.0.2.1", 1), v6("::1", 0))),
        ));
        all.push((
            b"PROXY TCP6 2001:DB8::A 0:0:0:0:0:0:0:1 65535 9\r\n".to_vec(),
            Some((v6("2001:db8::a", 65535), v6("::1", 9))),
        ));
        // LOCAL: no addresses, family ignored, even a datagram one.
        all.push((v2_header(0x20, 0x00, &[]), None));
        all.push((v2_header(0x20, 0x12, &[1, 2, 3]), None));
        // UNSPEC under PROXY, and UNIX stream with its 216-byte block.
        all.push((v2_header(0x21, 0x00, &[]), None));
        all.push((v2_header(0x21, 0x31, &[b'/'; 216]), None));
        // TCP4 with TLVs after the addresses (skipped unread, even garbage).
        let mut block = vec![127, 0, 0, 1, 127, 0, 0, 2, 0x04, 0xd2, 0x00, 0x50];
        block.extend_from_slice(&[0x04, 0x00, 0x03, 0, 0, 0, 0xee, 0xff]);
        all.push((
            v2_header(0x21, 0x11, &block),
            Some((v4([127, 0, 0, 1], 1234), v4([127, 0, 0, 2], 80))),
        ));
        // The largest header accepted: exactly MAX_HEADER bytes.
        let mut block = vec![0u8; 36];
        block.resize(MAX_HEADER - V2_FIXED_LEN, 0xaa);
        all.push((
            v2_header(0x21, 0x21, &block),
            Some((v6("::", 0), v6("::", 0))),
        ));
        all
    }

    #[test]
    fn round_trip_with_and_without_payload() {
        for (s, d) in pairs() {
            for version in [Version::V1, Version::V2] {
                let header = encoded(version, s, d);
                let want = Parsed::Complete {
                    len: header.len(),
                    addresses: Some(expected(s, d)),
                };
                assert_eq!(parse(&header), Ok(want), "{version} {s} {d}");

                let mut with_payload = header.clone();
                with_payload.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n\r\n\r\n\0\r\nQUIT\n");
                let want = Parsed::Complete {
                    len: header.len(),
                    addresses: Some(expected(s, d)),
                };
                assert_eq!(parse(&with_payload), Ok(want), "{version} {s} {d}");
            }
        }
    }

    #[test]
    fn round_trip_random_pairs() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        for _ in 0..5_000 {
            let addr = |rng: &mut XorShift| {
                let port = rng.next() as u16;
                if rng.below(2) == 0 {
                    SocketAddr::new(IpAddr::from((rng.next() as u32).to_be_bytes()), port)
                } else {
                    let ip = (u128::from(rng.next()) << 64) | u128::from(rng.next());
                    SocketAddr::new(IpAddr::from(ip.to_be_bytes()), port)
                }
            };
            let (s, d) = (addr(&mut rng), addr(&mut rng));
            for version in [Version::V1, Version::V2] {
                let header = encoded(version, s, d);
                assert!(header.len() <= MAX_HEADER);
                // Early rejection must never refuse the start of a real
                // header, whatever digits its addresses happen to have.
                for cut in 0..header.len() {
                    assert_eq!(parse(&header[..cut]), Ok(Parsed::Incomplete), "{header:?}");
                }
                assert_eq!(
                    parse(&header),
                    Ok(Parsed::Complete {
                        len: header.len(),
                        addresses: Some(expected(s, d)),
                    }),
                    "{version} {s} {d}"
                );
            }
        }
    }

    #[test]
    fn encode_appends() {
        let mut out = b"keep".to_vec();
        encode(
            Version::V1,
            v4([1, 2, 3, 4], 5),
            v4([6, 7, 8, 9], 10),
            &mut out,
        );
        assert_eq!(out, b"keepPROXY TCP4 1.2.3.4 6.7.8.9 5 10\r\n");
    }

    #[test]
    fn v1_exact_bytes() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        let (s, d) = (v4([192, 0, 2, 1], 56324), v4([198, 51, 100, 2], 443));
        assert_eq!(encoded(Version::V1, s, d), line);
        assert_eq!(
            parse(line),
            Ok(Parsed::Complete {
                len: line.len(),
                addresses: Some((s, d)),
            })
        );
        assert_eq!(
            encoded(Version::V1, v6("2001:db8::1", 1), v6("::1", 2)),
            b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n"
        );
    }

    #[test]
    fn v2_exact_bytes() {
        // Written out from the spec, section 2.2.
        let want: [u8; 28] = [
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54,
            0x0A, // signature
            0x21, // version 2, command PROXY
            0x11, // AF_INET, STREAM
            0x00, 0x0C, // 12 bytes of addresses follow
            0x7F, 0x00, 0x00, 0x01, // 127.0.0.1
            0x7F, 0x00, 0x00, 0x02, // 127.0.0.2
            0x04, 0xD2, // 1234
            0x00, 0x50, // 80
        ];
        let (s, d) = (v4([127, 0, 0, 1], 1234), v4([127, 0, 0, 2], 80));
        assert_eq!(encoded(Version::V2, s, d), want);
        assert_eq!(
            parse(&want),
            Ok(Parsed::Complete {
                len: 28,
                addresses: Some((s, d)),
            })
        );
    }

    #[test]
    fn bad_headers() {
        use ParseError::*;
        let ok4 = [127, 0, 0, 1, 127, 0, 0, 2, 0x04, 0xd2, 0x00, 0x50];
        let mut no_crlf = b"PROXY UNKNOWN ".to_vec();
        no_crlf.resize(120, b'a');
        let mut crlf_at_108 = b"PROXY UNKNOWN ".to_vec();
        crlf_at_108.resize(106, b'a');
        crlf_at_108.extend_from_slice(b"\r\n");
        let table: Vec<(Vec<u8>, ParseError)> = vec![
            (b"GET / HTTP/1.1\r\n".to_vec(), NotProxy),
            (b"G".to_vec(), NotProxy),
            (b"\x16\x03\x01".to_vec(), NotProxy),
            (b"PROXY\r\n".to_vec(), NotProxy),
            (b"\r\n\r\nGET".to_vec(), NotProxy),
            (no_crlf.clone(), V1TooLong),
            (no_crlf[..106].to_vec(), V1TooLong),
            (crlf_at_108, V1TooLong),
            (
                b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                V1BadProtocol,
            ),
            (
                b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                V1BadProtocol,
            ),
            (b"PROXY UNKNOWNX\r\n".to_vec(), V1BadProtocol),
            (b"PROXY \r\n".to_vec(), V1BadProtocol),
            (b"PROXY TCP5".to_vec(), V1BadProtocol),
            (
                b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n".to_vec(),
                V1BadSourceAddress,
            ),
            (
                b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                V1BadSourceAddress,
            ),
            (
                b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n".to_vec(),
                V1BadSourceAddress,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.x 1 2\r\n".to_vec(),
                V1BadDestAddress,
            ),
            (b"PROXY TCP6 [::1] ::1 1 2\r\n".to_vec(), V1BadSourceAddress),
            (
                b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n".to_vec(),
                V1BadSourceAddress,
            ),
            (b"PROXY TCP4 host 5.6.7.8 1 2".to_vec(), V1BadSourceAddress),
            (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n".to_vec(), V1FamilyMismatch),
            (
                b"PROXY TCP4 1.2.3.4 2001:db8::1 1 2\r\n".to_vec(),
                V1FamilyMismatch,
            ),
            (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n".to_vec(), V1FamilyMismatch),
            (b"PROXY TCP4 ::".to_vec(), V1FamilyMismatch),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".to_vec(), V1MissingField),
            (b"PROXY TCP4\r\n".to_vec(), V1MissingField),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".to_vec(),
                V1ExtraField,
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3".to_vec(), V1ExtraField),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n".to_vec(),
                V1BadSourcePort,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n".to_vec(),
                V1BadSourcePort,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n".to_vec(),
                V1BadSourcePort,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 70000".to_vec(),
                V1BadSourcePort,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n".to_vec(),
                V1BadDestPort,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n".to_vec(),
                V1BadDestPort,
            ),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(), V1BadDestPort),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n".to_vec(),
                V1BadDestPort,
            ),
            (
                b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n".to_vec(),
                V1BadSpacing,
            ),
            (
                b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                V1BadSpacing,
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n".to_vec(),
                V1BadSpacing,
            ),
            (b"PROXY TCP4 1.2.3.4  ".to_vec(), V1BadSpacing),
            (v2_header(0x11, 0x11, &ok4), V2UnsupportedVersion),
            (v2_header(0x2F, 0x11, &ok4), V2BadCommand),
            (v2_header(0x21, 0x11, &ok4[..4]), V2ShortAddressBlock),
            (v2_header(0x21, 0x21, &ok4), V2ShortAddressBlock),
            (v2_header(0x21, 0x31, &[0; 108]), V2ShortAddressBlock),
            (v2_head_only(0x21, 0x11, 60000), Oversized),
            (v2_head_only(0x21, 0x11, 513), Oversized),
            (v2_head_only(0x20, 0x00, 0xffff), Oversized),
            (v2_header(0x21, 0x12, &ok4), V2Datagram),
            (v2_header(0x21, 0x22, &[0; 36]), V2Datagram),
            (v2_header(0x21, 0x32, &[0; 216]), V2Datagram),
            (v2_header(0x21, 0x41, &ok4), V2BadFamily),
            (v2_header(0x21, 0x13, &ok4), V2BadFamily),
            (v2_header(0x21, 0x10, &ok4), V2BadFamily),
            (v2_header(0x21, 0x01, &ok4), V2BadFamily),
            // Refused as soon as the deciding byte arrives.
            (
                v2_head_only(0x11, 0x11, 12)[..13].to_vec(),
                V2UnsupportedVersion,
            ),
            (v2_head_only(0x21, 0x12, 12)[..14].to_vec(), V2Datagram),
            (v2_head_only(0x21, 0x11, 0x0300)[..15].to_vec(), Oversized),
        ];
        for (bytes, want) in table {
            assert_eq!(
                parse(&bytes),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
            // However much more arrives, it stays an error (the reason may
            // change: more bytes can make a field wrong in a new way).
            for tail in [&b"\r\n"[..], &[b'\r'; 600], &[b' '; 600], &[b'9'; 600]] {
                let mut longer = bytes.clone();
                longer.extend_from_slice(tail);
                assert!(
                    parse(&longer).is_err(),
                    "{:?} + {tail:?}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            ParseError::NotProxy.to_string(),
            "not a PROXY protocol header"
        );
        assert_eq!(
            ParseError::Oversized.to_string(),
            "header longer than 528 bytes"
        );
        assert_eq!(
            ParseError::V2ShortAddressBlock.to_string(),
            "v2 address block shorter than its family needs"
        );
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for (header, addresses) in valid_headers() {
            let name = String::from_utf8_lossy(&header).into_owned();
            for cut in 0..header.len() {
                assert_eq!(
                    parse(&header[..cut]),
                    Ok(Parsed::Incomplete),
                    "{name:?} cut at {cut}"
                );
            }
            let len = header.len();
            assert!(len <= MAX_HEADER);
            assert_eq!(
                parse(&header),
                Ok(Parsed::Complete { len, addresses }),
                "{name:?}"
            );
            let mut with_payload = header.clone();
            with_payload.extend_from_slice(&[0xff; MAX_HEADER]);
            assert_eq!(
                parse(&with_payload),
                Ok(Parsed::Complete { len, addresses }),
                "{name:?}"
            );
        }
    }

    /// The invariants the module docs promise, for one input.
    fn check_invariants(buf: &[u8], rng: &mut XorShift) {
        let result = parse(buf);
        match &result {
            Ok(Parsed::Complete { len, .. }) => {
                let len = *len;
                assert!(len <= buf.len() && len <= MAX_HEADER, "{buf:?}");
                // Parse depends on the header alone ...
                assert_eq!(parse(&buf[..len]), result, "{buf:?}");
                // ... and no proper prefix of it was judged early.
                for _ in 0..4 {
                    let cut = rng.below(len);
                    assert_eq!(
                        parse(&buf[..cut]),
                        Ok(Parsed::Incomplete),
                        "{buf:?} at {cut}"
                    );
                }
            }
            Ok(Parsed::Incomplete) => assert!(buf.len() < MAX_HEADER, "{buf:?}"),
            Err(_) => {}
        }
        // A prefix's verdict, once not Incomplete, is final.
        if !buf.is_empty() {
            let cut = rng.below(buf.len());
            match parse(&buf[..cut]) {
                Ok(Parsed::Incomplete) => {}
                Err(_) => assert!(result.is_err(), "{buf:?} at {cut}"),
                prefix => assert_eq!(prefix, result, "{buf:?} at {cut}"),
            }
        }
    }

    #[test]
    fn random_and_mutated_inputs_never_break_invariants() {
        const V1_ALPHABET: &[u8] = b"PROXY TCP46UNKOW0123456789abcdefABCDEF.:: \r\n\r\n+-%[]";
        let valid: Vec<Vec<u8>> = valid_headers().into_iter().map(|(h, _)| h).collect();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut complete = 0usize;
        for i in 0..200_000 {
            let n = rng.below(600);
            let buf = match i % 5 {
                0 => rng.bytes(n, &[]),
                1 => {
                    let mut b = V2_SIGNATURE.to_vec();
                    b.extend(rng.bytes(n, &[]));
                    b
                }
                2 => {
                    let mut b = V1_PREFIX.to_vec();
                    let short = rng.below(110);
                    b.extend(rng.bytes(short, V1_ALPHABET));
                    b
                }
                _ => {
                    // A valid header with a few bit flips, a random cut or
                    // random payload after it.
                    let mut b = valid[rng.below(valid.len())].clone();
                    for _ in 0..rng.below(4) {
                        let at = rng.below(b.len());
                        b[at] ^= 1 << rng.below(8);
                    }
                    if rng.below(4) == 0 {
                        b.truncate(rng.below(b.len() + 1));
                    } else {
                        b.extend(rng.bytes(n.saturating_sub(b.len()), &[]));
                    }
                    b
                }
            };
            if matches!(parse(&buf), Ok(Parsed::Complete { .. })) {
                complete += 1;
            }
            check_invariants(&buf, &mut rng);
        }
        // The mutated inputs must really reach the accepting paths.
        assert!(complete > 10_000, "only {complete} complete");
    }
}
