//! The fuzz targets' checks, one function per target, each panicking when an
//! invariant fails. One copy, included by path from both places that run
//! them: the targets under `fuzz_targets/` (libFuzzer on nightly) and
//! `tests/fuzz_corpus.rs`, which replays the kept corpus and the regression
//! inputs on stable without the fuzzer. The targets are listed in [`TARGETS`];
//! their corpus folders are named after them.

use std::path::Path;

use ringlb::config::file::parse_offline;
use ringlb::protocol::{proxy, tls};

/// A target's check: panics when an invariant fails on the input.
pub type Check = fn(&[u8]);

/// Every target: its name (its `fuzz/corpus/` folder) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("proxy_header", proxy_header),
    ("client_hello", client_hello),
    ("config_file", config_file),
];

/// The PROXY protocol parser: no panic, a complete header fits in the input
/// and in MAX_HEADER, the verdict depends on the header bytes alone, no proper
/// prefix of a header was refused or accepted early, and `Incomplete` never
/// comes once MAX_HEADER bytes are in hand.
pub fn proxy_header(data: &[u8]) {
    use proxy::{parse, Parsed, MAX_HEADER};
    let result = parse(data);
    match result {
        Ok(Parsed::Complete { len, .. }) => {
            assert!(len <= data.len(), "len {len} past the input");
            assert!(len <= MAX_HEADER, "len {len} over MAX_HEADER");
            let header = data.get(..len).unwrap_or(data);
            assert_eq!(parse(header), result, "verdict depends on payload");
            if let Some(short) = len.checked_sub(1).and_then(|n| data.get(..n)) {
                assert_eq!(parse(short), Ok(Parsed::Incomplete), "prefix judged early");
            }
            // What is passed on re-encodes to itself, and the endpoint ID
            // reads from it without a panic.
            let tlvs = proxy::forwardable_tlvs(header);
            let _ = proxy::endpoint_id(&tlvs);
            let any: std::net::SocketAddr = ([192, 0, 2, 1], 1).into();
            let mut again = Vec::new();
            proxy::encode_with_tlvs(proxy::Version::V2, any, any, &tlvs, &mut again);
            if again.len() <= MAX_HEADER {
                assert_eq!(
                    proxy::forwardable_tlvs(&again),
                    tlvs,
                    "TLVs changed on the way"
                );
            }
        }
        Ok(Parsed::Incomplete) => {
            assert!(data.len() < MAX_HEADER, "Incomplete with MAX_HEADER bytes");
        }
        Err(_) => {
            let _ = proxy::endpoint_id(data);
            // More bytes never change a Complete, so one byte less must not
            // have been Complete.
            if let Some(short) = data.len().checked_sub(1).and_then(|n| data.get(..n)) {
                assert!(
                    !matches!(parse(short), Ok(Parsed::Complete { .. })),
                    "a complete header became an error when bytes were added"
                );
            }
        }
    }
}

/// The TLS ClientHello parser: no panic, `Incomplete` never once MAX_BUFFER
/// bytes are in hand, the verdict on a longer input is the verdict on its
/// first MAX_BUFFER bytes, and a prefix's verdict, once not `Incomplete`, is
/// final.
pub fn client_hello(data: &[u8]) {
    use tls::{parse, Parsed, MAX_BUFFER};
    let result = parse(data);
    if data.len() >= MAX_BUFFER {
        assert_ne!(result, Ok(Parsed::Incomplete), "Incomplete at the cap");
        assert_eq!(parse(data.get(..MAX_BUFFER).unwrap_or(data)), result);
    }
    for cut in [data.len() / 2, data.len().saturating_sub(1)] {
        if let Some(prefix) = data.get(..cut) {
            let early = parse(prefix);
            if early != Ok(Parsed::Incomplete) {
                assert_eq!(early, result, "verdict changed after {cut} bytes");
            }
        }
    }
}

/// The TOML config loader, on the bytes as text when they are UTF-8 (a file
/// that is not is refused on reading, before the parser): no panic; an error
/// is one printable line `fuzz.toml[:LINE]: [KEY: ]MESSAGE` with a message,
/// and its line is one of the text's; a config that parses validates again.
/// Offline: a name in `listen` or `admin` is refused, never looked up.
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_offline(text, Path::new("fuzz.toml")) {
        Ok(config) => {
            if let Err(e) = config.validate() {
                panic!("a parsed config fails validation: {e}");
            }
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(
                !shown.chars().any(char::is_control),
                "error not one printable line: {shown:?}"
            );
            assert!(
                shown.starts_with("fuzz.toml"),
                "error names no file: {shown:?}"
            );
            assert!(
                !e.message().trim().is_empty(),
                "error without a message: {shown:?}"
            );
            if let Some(line) = e.line() {
                let lines = text.split('\n').count();
                assert!(
                    (1..=lines).contains(&line),
                    "line {line} not in the text's 1..={lines}: {shown:?}"
                );
            }
        }
    }
}
