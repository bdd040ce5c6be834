//! The public listener: an accept loop that serves the SSE stream itself
//! and hands every other request to hyper.
//!
//! Why not hyper for the stream: an SSE connection lives for hours and
//! carries small frames. hyper keeps an HTTP/1 read buffer (8 KiB, grown to
//! 16 KiB after the head is read) and an 8 KiB header write buffer per
//! connection for its whole life, which was most of the gateway's memory
//! per idle stream, and it writes each body frame with its own `writev`.
//! Here the request head is read into a short-lived buffer, the axum router
//! answers it as usual (auth, CORS, every status and header are the
//! router's), and the body is written straight to the socket as chunked
//! encoding: frames ready together leave in one chunk and one `writev`.
//!
//! Only a plain `GET /api/realtime/stream` HTTP/1.1 request whose head fits
//! [`FAST_HEAD_LIMIT`], with no body, no upgrade and no `Expect`, takes
//! this path, and only when the router answers it with a stream. Anything
//! else, including every malformed or oversized request, goes to hyper with
//! the bytes already read put back in front, so hyper's checks and statuses
//! apply unchanged; it goes as soon as its first bytes show it is not a
//! stream request. A stream request the router refuses (401, 403, 429…)
//! goes to hyper too, with the router's answer: hyper writes it as it
//! would have, keeps the connection alive and answers what was pipelined
//! behind it. The head is read into a buffer that starts at 1 KiB, doubles
//! up to [`FAST_HEAD_LIMIT`] as needed and is freed once the head is
//! parsed. A stream's connection closes when the stream ends
//! (`Connection: close`): requests pipelined behind a stream are not
//! answered (RFC 9112 §9.3.2: the client retries them).
//!
//! Which path a connection takes, and what it is answered, depends only on
//! its bytes, never on how they were split into reads (tested by splitting
//! heads at every byte, and fuzzed through [`read_head_in_pieces`]).
//!
//! Deadlines and the cap (`REALTIME_HEAD_TIMEOUT`, `REALTIME_MAX_CONNECTIONS`):
//! every connection holds a [`Slot`] (see [`crate::slots`]) and must have
//! sent a whole request head within the head timeout of its accept, on
//! either path; a hyper keep-alive connection must send its next head
//! within the head timeout of its previous response's end. A slow client
//! cannot stretch this by sending a byte at a time: the deadline is fixed
//! when the wait starts. hyper's own `header_read_timeout` is set too, a
//! second later, as a backstop (it does nothing without a timer, which
//! hyper_util's builder does not set by itself); the deadline that counts
//! is the listener's: hyper's starts only when hyper gets the socket and
//! does not cover HTTP/2.

use std::convert::Infallible;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, Uri, Version, header};
use bytes::{Buf, BufMut, Bytes};
use futures_util::{FutureExt, StreamExt};
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::metrics as m;
use crate::sink::Sink;
use crate::slots::{Admission, Slot, Slots};

/// The stream path served without hyper.
const STREAM_PATH: &str = "/api/realtime/stream";
/// What a fast-path request starts with: the target's path follows `GET `
/// and is followed by its query or the space before the version.
const STREAM_LINE: &[u8] = b"GET /api/realtime/stream";
/// Largest request head read for the fast path; larger heads go to hyper
/// (which accepts up to ~400 KB and answers 431 past that).
pub const FAST_HEAD_LIMIT: usize = 8 * 1024;
/// The head buffer's first size; it doubles up to [`FAST_HEAD_LIMIT`].
const FIRST_HEAD_BUF: usize = 1024;
/// Most headers parsed on the fast path; more go to hyper.
const MAX_HEADERS: usize = 64;
/// Frames (and bytes) coalesced into one chunk and one `writev`.
const MAX_BATCH_FRAMES: usize = 64;
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// The listener's protections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `REALTIME_HEAD_TIMEOUT`: how long a whole request head may take.
    pub head_timeout: Duration,
    /// `REALTIME_MAX_CONNECTIONS`, as derived: connections held at once.
    pub max_connections: usize,
}

