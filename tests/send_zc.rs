//! Zero-copy sends (`send-zc`) on the copy path (`--splice never`): every
//! byte arrives, 1 B to 64 MiB both ways; half-close and a dying backend
//! behave as on plain sends; the byte counters are exact, and the send_zc
//! counter shows the path ran (and that on loopback the kernel copied).

mod common;

use common::*;

#[test]
fn one_byte_to_sixty_four_mib_both_ways_zero_copy_and_the_counters_add_up() {
    let backend = Backend::echo();
    for zc in [true, false] {
        let mut lb = Ringlb::over(&backend).arg("--splice", "never").admin();
        if zc {
            lb = lb.flag("--send-zc");
        }
        let lb = lb.start();
        let sent = echo_every_size(&lb, &format!("send-zc {zc}"));
        let (bytes_in, bytes_out) = (
            counter(&lb, "ringlb_bytes_in_total"),
            counter(&lb, "ringlb_bytes_out_total"),
        );
        assert_eq!(
            (bytes_in, bytes_out),
            (sent, sent),
            "send-zc {zc}: bytes counted"
        );
        assert_eq!(counter(&lb, "ringlb_spliced_bytes_total"), 0);
        let zero_copy = counter(&lb, "ringlb_send_zc_total");
        if zc {
            // 64 MiB each way in sends of at most the 256 KiB buffer, less
            // what came in ring buffers (receive bundles, before a
            // direction turns bulk: under 1 MiB a direction).
            assert!(zero_copy >= 2 * 252, "{zero_copy} zero-copy sends");
            // On loopback the receiver gets a copy: the notifications say
            // so, some after their connection closed.
            wait_until("the notifications of copies", || {
                counter(&lb, "ringlb_send_zc_copied_total") > 0
            });
            assert!(counter(&lb, "ringlb_send_zc_copied_total") <= zero_copy);
        } else {
            assert_eq!(zero_copy, 0, "off by default");
            assert_eq!(counter(&lb, "ringlb_send_zc_copied_total"), 0);
        }
    }
}

#[test]
fn half_close_each_way_with_zero_copy_sends() {
    half_close_each_way(&["--splice", "never", "--send-zc"]);
}

#[test]
fn a_backend_that_dies_mid_transfer_ends_the_client_never_hangs() {
    a_backend_that_dies_mid_transfer_ends_the_client(&["--splice", "never", "--send-zc"]);
}
