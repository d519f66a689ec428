//! Feeds arbitrary bytes to the ClientHello parser and checks the invariants
//! its module docs promise: no panic, `Incomplete` never once MAX_BUFFER
//! bytes are in hand, the verdict on a longer input is the verdict on its
//! first MAX_BUFFER bytes, and a prefix's verdict, once not `Incomplete`,
//! is final.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::protocol::tls::{parse, Parsed, MAX_BUFFER};

fuzz_target!(|data: &[u8]| {
    let result = parse(data);
    if data.len() >= MAX_BUFFER {
        assert_ne!(result, Ok(Parsed::Incomplete), "Incomplete at the cap");
        assert_eq!(parse(data.get(..MAX_BUFFER).unwrap_or(data)), result);
    }
    // Every proper prefix is Incomplete or already the same verdict.
    for cut in [data.len() / 2, data.len().saturating_sub(1)] {
        if let Some(prefix) = data.get(..cut) {
            let early = parse(prefix);
            if early != Ok(Parsed::Incomplete) {
                assert_eq!(early, result, "verdict changed after {cut} bytes");
            }
        }
    }
});
