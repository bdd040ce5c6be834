//! Lanes and batched delivery against real loopback sockets: every stream
//! gets each of its organization's events once and in order, whether the
//! lane writes it directly (one `writev` per run), hands it back half-way
//! (full socket) or at a revocation, or the stream receives it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use realtime_shared::event::EventId;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::feed::{LANE_STREAMS, Lane, OrgFeed};
use super::outlet::Outlet;
use super::shard::{Job, fan_out};
use super::{FeedMessage, Verdict, decide, lock};
use crate::channels::ChannelFilter;
use crate::frame::Frame;
use crate::registry::{Registration, Registry};

/// An event `id`-0 of organization `o`; a `member.leave` of `leaver` when
/// given. `pad` bytes of description make frames large.
fn frame(id: u64, leaver: Option<&str>, pad: usize) -> FeedMessage {
    let (event_type, member) = match leaver {
        Some(user) => ("member.leave", format!(r#""{user}""#)),
        None => ("property.update", "null".to_owned()),
    };
    let description = "x".repeat(pad);
    let env = format!(
        r#"{{"event":{{"id":"{id}-0","type":"{event_type}","timestamp":1,"source":"postgres","version":"1.0","organizationId":"o","payload":{{"memberId":{member},"description":"{description}"}}}}}}"#
    );
    FeedMessage::Frame(Arc::new(Frame::parse(env.as_bytes()).unwrap()))
}

/// A parked stream under test: its outlet (holding the server side of a
/// loopback connection) and the client side.
struct Stream {
    outlet: Arc<Outlet>,
    client: Option<TcpStream>,
    _registration: Registration,
}

/// `small`: both ends' buffers small, so the lane's writes soon block.
async fn stream(registry: &Registry, user: &str, small: bool) -> Stream {
    let listen = TcpSocket::new_v4().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    if small {
        listen.set_recv_buffer_size(4096).unwrap();
        socket.set_send_buffer_size(4096).unwrap();
    }
    listen.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = listen.listen(16).unwrap();
    let server = socket
        .connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (client, _) = listener.accept().await.unwrap();
    let registration = registry.register(
        format!("c-{user}-{}", rand::random::<u64>()).into(),
        user.into(),
        "o".into(),
        None,
        ChannelFilter::ALL,
        &CancellationToken::new(),
    );
    let outlet = Outlet::new(
        user.into(),
        registration.handle.clone(),
        metrics::Histogram::noop(),
    );
    outlet.attach(Arc::new(server));
    outlet.set_listener_idle(true);
    Stream {
        outlet,
        client: Some(client),
        _registration: registration,
    }
}

/// The event ids in a chunked SSE body, in order.
fn ids_in_chunked(mut raw: &[u8]) -> Vec<u64> {
    let mut body = Vec::new();
    while !raw.is_empty() {
        let line = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap(), 16).unwrap();
        body.extend_from_slice(&raw[line + 2..line + 2 + size]);
        assert_eq!(&raw[line + 2 + size..line + 4 + size], b"\r\n");
        raw = &raw[line + 4 + size..];
    }
    ids_in_body(&body)
}

fn ids_in_body(body: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|m| m.strip_prefix("id: "))
        .map(|m| m.split('-').next().unwrap().parse().unwrap())
        .collect()
}

/// What the client side reads until it has been quiet for a second.
async fn read_all(mut client: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(1), client.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("read: {e}"),
        }
    }
}

/// What a stream's task does with a hand-back, as `crate::connection`
/// and the listener do: the rest of the chunk (returned, to be written
/// after what the socket took), then the receiver's frames past
/// `last_seen` (`decide`), up to a revocation, which it returns.
fn take_back(outlet: &Arc<Outlet>, user: &str) -> (Vec<u8>, Vec<u64>, Option<u64>) {
    let back = lock(&outlet.unparked).take().expect("handed back");
    assert!(!back.lost);
    let rest = outlet
        .take_leftover()
        .map(|r| r.to_vec())
        .unwrap_or_default();
    let mut rx = back.rx;
    let mut last_seen = back.last_seen;
    let mut ids = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(FeedMessage::Frame(f)) => match decide(&f, &mut last_seen, user, ChannelFilter::ALL)
            {
                Verdict::Send => ids.push(f.id.lsn),
                Verdict::Revoke(_) => return (rest, ids, Some(f.id.lsn)),
                Verdict::Duplicate | Verdict::Skip => {}
            },
            Ok(FeedMessage::Resync) => panic!("no resync here"),
            Err(broadcast::error::TryRecvError::Empty) => return (rest, ids, None),
            Err(e) => panic!("receiver: {e}"),
        }
    }
}

fn park(lane: &Lane, s: &Stream) {
    assert!(
        lane.park(&s.outlet, lane.tx.subscribe(), Some(EventId::new(0, 0)))
            .is_ok()
    );
}

#[test]
fn a_large_organization_is_spread_over_lanes_and_a_small_one_is_not() {
    let feed = OrgFeed::new(16, 1, 2);
    let mut lanes = Vec::new();
    for _ in 0..LANE_STREAMS {
        lanes.push(feed.join());
    }
    assert_eq!(feed.lanes().count(), 1, "one lane up to LANE_STREAMS");
    assert_eq!(lanes[0].shard, 1);
    for _ in 0..LANE_STREAMS * 3 {
        lanes.push(feed.join());
    }
    let open: Vec<_> = feed.lanes().cloned().collect();
    assert_eq!(open.len(), 2, "no more lanes than shards");
    assert_eq!(open[1].shard, 0, "the next lane on the next shard");
    let counts: Vec<usize> = open
        .iter()
        .map(|l| l.streams.load(Ordering::Relaxed))
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), 4 * LANE_STREAMS);
    assert!(counts[0].abs_diff(counts[1]) <= 1, "{counts:?}");
    // Every stream is in exactly one lane, the one it was given.
    for lane in &lanes {
        assert!(open.iter().any(|l| Arc::ptr_eq(l, lane)));
    }
    let single = OrgFeed::new(16, 0, 1);
    for _ in 0..LANE_STREAMS * 2 {
        single.join();
    }
    assert_eq!(single.lanes().count(), 1);
}

