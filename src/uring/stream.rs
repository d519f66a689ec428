//! The multishot receive ([`RecvStream`]): armed once, it completes at every
//! arrival into buffers of the worker's provided ring (a bundle receive,
//! where the kernel takes them: what waited, in one completion), and hands its
//! completions out in order (vendored tokio-uring patch 2); dropped, it gives
//! the buffers nobody took back to the ring. It is on the ring's list of
//! armed receives until it ends, so that a ring being replaced can cancel it.

use std::cell::Cell;
use std::io;
use std::task::{ready, Context, Poll};

use io_uring::cqueue;
use tokio_uring::InFlightMultishot;

use super::files::Sock;
use super::recv_send::cancel_op;
use super::recv_send::{RECVSEND_POLL_FIRST, RECV_FLAGS_OK};
use super::ring::{
    bundles_on, disarm, recv_into_ring, refuse_bundles, Provided, Received, RingRecv, BUNDLE_MAX,
    PROVIDED,
};

/// `IORING_RECV_MULTISHOT` (linux/io_uring.h, kernel 6.0+), in the SQE's
/// `ioprio`: the receive stays armed and completes once per arrival.
const RECV_MULTISHOT: u16 = 2;

/// `IORING_CQE_F_SOCK_NONEMPTY` (linux/io_uring.h): the socket held more
/// bytes after this receive.
const CQE_F_SOCK_NONEMPTY: u32 = 1 << 2;

thread_local! {
    /// Whether this thread's ring takes multishot receives; cleared by the
    /// first one a kernel older than 6.0 refuses (EINVAL).
    static MULTISHOT_OK: Cell<bool> = const { Cell::new(true) };
}

/// A receive armed once that completes every time bytes arrive, each time
/// into a buffer of this thread's provided ring (a multishot receive): a
/// connection in request-response traffic submits no receive per request.
/// What it brings comes out in order ([`RecvStream::poll_next`]) until its
/// last completion; dropped before that, the buffers of the completions
/// nobody took go back to the ring as they arrive.
pub struct RecvStream {
    /// The receive in flight, on the ring's armed list until it ends.
    op: InFlightMultishot<RingRecv>,
}

/// Arms a multishot receive on `sock`; `None` when this thread has no
/// provided ring, or its kernel takes no multishot receives: then receive
/// one at a time.
pub fn recv_stream<'a>(sock: impl Into<Sock<'a>>) -> Option<RecvStream> {
    if !MULTISHOT_OK.get() || !RECV_FLAGS_OK.get() {
        return None;
    }
    let ring = PROVIDED.with(|p| p.borrow().clone())?;
    let ioprio = RECV_MULTISHOT | RECVSEND_POLL_FIRST;
    let op = recv_into_ring(sock.into(), ring, ioprio, bundles_on());
    Some(RecvStream { op })
}

