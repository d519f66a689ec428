//! The wire formats ringlb reads before it relays: pure parsers (and one
//! encoder) over byte slices. Nothing here owns a socket, a clock or state
//! between calls; the connection that reads the bytes owns the buffer and the
//! timeout, and asks these modules only whether what it has is complete.
//! Each is fuzzed (`fuzz/fuzz_targets/`).
//!
//! - [`proxy`]: the PROXY protocol, v1 and v2, parsed and written.
//! - [`tls`]: the TLS ClientHello, read for its server name and ALPN.

pub mod proxy;
pub mod tls;
