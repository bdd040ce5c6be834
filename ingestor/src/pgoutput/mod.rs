//! The pgoutput logical replication protocol, version 1: bytes to [`Message`]s.
//!
//! pgwire-replication frames the stream and hands us Begin, Commit and logical
//! Message already typed; every other pgoutput message (Relation, Type, Origin,
//! Insert, Update, Delete, Truncate) arrives as raw `XLogData` bytes whose first
//! byte is the message tag. This module decodes all of them (Begin, Commit and
//! Message too, so the decoder is complete and can be fuzzed on its own).
//!
//! Contract: [`decode`] never panics and never allocates more than a small
//! multiple of its input's length, whatever the bytes; malformed input is a
//! [`DecodeError`]. Column values are zero-copy slices of the input buffer.

mod decode;
mod message;

pub use decode::{DecodeError, decode};
pub use message::{Column, Message, OldTuple, Relation, Tuple, TupleValue};
