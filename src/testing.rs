//! What unit tests share: a deterministic random source for the parsers'
//! robustness tests (PROXY protocol, ClientHello), so a failure reproduces
//! exactly from its seed; and a connected loopback pair for the socket
//! operations' tests.

/// A connected pair on loopback: a std socket for the test to drive, and the
/// tokio-uring end under test. Must run inside the runtime.
pub(crate) fn pair() -> (std::net::TcpStream, tokio_uring::net::TcpStream) {
    pair_with_buffers(None)
}

/// [`pair`], with both ends' send and receive buffers set to `bytes`, when
/// given, so a peer that stops reading stalls the other side soon.
pub(crate) fn pair_with_buffers(
    bytes: Option<usize>,
) -> (std::net::TcpStream, tokio_uring::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, _) = listener.accept().unwrap();
    if let Some(bytes) = bytes {
        for end in [&peer, &ours] {
            let end = socket2::SockRef::from(end);
            end.set_recv_buffer_size(bytes).unwrap();
            end.set_send_buffer_size(bytes).unwrap();
        }
    }
    (peer, tokio_uring::net::TcpStream::from_std(ours))
}

/// xorshift64.
pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// `n` random bytes, drawn from `alphabet` unless it is empty.
    pub(crate) fn bytes(&mut self, n: usize, alphabet: &[u8]) -> Vec<u8> {
        (0..n)
            .map(|_| {
                if alphabet.is_empty() {
                    self.next() as u8
                } else {
                    alphabet[self.below(alphabet.len())]
                }
            })
            .collect()
    }
}