/// Runs of every size, to parked streams (one of them with a send buffer
/// that fills, one revoked half-way) and to a receiver: each gets every
/// event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_reach_every_stream_once_and_in_order() {
    const EVENTS: u64 = 400;
    const LEAVE_AT: u64 = 250;
    let registry = Registry::default();
    let lane = Lane::new(1024, 0);
    let mut fast = Vec::new();
    for i in 0..3 {
        fast.push(stream(&registry, &format!("u{i}"), false).await);
    }
    // Its socket takes a few frames, then would block: handed back with
    // the rest of a chunk.
    let mut full = stream(&registry, "slow", true).await;
    let mut revoked = stream(&registry, "leaver", false).await;
    for s in fast.iter().chain([&full, &revoked]) {
        park(&lane, s);
    }
    let mut receiver = lane.tx.subscribe();
    // Read as a browser does, while the lane writes (the full one is not).
    let readers: Vec<_> = fast
        .iter_mut()
        .chain([&mut revoked])
        .map(|s| tokio::spawn(read_all(s.client.take().unwrap())))
        .collect();
    let messages: Vec<FeedMessage> = (1..=EVENTS)
        .map(|id| frame(id, (id == LEAVE_AT).then_some("leaver"), 1024))
        .collect();
    let mut start = 0;
    for size in [1, 2, 3, 64, 1, 7, 100].iter().cycle() {
        if start == messages.len() {
            break;
        }
        let end = (start + size).min(messages.len());
        let mut reached = vec![0; end - start];
        lane.deliver(&messages[start..end], &mut reached);
        assert!(reached.iter().all(|&r| r >= 1), "the receiver counts");
        start = end;
    }
    let want: Vec<u64> = (1..=EVENTS).collect();
    let mut read = Vec::new();
    for reader in readers {
        read.push(reader.await.unwrap());
    }
    let revoked_read = read.pop().unwrap();
    for (s, raw) in fast.iter().zip(read) {
        assert_eq!(ids_in_chunked(&raw), want, "a parked stream");
        assert!(lock(&s.outlet.unparked).is_none(), "never handed back");
    }
    // Handed back: what reached the socket, then the rest of the chunk,
    // then the receiver, is every event once in order.
    let mut written = read_all(full.client.take().unwrap()).await;
    let (rest, after, revocation) = take_back(&full.outlet, "slow");
    assert_eq!(revocation, None);
    assert!(
        !rest.is_empty(),
        "the socket filled: the test needs a partial write"
    );
    written.extend_from_slice(&rest);
    let mut got = ids_in_chunked(&written);
    got.extend(after);
    assert_eq!(got, want, "a stream handed back half-way");
    // Revoked: everything before the leave directly, the leave through
    // the receiver for its task to act on.
    let mut written = revoked_read;
    let (rest, after, revocation) = take_back(&revoked.outlet, "leaver");
    written.extend_from_slice(&rest);
    let mut got = ids_in_chunked(&written);
    got.extend(after);
    assert_eq!(got, (1..LEAVE_AT).collect::<Vec<_>>());
    assert_eq!(revocation, Some(LEAVE_AT));
    // The receiver: every message once, in order.
    let mut received = Vec::new();
    while let Ok(FeedMessage::Frame(f)) = receiver.try_recv() {
        received.push(f.id.lsn);
    }
    assert_eq!(received, want, "a stream receiving");
}

/// A shard given jobs of two lanes interleaved, all queued before it runs
/// (so it takes them in one batch): each lane's streams get that lane's
/// messages once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_batch_keeps_each_lanes_order() {
    let registry = Registry::default();
    let lanes = [Arc::new(Lane::new(1024, 0)), Arc::new(Lane::new(1024, 0))];
    let mut parked = Vec::new();
    let mut receivers = Vec::new();
    for (i, lane) in lanes.iter().enumerate() {
        let s = stream(&registry, &format!("u{i}"), false).await;
        park(lane, &s);
        parked.push(s);
        receivers.push(lane.tx.subscribe());
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    for id in 1..=300u64 {
        let lane = &lanes[(id % 3 == 0) as usize];
        tx.send(Job {
            lane: lane.clone(),
            message: frame(id, None, 16),
            trace: None,
        })
        .await
        .unwrap();
    }
    let shutdown = CancellationToken::new();
    let shard = tokio::spawn(fan_out(rx, shutdown.clone()));
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), shard)
        .await
        .expect("the shard ends with its queue")
        .unwrap();
    for (i, (mut s, mut rx)) in parked.into_iter().zip(receivers).enumerate() {
        let want: Vec<u64> = (1..=300).filter(|id| (id % 3 == 0) == (i == 1)).collect();
        let raw = read_all(s.client.take().unwrap()).await;
        assert_eq!(ids_in_chunked(&raw), want, "lane {i} parked");
        let mut got = Vec::new();
        while let Ok(FeedMessage::Frame(f)) = rx.try_recv() {
            got.push(f.id.lsn);
        }
        assert_eq!(got, want, "lane {i} receiving");
    }
}