impl RecvStream {
    /// The next completion, in the order the kernel posted them; `None`
    /// when the stream ended without news (cancelled, or refused by a
    /// kernel without multishot receives): receive again.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Received>>> {
        let user_data = self.op.user_data();
        let next = ready!(self.op.poll_next(cx));
        // Bundles go off only after a refusal, which brought no bytes: a
        // stream that brought bytes was a bundle one if they are still on.
        let bundle = bundles_on();
        let got = next.map(|(res, flags)| {
            match self
                .op
                .data()
                .received(res.map(|n| n as usize), flags, bundle)
            {
                Ok(Received::Bytes(got)) if flags & CQE_F_SOCK_NONEMPTY != 0 => {
                    self.gather(got).map(Received::Bytes)
                }
                got => got,
            }
        });
        if self.op.is_done() {
            // Its user data is free for another operation from now on.
            disarm(user_data);
        }
        let Some(got) = got else {
            return Poll::Ready(None);
        };
        Poll::Ready(match got {
            // Only [`RecvStream::cancel`] cancels it.
            Err(err) if err.raw_os_error() == Some(libc::ECANCELED) => None,
            // A kernel without bundle receives, then one without
            // multishot receives: this thread stops asking for them.
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                if !refuse_bundles() {
                    MULTISHOT_OK.set(false);
                }
                None
            }
            res => Some(res),
        })
    }

    /// Takes into `got` the completions already queued after it that bring
    /// bytes, while the socket said more was waiting and `got` ends with a
    /// full buffer, up to bulk's [`BUNDLE_MAX`]: one answer that a bundle
    /// took in two completions (the kernel stops a bundle short of what is
    /// waiting, as at 4 KiB of a 4.3 KiB answer) goes out in one send.
    fn gather(&mut self, mut got: Provided) -> io::Result<Provided> {
        let brings_bytes = |res: &io::Result<u32>, flags: u32| {
            matches!(res, Ok(n) if *n > 0) && cqueue::buffer_select(flags).is_some()
        };
        while got.ends_full() && got.len() < BUNDLE_MAX {
            let Some((res, flags)) = self.op.next_if(brings_bytes) else {
                break;
            };
            // A completion that brought bytes brings a Provided (or the
            // error of buffers lost).
            if let Received::Bytes(next) =
                self.op
                    .data()
                    .received(res.map(|n| n as usize), flags, true)?
            {
                got.append(next);
            }
            if flags & CQE_F_SOCK_NONEMPTY == 0 {
                break;
            }
        }
        Ok(got)
    }

    /// Whether its last completion was handed out: only then may another
    /// receive on the socket start, or bytes could be read out of order.
    pub fn is_done(&self) -> bool {
        self.op.is_done()
    }

    /// Ready once `n` completions arrived that were not taken yet (each
    /// holds a buffer of the ring); until then, each new one wakes the task.
    pub fn poll_backlog(&mut self, cx: &mut Context<'_>, n: usize) -> Poll<()> {
        self.op.poll_backlog(cx, n)
    }

    /// Asks the kernel to stop the receive (IORING_OP_ASYNC_CANCEL); the
    /// completions before its last still come out. Once is enough: the
    /// caller keeps track.
    pub fn cancel(&self) {
        if let Some(user_data) = self.op.user_data() {
            cancel_op(user_data);
        }
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        // Not ended: the driver cancels it and keeps it until its last
        // completion; its user data is not free before then.
        disarm(self.op.user_data());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pair;
    use crate::uring::{provide_buffers, recv_provided, release_buffers};
    use std::io::Write;

    /// The next completion of `stream`.
    async fn next(stream: &mut RecvStream) -> Option<io::Result<Received>> {
        std::future::poll_fn(|cx| stream.poll_next(cx)).await
    }

    /// Waits until `stream` holds `n` completions not taken yet.
    async fn backlog_reaches(stream: &mut RecvStream, n: usize) {
        std::future::poll_fn(|cx| stream.poll_backlog(cx, n)).await
    }

    #[test]
    fn a_receive_stream_brings_every_arrival_in_order_and_ends_at_eof() {
        tokio_uring::start(async {
            provide_buffers(8, 8, 16).unwrap();
            let (mut peer, ours) = pair();
            let mut stream = recv_stream(&ours).expect("a ring");
            for msg in [&b"one"[..], b"two", b"three"] {
                peer.write_all(msg).unwrap();
                match next(&mut stream).await {
                    Some(Ok(Received::Bytes(got))) => assert_eq!(got.to_vec(), msg),
                    other => panic!("expected bytes, got {other:?}"),
                }
                assert!(!stream.is_done(), "one receive for every arrival");
            }
            // More than a buffer holds, in two arrivals that wait: bundles,
            // completions that each filled several buffers (all full but
            // the last), in order.
            let data: Vec<u8> = (0..100u8).collect();
            peer.write_all(&data[..50]).unwrap();
            backlog_reaches(&mut stream, 1).await;
            peer.write_all(&data[50..]).unwrap();
            let (mut got, mut bundles) = (Vec::new(), 0);
            while got.len() < data.len() {
                match next(&mut stream).await {
                    Some(Ok(Received::Bytes(part))) => {
                        let lens: Vec<usize> = part.pieces().map(<[u8]>::len).collect();
                        let (last, full) = lens.split_last().unwrap();
                        assert!(full.iter().all(|&n| n == 16) && *last <= 16, "{lens:?}");
                        assert_eq!(lens.iter().sum::<usize>(), part.len());
                        bundles += usize::from(lens.len() > 1);
                        got.extend_from_slice(&part.to_vec());
                    }
                    other => panic!("expected bytes, got {other:?}"),
                }
            }
            assert_eq!(got, data);
            assert!(bundles > 0, "one receive filled several buffers");
            drop(peer);
            assert!(matches!(next(&mut stream).await, Some(Ok(Received::Eof))));
            assert!(stream.is_done());
            release_buffers();
        });
    }

    #[test]
    fn a_cancelled_stream_stops_and_a_dropped_one_gives_its_buffers_back() {
        tokio_uring::start(async {
            provide_buffers(4, 4, 16).unwrap();
            let (_peer, ours) = pair();
            let mut stream = recv_stream(&ours).expect("a ring");
            stream.cancel();
            assert!(next(&mut stream).await.is_none(), "stopped");
            assert!(stream.is_done());
            // Four arrivals fill the ring's four buffers; nobody takes them.
            let (mut peer, ours) = pair();
            let mut stream = recv_stream(&ours).expect("a ring");
            for n in 1..=4 {
                peer.write_all(&[1; 16]).unwrap();
                backlog_reaches(&mut stream, n).await;
            }
            // Dropped: the driver hands the four back to the ring, so a
            // receive on another socket finds one.
            drop(stream);
            let (mut other_peer, other) = pair();
            other_peer.write_all(b"x").unwrap();
            match recv_provided(&other, false, true).await {
                Some(Ok(Received::Bytes(got))) => assert_eq!(got.to_vec(), b"x"),
                other => panic!("expected a ring buffer, got {other:?}"),
            }
            release_buffers();
        });
    }

    #[test]
    fn a_dropped_stream_gives_back_every_buffer_of_its_bundles() {
        tokio_uring::start(async {
            provide_buffers(8, 8, 16).unwrap();
            let (mut peer, ours) = pair();
            let mut stream = recv_stream(&ours).expect("a ring");
            // Two bundles wait, holding six of the eight buffers.
            peer.write_all(&[7; 40]).unwrap();
            backlog_reaches(&mut stream, 1).await;
            peer.write_all(&[8; 40]).unwrap();
            backlog_reaches(&mut stream, 2).await;
            drop(stream);
            // All eight are back: eight receives elsewhere each find one.
            let (held, _peers) = crate::uring::ring::tests::hold_receives(8).await;
            assert_eq!(held.len(), 8, "every buffer came back");
            drop(held);
            release_buffers();
        });
    }

    /// The byte at `offset` of what socket `i` sends.
    fn byte(i: usize, offset: usize) -> u8 {
        (offset.wrapping_mul(7) ^ i.wrapping_mul(31)) as u8
    }

    #[test]
    fn bundles_keep_their_buffers_while_others_cycle_the_shared_ring() {
        tokio_uring::start(async {
            // 256 buffers of 32 bytes shared by 8 sockets. Socket 0's
            // completions wait untaken for 20 rounds while the others take
            // and hand back theirs: the ring's tail laps the positions of
            // socket 0's bundles about twice before they are taken.
            const SOCKETS: usize = 8;
            provide_buffers(256, 256, 32).unwrap();
            let mut socks: Vec<_> = (0..SOCKETS).map(|_| pair()).collect();
            let mut streams: Vec<_> = socks
                .iter()
                .map(|(_, ours)| recv_stream(ours).expect("a ring"))
                .collect();
            let (mut sent, mut got) = (vec![0usize; SOCKETS], vec![0usize; SOCKETS]);
            let mut bundles = 0;
            for round in 0..60usize {
                for (i, (peer, _)) in socks.iter_mut().enumerate() {
                    let len = (round * 7 + i * 13) % 150 + 33;
                    let msg: Vec<u8> = (sent[i]..sent[i] + len).map(|o| byte(i, o)).collect();
                    peer.write_all(&msg).unwrap();
                    sent[i] += len;
                }
                for (i, stream) in streams.iter_mut().enumerate() {
                    if i == 0 && round % 20 != 19 {
                        continue;
                    }
                    while got[i] < sent[i] {
                        match next(stream).await {
                            Some(Ok(Received::Bytes(part))) => {
                                bundles += usize::from(part.len() > 32);
                                for (k, b) in part.to_vec().into_iter().enumerate() {
                                    assert_eq!(
                                        b,
                                        byte(i, got[i] + k),
                                        "socket {i}, byte {}",
                                        got[i] + k
                                    );
                                }
                                got[i] += part.len();
                            }
                            other => panic!("socket {i}: expected bytes, got {other:?}"),
                        }
                    }
                }
            }
            assert_eq!(got, sent);
            assert!(bundles > 100, "{bundles} bundles");
            drop(streams);
            release_buffers();
        });
    }

    #[test]
    fn an_answer_a_bundle_took_in_two_completions_comes_out_whole() {
        tokio_uring::start(async {
            provide_buffers(64, 64, 2048).unwrap();
            let (mut peer, ours) = pair();
            let mut stream = recv_stream(&ours).expect("a ring");
            let (mut whole, mut split) = (0, 0);
            for round in 0..50u64 {
                // An answer of 4.3 KiB: the kernel's bundle often stops at
                // 4 KiB and brings the rest in a second completion.
                let answer: Vec<u8> = (0..4337u64).map(|i| (i * 7 + round) as u8).collect();
                peer.write_all(&answer).unwrap();
                let mut got = Vec::new();
                let mut takes = 0;
                while got.len() < answer.len() {
                    match next(&mut stream).await {
                        Some(Ok(Received::Bytes(part))) => got.extend_from_slice(&part.to_vec()),
                        other => panic!("expected bytes, got {other:?}"),
                    }
                    takes += 1;
                }
                assert_eq!(got, answer, "round {round}");
                if takes == 1 {
                    whole += 1
                } else {
                    split += 1
                }
            }
            // The second completion is queued by the time the first is
            // taken (the kernel posts both at once), so it joins the first.
            assert!(whole > split, "{whole} answers whole, {split} split");
            release_buffers();
        });
    }
}
