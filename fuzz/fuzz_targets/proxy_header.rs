//! Feeds arbitrary bytes to the PROXY protocol parser and checks the
//! invariants its module docs promise: no panic, a complete header fits in
//! the input and in MAX_HEADER, the verdict depends on the header bytes
//! alone, no proper prefix of a header was refused or accepted early, and
//! `Incomplete` never comes once MAX_HEADER bytes are in hand.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::protocol::proxy::{parse, Parsed, MAX_HEADER};

fuzz_target!(|data: &[u8]| {
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
        }
        Ok(Parsed::Incomplete) => {
            assert!(data.len() < MAX_HEADER, "Incomplete with MAX_HEADER bytes");
        }
        Err(_) => {
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
});
