//! HTTP/1.1 chunked encoding of an SSE body, written straight to a socket:
//! by the listener (frames ready together leave in one chunk and one
//! `writev`, [`write_chunk`]) and by an organization's feed writing to a
//! parked stream (the frames it has for it, one chunk and one non-blocking
//! `writev`, [`try_write_frames`]).
//!
//! Nothing here allocates in the common case: the size line is built on the
//! stack, and so are the slices of up to eight frames. Only the unsent rest
//! of a chunk a non-blocking write stopped in is copied out (rare: the
//! socket's send buffer was full).

use std::io::IoSlice;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Frames a chunk's slices hold on the stack; more spill to the heap.
const INLINE: usize = 8;

/// The last chunk: the body is over.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// One chunk holding `frames` (`bytes` in all), in as few `writev` calls
/// as the socket allows.
pub(crate) async fn write_chunk<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frames: &[Bytes],
    bytes: usize,
) -> std::io::Result<()> {
    // Per delivery, so nothing allocated in the common case: the size line
    // on the stack, and the slices too up to INLINE frames (one, usually).
    let mut size_buf = [0u8; 18];
    let size = chunk_size_line(bytes, &mut size_buf);
    if frames.len() <= INLINE {
        let mut slices = [IoSlice::new(&[]); INLINE + 2];
        slices[0] = IoSlice::new(size);
        for (slot, frame) in slices[1..].iter_mut().zip(frames) {
            *slot = IoSlice::new(frame);
        }
        slices[frames.len() + 1] = IoSlice::new(b"\r\n");
        write_all_slices(writer, &mut slices[..frames.len() + 2]).await
    } else {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() + 2);
        slices.push(IoSlice::new(size));
        slices.extend(frames.iter().map(|f| IoSlice::new(f)));
        slices.push(IoSlice::new(b"\r\n"));
        write_all_slices(writer, &mut slices).await
    }
}

/// Writes `frames` as ONE chunk with one non-blocking `writev`, never
/// waiting. `Ok(None)`: all of it went out. `Ok(Some(rest))`: the socket
/// took only part (or none, when it would block) and `rest` is what is left
/// of the chunk, to be written before anything else. `Err`: the client is
/// gone. Up to [`INLINE`] frames (one, usually) nothing is allocated.
pub(crate) fn try_write_frames<'a, I>(
    socket: &TcpStream,
    frames: I,
) -> std::io::Result<Option<Bytes>>
where
    I: Iterator<Item = &'a [u8]> + Clone,
{
    let (count, bytes) = frames
        .clone()
        .fold((0usize, 0usize), |(n, b), f| (n + 1, b + f.len()));
    let mut size_buf = [0u8; 18];
    let size = chunk_size_line(bytes, &mut size_buf);
    let mut inline: [&[u8]; INLINE + 2] = [&[]; INLINE + 2];
    let mut spilled: Vec<&[u8]> = Vec::new();
    let parts: &[&[u8]] = if count <= INLINE {
        inline[0] = size;
        for (slot, frame) in inline[1..].iter_mut().zip(frames) {
            *slot = frame;
        }
        inline[count + 1] = b"\r\n";
        &inline[..count + 2]
    } else {
        spilled.reserve_exact(count + 2);
        spilled.push(size);
        for frame in frames {
            spilled.push(frame);
        }
        spilled.push(b"\r\n");
        &spilled
    };
    let total = size.len() + bytes + 2;
    let written = if count <= INLINE {
        let slices: [IoSlice<'_>; INLINE + 2] = inline.map(IoSlice::new);
        socket.try_write_vectored(&slices[..count + 2])
    } else {
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        socket.try_write_vectored(&slices)
    };
    let written = match written {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if written >= total {
        return Ok(None);
    }
    Ok(Some(unsent(parts, written)))
}

/// `<hex size>\r\n`, written into `buf`.
pub(crate) fn chunk_size_line(size: usize, buf: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 16;
    let mut n = size;
    loop {
        start -= 1;
        buf[start] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf[16] = b'\r';
    buf[17] = b'\n';
    &buf[start..]
}

async fn write_all_slices<W: AsyncWrite + Unpin>(
    writer: &mut W,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !slices.is_empty() {
        let n = writer.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// What is left of `parts`, written in order, after the first `written`
/// bytes went out.
fn unsent(parts: &[&[u8]], written: usize) -> Bytes {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut rest = BytesMut::with_capacity(total.saturating_sub(written));
    let mut skip = written;
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        rest.put_slice(&part[skip..]);
        skip = 0;
    }
    rest.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        let mut buf = [0u8; 18];
        assert_eq!(chunk_size_line(0, &mut buf), b"0\r\n");
        assert_eq!(chunk_size_line(14, &mut buf), b"e\r\n");
        assert_eq!(chunk_size_line(65_536, &mut buf), b"10000\r\n");
        assert_eq!(
            chunk_size_line(usize::MAX, &mut buf),
            format!("{:x}\r\n", usize::MAX).as_bytes()
        );
    }

    #[tokio::test]
    async fn large_batches_are_written_whole() {
        let mut out = Vec::new();
        let frames: Vec<Bytes> = (0..20)
            .map(|i| Bytes::from(format!("id: {i}\n\n")))
            .collect();
        let bytes = frames.iter().map(Bytes::len).sum();
        write_chunk(&mut out, &frames, bytes).await.unwrap();
        let body: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
        let mut want = format!("{bytes:x}\r\n").into_bytes();
        want.extend_from_slice(&body);
        want.extend_from_slice(b"\r\n");
        assert_eq!(out, want);
    }

    #[tokio::test]
    async fn chunks_carry_every_frame_once() {
        let mut out = Vec::new();
        let frames = [
            Bytes::from_static(b"id: 1\n\n"),
            Bytes::from_static(b"id: 2\n\n"),
        ];
        write_chunk(&mut out, &frames, 14).await.unwrap();
        assert_eq!(out, b"e\r\nid: 1\n\nid: 2\n\n\r\n");
    }

    #[test]
    fn the_unsent_rest_continues_where_the_write_stopped() {
        let parts: [&[u8]; 3] = [b"c\r\n", b"id: 1\ndata: x\n\n", b"\r\n"];
        let whole: Vec<u8> = parts.concat();
        for written in 0..=whole.len() {
            assert_eq!(
                &unsent(&parts, written)[..],
                &whole[written..],
                "after {written}"
            );
        }
    }
}