/// Accepts connections until `draining`; each runs in a task tracked by
/// `tracker` and holds a slot under `limits.max_connections`. hyper
/// connections start a graceful shutdown at `draining` (keep-alive off,
/// in-flight requests finish); fast-path streams end through their own
/// close tokens.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    draining: CancellationToken,
    tracker: TaskTracker,
    limits: Limits,
) {
    let slots = Slots::new(limits.max_connections);
    loop {
        let accepted = tokio::select! {
            _ = draining.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let accepted_at = Instant::now();
        let slot = match slots.admit().await {
            Admission::Admitted { slot, evicted } => {
                if evicted {
                    metrics::counter!(m::SOCKETS_CLOSED, "reason" => "evicted").increment(1);
                }
                slot
            }
            Admission::Full => {
                // Closed without a response: an EventSource retries after
                // its delay (a 503 would stop it for good).
                metrics::counter!(m::SOCKETS_REFUSED).increment(1);
                drop(socket);
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let router = router.clone();
        let draining = draining.clone();
        tracker.spawn(async move {
            metrics::gauge!(m::SOCKETS).increment(1.0);
            connection(
                socket,
                peer,
                router,
                draining,
                limits.head_timeout,
                accepted_at,
                slot.clone(),
            )
            .await;
            // The socket is closed by now; its place is given up here.
            metrics::gauge!(m::SOCKETS).decrement(1.0);
            drop(slot);
        });
    }
}

/// What the first bytes of a connection turned out to be.
enum Head {
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

async fn connection(
    mut socket: TcpStream,
    peer: SocketAddr,
    router: Router,
    draining: CancellationToken,
    head_timeout: Duration,
    accepted_at: Instant,
    slot: Slot,
) {
    slot.waiting();
    let head = tokio::select! {
        biased;
        _ = slot.evicted() => return,
        head = tokio::time::timeout_at(accepted_at + head_timeout, read_head(&mut socket, peer)) => match head {
            Ok(head) => head,
            Err(_) => {
                metrics::counter!(m::SOCKETS_CLOSED, "reason" => "head_timeout").increment(1);
                return;
            }
        },
    };
    match head {
        Head::Stream { request, read } => {
            if !slot.busy() {
                return;
            }
            let response = match router.clone().oneshot(*request).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            if is_stream(&response) {
                // The bytes read are only needed to hand a refusal to hyper:
                // freed now, or every idle stream would keep its head (3 KiB
                // of cookies is common) for its whole life.
                drop(read);
                metrics::counter!(m::SOCKETS_SERVED, "by" => "direct").increment(1);
                if let Err(e) = respond(socket, response).await {
                    tracing::debug!(error = %e, "stream connection ended");
                }
                return;
            }
            // A refusal: hyper parses the same head again, answers it with
            // this response, and serves whatever follows on the connection,
            // exactly as if the head had gone to hyper in the first place.
            metrics::counter!(m::SOCKETS_SERVED, "by" => "hyper").increment(1);
            let deadlines = Deadlines {
                head_timeout,
                first: Instant::now(),
                slot,
            };
            let answered = Answered(Arc::new(Mutex::new(Some(response))));
            hand_to_hyper(socket, read, peer, router, draining, deadlines, answered).await;
        }
        Head::Other(prefix) => {
            metrics::counter!(m::SOCKETS_SERVED, "by" => "hyper").increment(1);
            let deadlines = Deadlines {
                head_timeout,
                first: accepted_at,
                slot,
            };
            let answered = Answered(Arc::default());
            hand_to_hyper(socket, prefix, peer, router, draining, deadlines, answered).await;
        }
        Head::Gone => {}
    }
}

/// Reads until the end of the request head, or until the bytes show that
/// this is not a fast-path request (then hyper gets them), into a buffer
/// grown as the head arrives, at most [`FAST_HEAD_LIMIT`]. The outcome
/// depends only on the bytes, not on how they are split into reads.
async fn read_head<R: AsyncRead + Unpin>(socket: &mut R, peer: SocketAddr) -> Head {
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
fn may_be_stream_request(buf: &[u8]) -> bool {
    let n = buf.len().min(STREAM_LINE.len());
    buf[..n] == STREAM_LINE[..n]
        && buf
            .get(STREAM_LINE.len())
            .is_none_or(|b| matches!(b, b'?' | b' '))
}

/// The end of the head (after its blank line), searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
}

/// The request, when `head` (a whole head, through its blank line) is a
/// fast-path stream request. What follows it on the connection does not
/// matter here: it is hyper's if the router refuses the stream.
fn stream_request(head: &[u8], peer: SocketAddr) -> Option<Request<Body>> {
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

/// Whether the router's answer is a stream (the fast path writes it);
/// anything else is a refusal, which hyper writes.
fn is_stream(response: &Response<Body>) -> bool {
    response.status().is_success()
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// Writes the router's stream as chunks until it ends; then closes.
async fn respond(mut socket: TcpStream, response: Response<Body>) -> std::io::Result<()> {
    let (mut parts, body) = response.into_parts();
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONNECTION
            || name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\nconnection: close\r\n");
    head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    socket.write_all(&head).await?;
    drop(head);
    let sink = parts.extensions.remove::<StreamSink>().map(|s| s.0);
    let socket = Arc::new(socket);
    if let Some(sink) = &sink {
        sink.attach(socket.clone());
    }
    let result = pump(&socket, body, sink.as_deref()).await;
    // Write side done (FIN) even while the hub still holds the socket.
    let _ = socket2::SockRef::from(&*socket).shutdown(std::net::Shutdown::Write);
    result
}

/// Put in a stream response's extensions by the handler: the listener
/// attaches the socket to it, so the hub can write to the stream while it
/// is parked (see `crate::sink`).
#[derive(Clone)]
pub struct StreamSink(pub Arc<Sink>);

/// Copies SSE frames to the socket until the body ends or the client goes.
/// What the hub left half-written while the stream was parked (`sink`) is
/// written first; an empty frame from the body only asks for that.
async fn pump(socket: &TcpStream, body: Body, sink: Option<&Sink>) -> std::io::Result<()> {
    let mut frames = body.into_data_stream();
    let mut writer = SocketWriter(socket);
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        // Everything given so far is written: the stream may park while
        // this waits (and only then, see `Sink::set_listener_idle`).
        if let Some(sink) = sink {
            sink.set_listener_idle(true);
        }
        tokio::select! {
            biased;
            ready = socket.readable() => {
                if ready.is_err() {
                    return Ok(());
                }
                let mut probe = [0u8; 64];
                match socket.try_read(&mut probe) {
                    // The client closed its side (or reset): the stream is over.
                    Ok(0) => return Ok(()),
                    // A client has nothing to send on a stream; ignore it.
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Ok(()),
                }
            },
            frame = frames.next() => {
                if let Some(sink) = sink {
                    sink.set_listener_idle(false);
                }
                let ended = match frame {
                    Some(Ok(first)) => {
                        let mut bytes = first.len();
                        batch.push(first);
                        let mut ended = false;
                        while batch.len() < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES {
                            match frames.next().now_or_never() {
                                Some(Some(Ok(more))) => {
                                    bytes += more.len();
                                    batch.push(more);
                                }
                                // The body ended right behind the batch: it
                                // must not be polled again.
                                Some(Some(Err(_)) | None) => {
                                    ended = true;
                                    break;
                                }
                                None => break,
                            }
                        }
                        ended
                    }
                    Some(Err(_)) | None => true,
                };
                if let Some(rest) = sink.and_then(Sink::take_leftover) {
                    writer.write_all(&rest).await?;
                }
                batch.retain(|frame| !frame.is_empty());
                if !batch.is_empty() {
                    let bytes = batch.iter().map(Bytes::len).sum();
                    write_chunk(&mut writer, &batch, bytes).await?;
                    batch.clear();
                }
                if ended {
                    return writer.write_all(b"0\r\n\r\n").await;
                }
            },
        }
    }
}

/// Writes through a shared socket (the hub holds it too, writing only while
/// the stream is parked, so the two never write at once).
struct SocketWriter<'a>(&'a TcpStream);

impl SocketWriter<'_> {
    /// Runs `write` once the socket is writable, until it no longer would
    /// block.
    fn poll_with(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&TcpStream) -> std::io::Result<usize>,
    ) -> Poll<std::io::Result<usize>> {
        loop {
            std::task::ready!(self.0.poll_write_ready(cx))?;
            match write(self.0) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl AsyncWrite for SocketWriter<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_with(cx, |socket| socket.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_with(cx, |socket| socket.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One chunk holding `frames` (`bytes` in all), in as few `writev` calls
/// as the socket allows.
async fn write_chunk<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frames: &[Bytes],
    bytes: usize,
) -> std::io::Result<()> {
    // Per delivery, so nothing allocated in the common case: the size line
    // on the stack, and the slices too up to INLINE frames (one, usually).
    const INLINE: usize = 8;
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

/// The deadlines of a connection handed to hyper.
struct Deadlines {
    head_timeout: Duration,
    /// When the wait for the first head started (the accept).
    first: Instant,
    slot: Slot,
}

/// Requests in flight on one hyper connection, and since when it has had
/// none: the connection waits for a head whenever it has none, and is
/// closed when that wait exceeds the head timeout.
struct Activity {
    state: Mutex<ActivityState>,
    /// Signalled when the last request in flight ends.
    idle: Notify,
    slot: Slot,
}

struct ActivityState {
    in_flight: usize,
    idle_since: Instant,
    /// Whether any request arrived (decides the close reason's label).
    served: bool,
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request's head has arrived; the guard ends it.
    fn start(self: &Arc<Self>) -> InFlight {
        let mut state = self.lock();
        state.in_flight += 1;
        state.served = true;
        self.slot.busy();
        InFlight(self.clone())
    }

    /// When the connection is to be closed unless a head arrives: `None`
    /// while a request is in flight.
    fn deadline(&self, head_timeout: Duration) -> Option<(Instant, bool)> {
        let state = self.lock();
        (state.in_flight == 0).then_some((state.idle_since + head_timeout, state.served))
    }
}

/// One request in flight, until its response body is dropped (written
/// whole, or abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            drop(state);
            self.0.slot.waiting();
            self.0.idle.notify_one();
        }
    }
}

/// A response body that keeps its request counted as in flight.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The router's answer to the connection's first request, when the fast
/// path asked the router already (a refused stream): hyper's service gives
/// it for the first request hyper parses (that same head) instead of
/// asking the router twice.
#[derive(Clone)]
struct Answered(Arc<Mutex<Option<Response<Body>>>>);

impl Answered {
    fn take(&self) -> Option<Response<Body>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

async fn hand_to_hyper(
    socket: TcpStream,
    prefix: Bytes,
    peer: SocketAddr,
    router: Router,
    draining: CancellationToken,
    deadlines: Deadlines,
    answered: Answered,
) {
    let Deadlines {
        head_timeout,
        first,
        slot,
    } = deadlines;
    let activity = Arc::new(Activity {
        state: Mutex::new(ActivityState {
            in_flight: 0,
            idle_since: first,
            served: false,
        }),
        idle: Notify::new(),
        slot: slot.clone(),
    });
    let service = {
        let activity = activity.clone();
        tower::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let in_flight = activity.start();
            let ready = answered.take();
            let router = router.clone();
            async move {
                let response = match ready {
                    Some(r) => r,
                    None => match router.oneshot(req.map(Body::new)).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    },
                };
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(Tracked {
                        body,
                        _in_flight: in_flight,
                    })
                }))
            }
        })
    };
    let io = TokioIo::new(Prefixed { prefix, io: socket });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own header timeout is a backstop: a second later than the
    // watchdog below, which counts its closes and covers HTTP/2 too.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout + Duration::from_secs(1));
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
    let mut conn = std::pin::pin!(conn);
    let mut shutting_down = false;
    loop {
        let deadline = activity.deadline(head_timeout);
        let idle = activity.idle.notified();
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended");
                }
                return;
            }
            _ = draining.cancelled(), if !shutting_down => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            _ = slot.evicted() => return,
            _ = tokio::time::sleep_until(deadline.map_or(first, |(at, _)| at)), if deadline.is_some() => {
                // Re-checked: a request may have started since.
                if let Some((at, served)) = activity.deadline(head_timeout)
                    && at <= Instant::now()
                {
                    let reason = if served { "idle" } else { "head_timeout" };
                    metrics::counter!(m::SOCKETS_CLOSED, "reason" => reason).increment(1);
                    return;
                }
            }
            _ = idle => {}
        }
    }
}

