//! The fast path's writing: a stream's response head, then its body as
//! chunked encoding straight to the socket, frames ready together in one
//! chunk and one `writev`. While the stream is parked its feed writes to
//! the same socket; the contract is in [`crate::delivery`].

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::body::Body;
use axum::http::{Response, header};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::chunked::{LAST_CHUNK, write_chunk};
use crate::delivery::Outlet;

/// Frames (and bytes) coalesced into one chunk and one `writev`.
const MAX_BATCH_FRAMES: usize = 64;
const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Writes the router's stream as chunks until it ends; then closes.
pub(super) async fn respond(
    mut socket: TcpStream,
    response: Response<Body>,
) -> std::io::Result<()> {
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
    let outlet = parts.extensions.remove::<StreamOutlet>().map(|s| s.0);
    let socket = Arc::new(socket);
    if let Some(outlet) = &outlet {
        outlet.attach(socket.clone());
    }
    let result = pump(&socket, body, outlet.as_deref()).await;
    // Write side done (FIN) even while the feed still holds the socket.
    let _ = socket2::SockRef::from(&*socket).shutdown(std::net::Shutdown::Write);
    result
}

/// Put in a stream response's extensions by the handler: the listener
/// attaches the socket to the stream's outlet, so its feed can write to the
/// stream while it is parked (see [`crate::delivery`]).
#[derive(Clone)]
pub struct StreamOutlet(pub Arc<Outlet>);

/// Copies SSE frames to the socket until the body ends or the client goes.
/// What the feed left half-written while the stream was parked (`outlet`) is
/// written first; an empty frame from the body only asks for that.
pub(super) async fn pump(
    socket: &TcpStream,
    body: Body,
    outlet: Option<&Outlet>,
) -> std::io::Result<()> {
    let mut frames = body.into_data_stream();
    let mut writer = SocketWriter(socket);
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        // Everything given so far is written: the stream may park while
        // this waits (and only then, see `Outlet::set_listener_idle`).
        if let Some(outlet) = outlet {
            outlet.set_listener_idle(true);
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
                if let Some(outlet) = outlet {
                    outlet.set_listener_idle(false);
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
                if let Some(rest) = outlet.and_then(Outlet::take_leftover) {
                    writer.write_all(&rest).await?;
                }
                batch.retain(|frame| !frame.is_empty());
                if !batch.is_empty() {
                    let bytes = batch.iter().map(Bytes::len).sum();
                    write_chunk(&mut writer, &batch, bytes).await?;
                    batch.clear();
                }
                if ended {
                    return writer.write_all(LAST_CHUNK).await;
                }
            },
        }
    }
}

/// Writes through a shared socket (the feed holds it too, writing only while
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
