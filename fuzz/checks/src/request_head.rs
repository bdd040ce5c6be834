//! The public listener's request-head reader
//! (`realtime_gateway::serve::read_head_in_pieces`): the same bytes, split
//! into reads anywhere, take the same path: the fast path with the same
//! head, or hyper with a prefix of the bytes (hyper then reads the rest),
//! never more than `FAST_HEAD_LIMIT` bytes held.

use realtime_gateway::serve::{FAST_HEAD_LIMIT, HeadOutcome, read_head_in_pieces};

/// Input: one byte `n` (cuts: `n % 8`), then `n % 8` two-byte cut
/// positions, then the connection's bytes.
pub fn check(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let cuts = usize::from(n % 8);
    let Some((positions, bytes)) = rest.split_at_checked(2 * cuts) else {
        return;
    };
    let mut at: Vec<usize> = positions
        .chunks_exact(2)
        .map(|p| usize::from(u16::from_le_bytes([p[0], p[1]])) % (bytes.len() + 1))
        .collect();
    at.sort_unstable();
    let mut pieces = Vec::with_capacity(at.len() + 1);
    let mut from = 0;
    for &to in &at {
        pieces.push(&bytes[from..to]);
        from = to;
    }
    pieces.push(&bytes[from..]);

    let whole = outcome(&[bytes]);
    assert_same(&whole, &outcome(&pieces), bytes, "split");
    // A byte per read as well, for heads of ordinary size (longer ones are
    // split at the fuzzed positions only: a read per byte of 8 KiB would
    // slow every input down for little).
    if bytes.len() <= 1024 {
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_same(&whole, &outcome(&singles), bytes, "byte at a time");
    }
}

fn outcome(pieces: &[&[u8]]) -> HeadOutcome {
    match read_head_in_pieces(pieces) {
        Some(outcome) => outcome,
        None => panic!("the head reader waited on bytes that were all there"),
    }
}

/// `a` (the bytes in one piece) and `b` (split) take the same path.
pub fn assert_same(a: &HeadOutcome, b: &HeadOutcome, bytes: &[u8], how: &str) {
    for outcome in [a, b] {
        match outcome {
            HeadOutcome::Stream { head, read } => {
                assert!(read.starts_with(head) && bytes.starts_with(read));
                assert!(read.len() <= FAST_HEAD_LIMIT);
                assert!(
                    head.starts_with(b"GET /api/realtime/stream") && head.ends_with(b"\r\n\r\n")
                );
            }
            HeadOutcome::Hyper(prefix) => {
                assert!(bytes.starts_with(prefix), "hyper gets the bytes as sent");
                assert!(prefix.len() <= FAST_HEAD_LIMIT);
            }
            HeadOutcome::Gone => assert!(bytes.is_empty()),
        }
    }
    let same = match (a, b) {
        (HeadOutcome::Stream { head: x, .. }, HeadOutcome::Stream { head: y, .. }) => x == y,
        (HeadOutcome::Hyper(_), HeadOutcome::Hyper(_)) | (HeadOutcome::Gone, HeadOutcome::Gone) => {
            true
        }
        _ => false,
    };
    assert!(
        same,
        "{how}: {a:?} in one piece, {b:?} split ({:?})",
        String::from_utf8_lossy(bytes)
    );
}