/// A socket with bytes already read put back in front.
struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn plain_stream_requests_take_the_fast_path() {
        let raw = b"GET /api/realtime/stream?organizationId=o HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n\r\n";
        let req = stream_request(raw, peer()).unwrap();
        assert_eq!(req.uri().query(), Some("organizationId=o"));
        assert_eq!(req.headers()["authorization"], "Bearer t");
        assert!(req.extensions().get::<ConnectInfo<SocketAddr>>().is_some());
    }

    #[test]
    fn anything_unusual_goes_to_hyper() {
        for raw in [
            &b"POST /api/realtime/stream HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /api/realtime/stream HTTP/1.0\r\n\r\n",
            b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /api/realtime/streamx HTTP/1.1\r\n\r\n",
            b"GET /api/realtime/stream HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            b"GET /api/realtime/stream HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /api/realtime/stream HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET /api/realtime/stream HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /api/realtime/stream HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            b"GET /api/realtime/stream\xff HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                stream_request(raw, peer()).is_none(),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    /// A browser-like stream request carrying `cookie_bytes` of cookies.
    fn browser_head(cookie_bytes: usize) -> Vec<u8> {
        let mut cookie = String::from("Cookie: theme=dark");
        let mut i = 0;
        while cookie.len() < cookie_bytes {
            cookie.push_str(&format!("; c{i}=v{i:0>40}"));
            i += 1;
        }
        format!(
            "GET /api/realtime/stream?organizationId=o HTTP/1.1\r\nHost: x\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\nAccept: text/event-stream\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nReferer: https://app.example/dashboard\r\nCache-Control: no-cache\r\nConnection: keep-alive\r\nSec-Fetch-Dest: empty\r\nSec-Fetch-Mode: cors\r\nSec-Fetch-Site: same-origin\r\n{cookie}\r\n\r\n"
        )
        .into_bytes()
    }

    /// Writes `raw` to a loopback connection in pieces of `piece` bytes
    /// and returns what `read_head` made of it.
    async fn read_written(raw: Vec<u8>, piece: usize) -> Head {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.set_nodelay(true).unwrap();
            for part in raw.chunks(piece) {
                client.write_all(part).await.unwrap();
                // Let the reader see each piece on its own.
                tokio::task::yield_now().await;
            }
            client
        });
        let (mut socket, peer) = listener.accept().await.unwrap();
        let head = tokio::time::timeout(Duration::from_secs(30), read_head(&mut socket, peer))
            .await
            .expect("the head is read");
        drop(writer.await.unwrap());
        head
    }

    #[tokio::test]
    async fn browser_heads_with_cookies_take_the_fast_path_in_any_pieces() {
        let raw = browser_head(3 * 1024);
        assert!(raw.len() > 3 * 1024 && raw.len() < FAST_HEAD_LIMIT);
        for piece in [raw.len(), 1024, 7, 1] {
            match read_written(raw.clone(), piece).await {
                Head::Stream { request: req, .. } => {
                    assert!(req.headers()["cookie"].len() >= 3 * 1024, "piece {piece}");
                }
                Head::Other(_) => panic!(
                    "a {}-byte head in {piece}-byte pieces went to hyper",
                    raw.len()
                ),
                Head::Gone => panic!("gone"),
            }
        }
    }

    #[tokio::test]
    async fn other_requests_go_to_hyper_with_every_byte_read() {
        let over = browser_head(FAST_HEAD_LIMIT);
        match read_written(over.clone(), 1024).await {
            Head::Other(prefix) => {
                assert!(over.starts_with(&prefix) && prefix.len() <= FAST_HEAD_LIMIT)
            }
            _ => panic!("a head over the limit goes to hyper"),
        }
        let other = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        match read_written(other, 1).await {
            // Handed over as soon as the path differs, bytes intact.
            Head::Other(prefix) => assert_eq!(&prefix[..], b"GET /h"),
            _ => panic!("another path goes to hyper"),
        }
    }

    /// Requests whose answer must not depend on how their bytes are split
    /// into reads: (name, bytes). The last request of each asks hyper to
    /// close, so every answer ends.
    fn split_cases() -> Vec<(&'static str, Vec<u8>)> {
        let stream = "GET /api/realtime/stream?organizationId=o HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n";
        let refused = "GET /api/realtime/stream?organizationId=o HTTP/1.1\r\nHost: x\r\n";
        let health = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let mut oversized = browser_head(FAST_HEAD_LIMIT + 4 * 1024);
        oversized.truncate(oversized.len() - 2);
        oversized.extend_from_slice(b"Authorization: Bearer t\r\nConnection: close\r\n\r\n");
        vec![
            (
                "stream",
                format!("{stream}Connection: close\r\n\r\n").into_bytes(),
            ),
            (
                "refused stream",
                format!("{refused}Connection: close\r\n\r\n").into_bytes(),
            ),
            ("health", health.as_bytes().to_vec()),
            (
                "404",
                b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
            ),
            (
                "bad request",
                b"GET /api/realtime/stream HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(),
            ),
            ("oversized", oversized),
            (
                "pipelined stream, health",
                format!("{stream}\r\n{health}").into_bytes(),
            ),
            (
                "pipelined refused stream, health",
                format!("{refused}\r\n{health}").into_bytes(),
            ),
            (
                "pipelined health, health",
                format!("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n{health}").into_bytes(),
            ),
        ]
    }

    /// Where a split is tried: every byte of short heads; of long ones,
    /// every 61st byte and around every buffer size and the fast path's
    /// limit.
    fn split_points(len: usize) -> Vec<usize> {
        if len <= 512 {
            return (1..len).collect();
        }
        let mut at: Vec<usize> = (1..len).step_by(61).collect();
        for edge in [
            FIRST_HEAD_BUF,
            2 * FIRST_HEAD_BUF,
            4 * FIRST_HEAD_BUF,
            FAST_HEAD_LIMIT,
        ] {
            at.extend((edge - 2..=edge + 2).filter(|&k| k > 0 && k < len));
        }
        at.sort_unstable();
        at.dedup();
        at
    }

    /// Same path, same head (hyper's prefix may be longer or shorter: it
    /// reads the rest itself).
    fn same_path(a: &HeadOutcome, b: &HeadOutcome) -> bool {
        match (a, b) {
            (HeadOutcome::Stream { head: x, .. }, HeadOutcome::Stream { head: y, .. }) => x == y,
            (HeadOutcome::Hyper(_), HeadOutcome::Hyper(_)) => true,
            (HeadOutcome::Gone, HeadOutcome::Gone) => true,
            _ => false,
        }
    }

    /// The reader alone, with an in-memory connection: deterministic reads
    /// of exactly the pieces given (two at every split point, three around
    /// it, and a byte at a time).
    #[test]
    fn a_head_split_at_every_byte_takes_the_path_of_the_whole() {
        for (name, raw) in split_cases() {
            let whole = read_head_in_pieces(&[&raw]).unwrap();
            let singles: Vec<&[u8]> = raw.chunks(1).collect();
            let mut splits = vec![(
                read_head_in_pieces(&singles).unwrap(),
                "byte at a time".to_owned(),
            )];
            for k in split_points(raw.len()) {
                let (a, b) = raw.split_at(k);
                splits.push((read_head_in_pieces(&[a, b]).unwrap(), format!("at {k}")));
                let (b, c) = b.split_at(b.len().min(1));
                splits.push((
                    read_head_in_pieces(&[a, b, c]).unwrap(),
                    format!("at {k}, {}", k + 1),
                ));
            }
            for (split, how) in splits {
                assert!(
                    same_path(&whole, &split),
                    "{name} split {how}: {split:?}, whole: {whole:?}"
                );
            }
        }
    }

    /// A router standing in for the gateway's: a stream with a bearer
    /// token, 401 without, a health check, 404 for the rest.
    fn stub_router() -> Router {
        use axum::http::StatusCode;
        use axum::response::IntoResponse;
        use axum::routing::get;
        Router::new()
            .route(
                STREAM_PATH,
                get(|headers: axum::http::HeaderMap| async move {
                    if headers.contains_key(header::AUTHORIZATION) {
                        let frames = futures_util::stream::iter(
                            ["retry: 1000\n\n", "id: 1\ndata: {}\n\n"]
                                .map(|f| Ok::<_, Infallible>(Bytes::from_static(f.as_bytes()))),
                        );
                        (
                            [(header::CONTENT_TYPE, "text/event-stream")],
                            Body::from_stream(frames),
                        )
                            .into_response()
                    } else {
                        (StatusCode::UNAUTHORIZED, "no credential").into_response()
                    }
                }),
            )
            .route("/healthz", get(|| async { "ok" }))
    }

    /// Everything the listener answers to `pieces`, each written and
    /// flushed on its own with a pause between (so the listener reads them
    /// apart), read until it closes; `date` lines left out.
    async fn answer(addr: SocketAddr, pieces: &[&[u8]]) -> Vec<u8> {
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.set_nodelay(true).unwrap();
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                // Pacing, not waiting for anything: the split is the point.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            client.write_all(piece).await.unwrap();
            client.flush().await.unwrap();
        }
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut out))
            .await
            .expect("the listener answers and closes")
            .unwrap();
        let mut kept = Vec::with_capacity(out.len());
        for line in out.split_inclusive(|&b| b == b'\n') {
            if !line.to_ascii_lowercase().starts_with(b"date: ") {
                kept.extend_from_slice(line);
            }
        }
        kept
    }

    /// The statuses of the responses in `answer`, in order (each head
    /// parsed, its body skipped by its length or its chunks).
    fn statuses(mut answer: &[u8]) -> Vec<u16> {
        let mut out = Vec::new();
        while !answer.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(n) = response.parse(answer).unwrap() else {
                panic!("a partial response: {}", String::from_utf8_lossy(answer));
            };
            out.push(response.code.unwrap());
            let header = |name: &str| {
                response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| std::str::from_utf8(h.value).unwrap().to_owned())
            };
            let length = header("content-length").map(|v| v.parse::<usize>().unwrap());
            let chunked = header("transfer-encoding").is_some_and(|v| v == "chunked");
            answer = &answer[n..];
            if let Some(length) = length {
                answer = &answer[length..];
            } else if chunked {
                loop {
                    let line = answer.iter().position(|&b| b == b'\n').unwrap();
                    let size = std::str::from_utf8(&answer[..line - 1]).unwrap();
                    let size = usize::from_str_radix(size, 16).unwrap();
                    answer = &answer[line + 1 + size + 2..];
                    if size == 0 {
                        break;
                    }
                }
            }
        }
        out
    }

    /// The real listener ([`serve`]) over loopback TCP: every request in
    /// [`split_cases`], written in two writes at every split point, is
    /// answered byte for byte as when written whole; and whole, each is
    /// answered as HTTP says (a refused stream does not swallow what was
    /// pipelined behind it; a stream ends the connection).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_head_split_at_every_byte_is_answered_as_the_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let draining = CancellationToken::new();
        let limits = Limits {
            head_timeout: Duration::from_secs(30),
            max_connections: 256,
        };
        let server = tokio::spawn(serve(
            listener,
            stub_router(),
            draining.clone(),
            TaskTracker::new(),
            limits,
        ));
        let expected: [&[u16]; 9] = [
            &[200],
            &[401],
            &[200],
            &[404],
            &[400],
            &[200],
            &[200],
            &[401, 200],
            &[200, 200],
        ];
        for ((name, raw), want) in split_cases().into_iter().zip(expected) {
            let whole = answer(addr, &[&raw]).await;
            assert_eq!(
                statuses(&whole),
                want,
                "{name}: {}",
                String::from_utf8_lossy(&whole)
            );
            for k in split_points(raw.len()) {
                let (a, b) = raw.split_at(k);
                let split = answer(addr, &[a, b]).await;
                assert!(
                    split == whole,
                    "{name} split at {k}:\n{}\nwhole:\n{}",
                    String::from_utf8_lossy(&split),
                    String::from_utf8_lossy(&whole)
                );
            }
        }
        draining.cancel();
        server.await.unwrap();
    }

    #[test]
    fn only_the_stream_request_line_is_kept_for_the_fast_path() {
        for ok in [
            &b""[..],
            b"G",
            b"GET ",
            b"GET /api/realtime/stream",
            b"GET /api/realtime/stream?o",
            b"GET /api/realtime/stream HTTP",
        ] {
            assert!(may_be_stream_request(ok), "{}", String::from_utf8_lossy(ok));
        }
        for other in [
            &b"POST"[..],
            b"GET /x",
            b"GET /api/realtime/streamx",
            b"PRI * HTTP/2.0",
            b"\x16\x03\x01",
            b"get /api",
        ] {
            assert!(
                !may_be_stream_request(other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn the_head_end_is_found_from_where_the_new_bytes_start() {
        let raw = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(find_head_end(raw, 0), Some(raw.len()));
        assert_eq!(find_head_end(raw, raw.len() - 4), Some(raw.len()));
        assert_eq!(find_head_end(raw, raw.len() - 3), None);
        assert_eq!(find_head_end(raw, raw.len() + 5), None);
    }

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

    /// A body that ends right behind the frames of a batch is not polled
    /// again (an `unfold` stream, as the SSE body is, panics when it is).
    #[tokio::test]
    async fn a_body_ending_behind_a_batch_is_not_polled_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
            out
        });
        let (socket, _) = listener.accept().await.unwrap();
        let frames = futures_util::stream::unfold(0, |n| async move {
            (n < 2).then(|| {
                (
                    Ok::<_, std::convert::Infallible>(Bytes::from(format!("id: {n}\n\n"))),
                    n + 1,
                )
            })
        });
        pump(&socket, Body::from_stream(frames), None)
            .await
            .unwrap();
        drop(socket);
        let out = client.await.unwrap();
        assert!(
            out.ends_with(b"0\r\n\r\n"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
}
