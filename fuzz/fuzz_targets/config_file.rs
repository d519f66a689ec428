//! libFuzzer on `checks::config_file` (see its docs for the invariants), the
//! same check `tests/fuzz_corpus.rs` replays the corpus through.
#![no_main]

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::config_file(data));
