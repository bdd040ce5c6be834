//! The request head: read into a short-lived buffer and sorted into a
//! fast-path stream request or bytes for hyper (see the `serve` module
//! docs). The outcome depends only on the bytes, never on how they were
//! split into reads.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri, Version, header};
use bytes::{BufMut, Bytes};
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// The stream path served without hyper.
pub(super) const STREAM_PATH: &str = "/api/realtime/stream";
/// What a fast-path request starts with: the target's path follows `GET `
/// and is followed by its query or the space before the version.
const STREAM_LINE: &[u8] = b"GET /api/realtime/stream";
/// Largest request head read for the fast path; larger heads go to hyper
/// (which accepts up to ~400 KB and answers 431 past that).
pub const FAST_HEAD_LIMIT: usize = 8 * 1024;
/// The head buffer's first size; it doubles up to [`FAST_HEAD_LIMIT`].
pub(super) const FIRST_HEAD_BUF: usize = 1024;
/// Most headers parsed on the fast path; more go to hyper.
const MAX_HEADERS: usize = 64;

/// What the first bytes of a connection turned out to be.
pub(super) enum Head {
    /// A plain stream request, for the fast path (boxed: it is the rare
    /// large variant, and the head is read once per connection); `read`
    /// is every byte read so far (the head, then whatever was pipelined
    /// behind it), which hyper gets if the router refuses the stream.
    Stream {
        request: Box<Request<Body>>,
        read: Bytes,
    },
    /// Anything else: hyper gets these bytes first.
    Other(Bytes),
    /// The client went away before sending a request.
    Gone,
}
/// Reads until the end of the request head, or until the bytes show that
/// this is not a fast-path request (then hyper gets them), into a buffer
/// grown as the head arrives, at most [`FAST_HEAD_LIMIT`]. The outcome
/// depends only on the bytes, not on how they are split into reads.
pub(super) async fn read_head<R: AsyncRead + Unpin>(socket: &mut R, peer: SocketAddr) -> Head {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= FAST_HEAD_LIMIT {
                return Head::Other(buf.into());
            }
            let more = buf
                .capacity()
                .clamp(FIRST_HEAD_BUF, FAST_HEAD_LIMIT - buf.len());
            buf.reserve_exact(more);
        }
        let before = buf.len();
        let room = FAST_HEAD_LIMIT - before;
        match socket.read_buf(&mut (&mut buf).limit(room)).await {
            Ok(0) | Err(_) if buf.is_empty() => return Head::Gone,
            Ok(0) | Err(_) => return Head::Other(buf.into()),
            Ok(_) => {}
        }
        if !may_be_stream_request(&buf) {
            return Head::Other(buf.into());
        }
        // Only the new bytes (and the three before them) can complete the
        // blank line: a head dribbled a byte at a time is scanned once.
        if let Some(end) = find_head_end(&buf, before.saturating_sub(3)) {
            return match stream_request(&buf[..end], peer) {
                Some(request) => Head::Stream {
                    request: Box::new(request),
                    read: buf.into(),
                },
                None => Head::Other(buf.into()),
            };
        }
    }
}

/// What the listener makes of a connection's first bytes (see
/// [`read_head_in_pieces`]).
#[derive(Debug, PartialEq, Eq)]
pub enum HeadOutcome {
    /// A fast-path stream request: its `head` (through the blank line) and
    /// every byte `read` (the head and what was pipelined behind it).
    Stream { head: Bytes, read: Bytes },
    /// Handed to hyper with these bytes put back in front.
    Hyper(Bytes),
    /// The connection closed before sending a byte.
    Gone,
}

/// The listener's head reader over a connection whose bytes arrive in
/// `pieces`, one read each (then end of file): the pure entry point the
/// fuzzer and the split-head tests drive. `None` never happens (the
/// pieces are all there, so no read waits).
pub fn read_head_in_pieces(pieces: &[&[u8]]) -> Option<HeadOutcome> {
    let mut io = Pieces {
        rest: pieces.iter(),
        current: &[],
    };
    let peer = SocketAddr::from(([127, 0, 0, 1], 1));
    Some(match read_head(&mut io, peer).now_or_never()? {
        Head::Stream { read, .. } => {
            let end = find_head_end(&read, 0)?;
            HeadOutcome::Stream {
                head: read.slice(..end),
                read,
            }
        }
        Head::Other(prefix) => HeadOutcome::Hyper(prefix),
        Head::Gone => HeadOutcome::Gone,
    })
}

/// An in-memory connection that returns its bytes in the given pieces,
/// one (or less, if the buffer is smaller) per read, then end of file.
struct Pieces<'a> {
    rest: std::slice::Iter<'a, &'a [u8]>,
    current: &'a [u8],
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.current.is_empty() {
            match self.rest.next() {
                Some(piece) => self.current = piece,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.current.len().min(buf.remaining());
        buf.put_slice(&self.current[..n]);
        self.current = &self.current[n..];
        Poll::Ready(Ok(()))
    }
}

/// Whether `buf`, the start of a request, may still be a fast-path one:
/// `GET /api/realtime/stream` followed by `?` or a space, as far as it
/// goes. Anything else (another method or path, the HTTP/2 preface, TLS,
/// garbage) is hyper's from its first bytes.
pub(super) fn may_be_stream_request(buf: &[u8]) -> bool {
    let n = buf.len().min(STREAM_LINE.len());
    buf[..n] == STREAM_LINE[..n]
        && buf
            .get(STREAM_LINE.len())
            .is_none_or(|b| matches!(b, b'?' | b' '))
}

/// The end of the head (after its blank line), searching from `from`.
pub(super) fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
}

/// The request, when `head` (a whole head, through its blank line) is a
/// fast-path stream request. What follows it on the connection does not
/// matter here: it is hyper's if the router refuses the stream.
pub(super) fn stream_request(head: &[u8], peer: SocketAddr) -> Option<Request<Body>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return None;
    }
    let target = parsed.path?;
    if target.split('?').next() != Some(STREAM_PATH) {
        return None;
    }
    let uri: Uri = target.parse().ok()?;
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .version(Version::HTTP_11);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        if name == header::CONTENT_LENGTH && h.value != b"0" {
            return None;
        }
        if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
            return None;
        }
        let value = HeaderValue::from_bytes(h.value).ok()?;
        request = request.header(name, value);
    }
    let mut request = request.body(Body::empty()).ok()?;
    request.extensions_mut().insert(ConnectInfo(peer));
    Some(request)
}
