//! Bytes → [`Message`] for pgoutput protocol version 1.
//!
//! The input is untrusted in the sense that a bug, a newer protocol version or
//! a corrupted frame must surface as a [`DecodeError`], never as a panic or an
//! allocation sized by a count read from the wire: every `Vec` is pre-sized to
//! at most what the remaining bytes could possibly encode.

use std::fmt;

use bytes::Bytes;

use super::{Column, Message, OldTuple, Relation, Tuple, TupleValue};

/// Why a pgoutput message could not be decoded. Offsets are byte positions in
/// the message (the tag is offset 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("unknown pgoutput message tag {}", ShowByte(*.tag))]
    UnknownTag { tag: u8 },
    #[error(
        "pgoutput message truncated at offset {offset}: {needed} more byte(s) needed for {what}"
    )]
    Truncated {
        offset: usize,
        needed: usize,
        what: &'static str,
    },
    #[error("unterminated string ({what}) starting at offset {offset}")]
    UnterminatedString { offset: usize, what: &'static str },
    #[error("invalid UTF-8 in {what} at offset {offset}")]
    InvalidUtf8 { offset: usize, what: &'static str },
    #[error("bad tuple column kind {} at offset {offset}", ShowByte(*.kind))]
    BadTupleKind { kind: u8, offset: usize },
    #[error("expected {expected} at offset {offset}, found {}", ShowByte(*.found))]
    UnexpectedMarker {
        expected: &'static str,
        found: u8,
        offset: usize,
    },
    #[error("negative {what} {count} at offset {offset}")]
    NegativeCount {
        what: &'static str,
        count: i16,
        offset: usize,
    },
    #[error("negative length {length} at offset {offset}")]
    NegativeLength { length: i32, offset: usize },
    #[error("{remaining} trailing byte(s) at offset {offset} after a complete {} message", ShowByte(*.tag))]
    TrailingBytes {
        tag: u8,
        offset: usize,
        remaining: usize,
    },
}

/// Shows a tag or marker byte as `'B' (0x42)`, escaping non-printable bytes.
struct ShowByte(u8);

impl fmt::Display for ShowByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' (0x{:02x})", self.0.escape_ascii(), self.0)
    }
}

/// Decodes one pgoutput v1 message; `data` must hold exactly one message.
///
/// Never panics; column values and `Message` content are `Bytes::slice`s of
/// `data` (zero-copy). Tags of later protocol versions (streaming, two-phase)
/// are [`DecodeError::UnknownTag`].
pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: data, pos: 0 };
    let Some(&tag) = data.first() else {
        return Err(DecodeError::Empty);
    };
    r.pos = 1;
    let message = match tag {
        b'B' => Message::Begin {
            final_lsn: r.u64("Begin final LSN")?,
            commit_ts: r.i64("Begin commit timestamp")?,
            xid: r.u32("Begin xid")?,
        },
        b'C' => Message::Commit {
            flags: r.u8("Commit flags")?,
            commit_lsn: r.u64("Commit LSN")?,
            end_lsn: r.u64("Commit end LSN")?,
            commit_ts: r.i64("Commit timestamp")?,
        },
        b'O' => Message::Origin {
            commit_lsn: r.u64("Origin commit LSN")?,
            name: r.cstring("Origin name")?,
        },
        b'R' => Message::Relation(relation(&mut r)?),
        b'Y' => Message::Type {
            oid: r.u32("Type oid")?,
            namespace: r.cstring("Type namespace")?,
            name: r.cstring("Type name")?,
        },
        b'I' => {
            let relation = r.u32("Insert relation oid")?;
            r.expect(b'N', "'N' (new tuple)")?;
            Message::Insert {
                relation,
                new: tuple(&mut r)?,
            }
        }
        b'U' => {
            let relation = r.u32("Update relation oid")?;
            let at = r.pos;
            let old = match r.u8("Update tuple marker")? {
                b'K' => Some(OldTuple::Key(tuple(&mut r)?)),
                b'O' => Some(OldTuple::Full(tuple(&mut r)?)),
                b'N' => None,
                found => {
                    return Err(DecodeError::UnexpectedMarker {
                        expected: "'K', 'O' or 'N'",
                        found,
                        offset: at,
                    });
                }
            };
            if old.is_some() {
                r.expect(b'N', "'N' (new tuple)")?;
            }
            Message::Update {
                relation,
                old,
                new: tuple(&mut r)?,
            }
        }
        b'D' => {
            let relation = r.u32("Delete relation oid")?;
            let at = r.pos;
            let old = match r.u8("Delete tuple marker")? {
                b'K' => OldTuple::Key(tuple(&mut r)?),
                b'O' => OldTuple::Full(tuple(&mut r)?),
                found => {
                    return Err(DecodeError::UnexpectedMarker {
                        expected: "'K' or 'O'",
                        found,
                        offset: at,
                    });
                }
            };
            Message::Delete { relation, old }
        }
        b'T' => {
            let count = r.u32("Truncate relation count")?;
            let options = r.u8("Truncate options")?;
            // Each oid takes 4 bytes: cap the reservation by what can follow.
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            let mut relations = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relations.push(r.u32("Truncate relation oid")?);
            }
            Message::Truncate { options, relations }
        }
        b'M' => {
            let flags = r.u8("Message flags")?;
            let lsn = r.u64("Message LSN")?;
            let prefix = r.cstring("Message prefix")?;
            let length = r.u32("Message content length")?;
            let length = usize::try_from(length).unwrap_or(usize::MAX);
            Message::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.slice(length, "Message content")?,
            }
        }
        tag => return Err(DecodeError::UnknownTag { tag }),
    };
    if r.remaining() > 0 {
        return Err(DecodeError::TrailingBytes {
            tag,
            offset: r.pos,
            remaining: r.remaining(),
        });
    }
    Ok(message)
}

/// Smallest encoding of one Relation column: flags, empty name's NUL, oid, typmod.
const MIN_COLUMN_LEN: usize = 1 + 1 + 4 + 4;

fn relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let oid = r.u32("Relation oid")?;
    let namespace = r.cstring("Relation namespace")?;
    let name = r.cstring("Relation name")?;
    let replica_identity = r.u8("Relation replica identity")?;
    let count = r.count("Relation column count")?;
    let mut columns = Vec::with_capacity(count.min(r.remaining() / MIN_COLUMN_LEN));
    for _ in 0..count {
        columns.push(Column {
            flags: r.u8("column flags")?,
            name: r.cstring("column name")?,
            type_oid: r.u32("column type oid")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation::new(
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    ))
}

/// TupleData: column count, then per column a kind byte and maybe a value.
fn tuple(r: &mut Reader<'_>) -> Result<Tuple, DecodeError> {
    let count = r.count("tuple column count")?;
    // Each column takes at least its kind byte.
    let mut values = Vec::with_capacity(count.min(r.remaining()));
    for _ in 0..count {
        let at = r.pos;
        let value = match r.u8("tuple column kind")? {
            b'n' => TupleValue::Null,
            b'u' => TupleValue::UnchangedToast,
            b't' => TupleValue::Text(r.value()?),
            b'b' => TupleValue::Binary(r.value()?),
            kind => return Err(DecodeError::BadTupleKind { kind, offset: at }),
        };
        values.push(value);
    }
    Ok(Tuple(values))
}

/// A cursor over one message. Invariant: `pos <= buf.len()`.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn truncated(&self, n: usize, what: &'static str) -> DecodeError {
        DecodeError::Truncated {
            offset: self.pos,
            needed: n.saturating_sub(self.remaining()),
            what,
        }
    }

    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self
            .pos
            .checked_add(N)
            .and_then(|end| self.buf.get(self.pos..end))
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or_else(|| self.truncated(N, what))?;
        self.pos += N;
        Ok(bytes)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take::<1>(what)?[0])
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        self.take(what).map(i16::from_be_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.take(what).map(u32::from_be_bytes)
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.take(what).map(i32::from_be_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.take(what).map(u64::from_be_bytes)
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.take(what).map(i64::from_be_bytes)
    }

    /// A non-negative i16 count.
    fn count(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let count = self.i16(what)?;
        usize::try_from(count).map_err(|_| DecodeError::NegativeCount {
            what,
            count,
            offset,
        })
    }

    /// A tuple column value: i32 length, then that many bytes (zero-copy).
    fn value(&mut self) -> Result<Bytes, DecodeError> {
        let offset = self.pos;
        let length = self.i32("column value length")?;
        let n =
            usize::try_from(length).map_err(|_| DecodeError::NegativeLength { length, offset })?;
        self.slice(n, "column value")
    }

    fn slice(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(self.truncated(n, what));
        }
        let end = self.pos + n;
        let bytes = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(bytes)
    }

    /// A NUL-terminated UTF-8 string (names are identifiers in the server encoding,
    /// which we require to be UTF-8).
    fn cstring(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let rest = self.buf.get(offset..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString { offset, what })?;
        let s = std::str::from_utf8(&rest[..len]).map_err(|e| DecodeError::InvalidUtf8 {
            offset: offset + e.valid_up_to(),
            what,
        })?;
        self.pos = offset + len + 1;
        Ok(s.to_owned())
    }

    fn expect(&mut self, marker: u8, expected: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        match self.u8(expected)? {
            found if found == marker => Ok(()),
            found => Err(DecodeError::UnexpectedMarker {
                expected,
                found,
                offset,
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // ---- a test encoder (the inverse of `decode`) ----

    #[derive(Default)]
    struct Enc(Vec<u8>);

    impl Enc {
        fn u8(&mut self, v: u8) -> &mut Self {
            self.0.push(v);
            self
        }
        fn i16(&mut self, v: i16) -> &mut Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(&mut self, v: u32) -> &mut Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(&mut self, v: i32) -> &mut Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(&mut self, v: u64) -> &mut Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(&mut self, v: i64) -> &mut Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn raw(&mut self, v: &[u8]) -> &mut Self {
            self.0.extend_from_slice(v);
            self
        }
        fn cstr(&mut self, v: &str) -> &mut Self {
            self.raw(v.as_bytes()).u8(0)
        }
        fn tuple(&mut self, t: &Tuple) -> &mut Self {
            self.i16(i16::try_from(t.0.len()).unwrap());
            for v in &t.0 {
                match v {
                    TupleValue::Null => self.u8(b'n'),
                    TupleValue::UnchangedToast => self.u8(b'u'),
                    TupleValue::Text(b) => {
                        self.u8(b't').i32(i32::try_from(b.len()).unwrap()).raw(b)
                    }
                    TupleValue::Binary(b) => {
                        self.u8(b'b').i32(i32::try_from(b.len()).unwrap()).raw(b)
                    }
                };
            }
            self
        }
        fn old(&mut self, t: &OldTuple) -> &mut Self {
            match t {
                OldTuple::Key(t) => self.u8(b'K').tuple(t),
                OldTuple::Full(t) => self.u8(b'O').tuple(t),
            }
        }
        fn bytes(&self) -> Bytes {
            Bytes::from(self.0.clone())
        }
    }

    fn encode(m: &Message) -> Bytes {
        let mut e = Enc::default();
        match m {
            Message::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => e.u8(b'B').u64(*final_lsn).i64(*commit_ts).u32(*xid),
            Message::Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_ts,
            } => e
                .u8(b'C')
                .u8(*flags)
                .u64(*commit_lsn)
                .u64(*end_lsn)
                .i64(*commit_ts),
            Message::Origin { commit_lsn, name } => e.u8(b'O').u64(*commit_lsn).cstr(name),
            Message::Relation(r) => {
                e.u8(b'R')
                    .u32(r.oid)
                    .cstr(&r.namespace)
                    .cstr(&r.name)
                    .u8(r.replica_identity)
                    .i16(i16::try_from(r.columns.len()).unwrap());
                for c in &r.columns {
                    e.u8(c.flags)
                        .cstr(&c.name)
                        .u32(c.type_oid)
                        .i32(c.type_modifier);
                }
                &mut e
            }
            Message::Type {
                oid,
                namespace,
                name,
            } => e.u8(b'Y').u32(*oid).cstr(namespace).cstr(name),
            Message::Insert { relation, new } => e.u8(b'I').u32(*relation).u8(b'N').tuple(new),
            Message::Update { relation, old, new } => {
                e.u8(b'U').u32(*relation);
                if let Some(old) = old {
                    e.old(old);
                }
                e.u8(b'N').tuple(new)
            }
            Message::Delete { relation, old } => e.u8(b'D').u32(*relation).old(old),
            Message::Truncate { options, relations } => {
                e.u8(b'T')
                    .u32(u32::try_from(relations.len()).unwrap())
                    .u8(*options);
                for r in relations {
                    e.u32(*r);
                }
                &mut e
            }
            Message::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => e
                .u8(b'M')
                .u8(u8::from(*transactional))
                .u64(*lsn)
                .cstr(prefix)
                .u32(u32::try_from(content.len()).unwrap())
                .raw(content),
        };
        e.bytes()
    }

    // ---- proptest strategies for arbitrary messages ----

    fn name() -> impl Strategy<Value = String> {
        // Any non-NUL chars, including multi-byte ones.
        "[^\u{0}]{0,12}"
    }

    fn bytes_value() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }

    fn tuple_value() -> impl Strategy<Value = TupleValue> {
        prop_oneof![
            Just(TupleValue::Null),
            Just(TupleValue::UnchangedToast),
            bytes_value().prop_map(TupleValue::Text),
            bytes_value().prop_map(TupleValue::Binary),
        ]
    }

    fn tuple_strategy() -> impl Strategy<Value = Tuple> {
        proptest::collection::vec(tuple_value(), 0..6).prop_map(Tuple)
    }

    fn old_tuple() -> impl Strategy<Value = OldTuple> {
        prop_oneof![
            tuple_strategy().prop_map(OldTuple::Key),
            tuple_strategy().prop_map(OldTuple::Full),
        ]
    }

    fn column() -> impl Strategy<Value = Column> {
        (any::<u8>(), name(), any::<u32>(), any::<i32>()).prop_map(
            |(flags, name, type_oid, type_modifier)| Column {
                flags,
                name,
                type_oid,
                type_modifier,
            },
        )
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_ts, xid)| {
                Message::Begin {
                    final_lsn,
                    commit_ts,
                    xid,
                }
            }),
            (any::<u8>(), any::<u64>(), any::<u64>(), any::<i64>()).prop_map(
                |(flags, commit_lsn, end_lsn, commit_ts)| Message::Commit {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_ts,
                }
            ),
            (any::<u64>(), name())
                .prop_map(|(commit_lsn, name)| Message::Origin { commit_lsn, name }),
            (
                any::<u32>(),
                name(),
                name(),
                any::<u8>(),
                proptest::collection::vec(column(), 0..5)
            )
                .prop_map(|(oid, namespace, name, replica_identity, columns)| {
                    Message::Relation(Relation::new(
                        oid,
                        namespace,
                        name,
                        replica_identity,
                        columns,
                    ))
                }),
            (any::<u32>(), name(), name()).prop_map(|(oid, namespace, name)| Message::Type {
                oid,
                namespace,
                name
            }),
            (any::<u32>(), tuple_strategy())
                .prop_map(|(relation, new)| Message::Insert { relation, new }),
            (
                any::<u32>(),
                proptest::option::of(old_tuple()),
                tuple_strategy()
            )
                .prop_map(|(relation, old, new)| Message::Update {
                    relation,
                    old,
                    new
                }),
            (any::<u32>(), old_tuple())
                .prop_map(|(relation, old)| Message::Delete { relation, old }),
            (any::<u8>(), proptest::collection::vec(any::<u32>(), 0..6))
                .prop_map(|(options, relations)| Message::Truncate { options, relations }),
            (any::<bool>(), any::<u64>(), name(), bytes_value()).prop_map(
                |(transactional, lsn, prefix, content)| Message::Message {
                    transactional,
                    lsn,
                    prefix,
                    content,
                }
            ),
        ]
    }

    proptest! {
        // Cheap per case; `make fuzz` (fuzz/fuzz_targets/pgoutput.rs) carries the bulk.
        #![proptest_config(ProptestConfig::with_cases(5_000))]

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&Bytes::from(data));
        }

        /// Arbitrary bytes after a valid tag, so every decoder branch sees garbage.
        #[test]
        fn arbitrary_bodies_never_panic(
            tag in prop::sample::select(b"BCORYIUDTM".to_vec()),
            body in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let mut data = vec![tag];
            data.extend(body);
            let _ = decode(&Bytes::from(data));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn round_trip(m in message()) {
            prop_assert_eq!(decode(&encode(&m)), Ok(m));
        }

        #[test]
        fn every_truncation_is_an_error(m in message()) {
            let full = encode(&m);
            for len in 0..full.len() {
                prop_assert!(decode(&full.slice(..len)).is_err(), "prefix of {} bytes decoded", len);
            }
        }

        #[test]
        fn trailing_bytes_are_an_error(m in message(), extra in proptest::collection::vec(any::<u8>(), 1..4)) {
            let mut data = encode(&m).to_vec();
            let offset = data.len();
            data.extend(&extra);
            let err = decode(&Bytes::from(data)).unwrap_err();
            prop_assert!(matches!(err, DecodeError::TrailingBytes { offset: o, remaining, .. } if o == offset && remaining == extra.len()), "{:?}", err);
        }
    }

    // ---- hand-built fixtures ----

    fn cat(parts: &[&[u8]]) -> Bytes {
        Bytes::from(parts.concat())
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn begin() {
        let data = cat(&[
            b"B",
            &[0, 0, 0, 0, 0x01, 0x6B, 0x3A, 0x28], // final LSN 0/16B3A28
            &[0, 0x02, 0xB8, 0x5B, 0x0B, 0xA4, 0x3C, 0x80],
            &[0, 0, 0x02, 0xE8], // xid 744
        ]);
        assert_eq!(
            decode(&data).unwrap(),
            Message::Begin {
                final_lsn: 0x016B_3A28,
                commit_ts: 0x0002_B85B_0BA4_3C80,
                xid: 744
            }
        );
    }

    #[test]
    fn commit() {
        let data = cat(&[
            b"C",
            &[0],
            &1u64.to_be_bytes(),
            &2u64.to_be_bytes(),
            &(-3i64).to_be_bytes(),
        ]);
        assert_eq!(
            decode(&data).unwrap(),
            Message::Commit {
                flags: 0,
                commit_lsn: 1,
                end_lsn: 2,
                commit_ts: -3
            }
        );
    }

    #[test]
    fn origin() {
        let data = cat(&[b"O", &7u64.to_be_bytes(), b"node_a\0"]);
        assert_eq!(
            decode(&data).unwrap(),
            Message::Origin {
                commit_lsn: 7,
                name: "node_a".into()
            }
        );
    }

    #[test]
    fn relation_message() {
        let data = cat(&[
            b"R",
            &16_385u32.to_be_bytes(),
            b"public\0",
            "Café\0".as_bytes(),
            b"f",
            &2i16.to_be_bytes(),
            &[1],
            b"id\0",
            &25u32.to_be_bytes(),
            &(-1i32).to_be_bytes(),
            &[0],
            b"organizationId\0",
            &1043u32.to_be_bytes(),
            &68i32.to_be_bytes(),
        ]);
        assert_eq!(
            decode(&data).unwrap(),
            Message::Relation(Relation::new(
                16_385,
                "public".into(),
                "Café".into(),
                b'f',
                vec![
                    Column {
                        flags: 1,
                        name: "id".into(),
                        type_oid: 25,
                        type_modifier: -1
                    },
                    Column {
                        flags: 0,
                        name: "organizationId".into(),
                        type_oid: 1043,
                        type_modifier: 68
                    },
                ],
            ))
        );
    }

    #[test]
    fn type_message() {
        let data = cat(&[b"Y", &16_400u32.to_be_bytes(), b"public\0", b"UserRole\0"]);
        assert_eq!(
            decode(&data).unwrap(),
            Message::Type {
                oid: 16_400,
                namespace: "public".into(),
                name: "UserRole".into()
            }
        );
    }

    #[test]
    fn insert_with_every_value_kind_is_zero_copy() {
        let data = cat(&[
            b"I",
            &16_385u32.to_be_bytes(),
            b"N",
            &4i16.to_be_bytes(),
            b"t",
            &3i32.to_be_bytes(),
            b"abc",
            b"n",
            b"u",
            b"b",
            &2i32.to_be_bytes(),
            &[0xDE, 0xAD],
        ]);
        let m = decode(&data).unwrap();
        assert_eq!(
            m,
            Message::Insert {
                relation: 16_385,
                new: Tuple(vec![
                    text("abc"),
                    TupleValue::Null,
                    TupleValue::UnchangedToast,
                    TupleValue::Binary(Bytes::from_static(&[0xDE, 0xAD])),
                ])
            }
        );
        let Message::Insert { new, .. } = m else {
            unreachable!()
        };
        let TupleValue::Text(abc) = &new.0[0] else {
            unreachable!()
        };
        let range = data.as_ptr_range();
        assert!(
            range.contains(&abc.as_ptr()),
            "value is not a slice of the input"
        );
    }

    #[test]
    fn empty_text_value() {
        let data = cat(&[
            b"I",
            &1u32.to_be_bytes(),
            b"N",
            &1i16.to_be_bytes(),
            b"t",
            &0i32.to_be_bytes(),
        ]);
        assert_eq!(
            decode(&data).unwrap(),
            Message::Insert {
                relation: 1,
                new: Tuple(vec![text("")])
            }
        );
    }

    fn one_col(kind_and_value: &[u8]) -> Vec<u8> {
        [&1i16.to_be_bytes()[..], kind_and_value].concat()
    }

    #[test]
    fn update_without_old() {
        let data = cat(&[b"U", &9u32.to_be_bytes(), b"N", &one_col(b"u")]);
        assert_eq!(
            decode(&data).unwrap(),
            Message::Update {
                relation: 9,
                old: None,
                new: Tuple(vec![TupleValue::UnchangedToast])
            }
        );
    }

    #[test]
    fn update_with_key_old() {
        let new = [&1i16.to_be_bytes()[..], b"t", &1i32.to_be_bytes(), b"2"].concat();
        let old = [&1i16.to_be_bytes()[..], b"t", &1i32.to_be_bytes(), b"1"].concat();
        let data = cat(&[b"U", &9u32.to_be_bytes(), b"K", &old, b"N", &new]);
        assert_eq!(
            decode(&data).unwrap(),
            Message::Update {
                relation: 9,
                old: Some(OldTuple::Key(Tuple(vec![text("1")]))),
                new: Tuple(vec![text("2")])
            }
        );
    }

    #[test]
    fn update_with_full_old() {
        let data = cat(&[
            b"U",
            &9u32.to_be_bytes(),
            b"O",
            &one_col(b"n"),
            b"N",
            &one_col(b"u"),
        ]);
        assert_eq!(
            decode(&data).unwrap(),
            Message::Update {
                relation: 9,
                old: Some(OldTuple::Full(Tuple(vec![TupleValue::Null]))),
                new: Tuple(vec![TupleValue::UnchangedToast])
            }
        );
    }

    #[test]
    fn delete_key_and_full() {
        let data = cat(&[b"D", &9u32.to_be_bytes(), b"K", &one_col(b"n")]);
        assert_eq!(
            decode(&data).unwrap(),
            Message::Delete {
                relation: 9,
                old: OldTuple::Key(Tuple(vec![TupleValue::Null]))
            }
        );
        let data = cat(&[b"D", &9u32.to_be_bytes(), b"O", &0i16.to_be_bytes()]);
        assert_eq!(
            decode(&data).unwrap(),
            Message::Delete {
                relation: 9,
                old: OldTuple::Full(Tuple(vec![]))
            }
        );
    }

    #[test]
    fn truncate() {
        let data = cat(&[
            b"T",
            &2u32.to_be_bytes(),
            &[3],
            &16_385u32.to_be_bytes(),
            &16_390u32.to_be_bytes(),
        ]);
        assert_eq!(
            decode(&data).unwrap(),
            Message::Truncate {
                options: 3,
                relations: vec![16_385, 16_390]
            }
        );
    }

    #[test]
    fn logical_message() {
        let data = cat(&[
            b"M",
            &[1],
            &0x10u64.to_be_bytes(),
            b"realtime\0",
            &7u32.to_be_bytes(),
            b"{\"a\":1}",
        ]);
        assert_eq!(
            decode(&data).unwrap(),
            Message::Message {
                transactional: true,
                lsn: 0x10,
                prefix: "realtime".into(),
                content: Bytes::from_static(b"{\"a\":1}")
            }
        );
        let data = cat(&[
            b"M",
            &[0],
            &0u64.to_be_bytes(),
            b"realtime-heartbeat\0",
            &0u32.to_be_bytes(),
        ]);
        assert_eq!(
            decode(&data).unwrap(),
            Message::Message {
                transactional: false,
                lsn: 0,
                prefix: "realtime-heartbeat".into(),
                content: Bytes::new()
            }
        );
    }

    // ---- error cases ----

    #[test]
    fn empty_input() {
        assert_eq!(decode(&Bytes::new()), Err(DecodeError::Empty));
    }

    #[test]
    fn unknown_tag() {
        // 'S' is Stream Start, protocol v2 only.
        let err = decode(&Bytes::from_static(b"S\0\0\0\x01\x01")).unwrap_err();
        assert_eq!(err, DecodeError::UnknownTag { tag: b'S' });
        assert_eq!(err.to_string(), "unknown pgoutput message tag 'S' (0x53)");
        let err = decode(&Bytes::from_static(b"\x00")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown pgoutput message tag '\\x00' (0x00)"
        );
    }

    #[test]
    fn truncated_reports_offset_and_field() {
        let err = decode(&Bytes::from_static(b"B\0\0\0\0")).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Truncated {
                offset: 1,
                needed: 4,
                what: "Begin final LSN"
            }
        );
        let data = cat(&[
            b"I",
            &1u32.to_be_bytes(),
            b"N",
            &one_col(b"t"),
            &10i32.to_be_bytes(),
            b"abc",
        ]);
        assert_eq!(
            decode(&data).unwrap_err(),
            DecodeError::Truncated {
                offset: 13,
                needed: 7,
                what: "column value"
            }
        );
    }

    #[test]
    fn bad_tuple_kind() {
        let data = cat(&[b"I", &1u32.to_be_bytes(), b"N", &one_col(b"x")]);
        assert_eq!(
            decode(&data).unwrap_err(),
            DecodeError::BadTupleKind {
                kind: b'x',
                offset: 8
            }
        );
    }

    #[test]
    fn negative_length_and_count() {
        let data = cat(&[
            b"I",
            &1u32.to_be_bytes(),
            b"N",
            &one_col(b"t"),
            &(-1i32).to_be_bytes(),
        ]);
        assert_eq!(
            decode(&data).unwrap_err(),
            DecodeError::NegativeLength {
                length: -1,
                offset: 9
            }
        );
        let data = cat(&[b"I", &1u32.to_be_bytes(), b"N", &(-2i16).to_be_bytes()]);
        assert!(matches!(
            decode(&data).unwrap_err(),
            DecodeError::NegativeCount {
                count: -2,
                offset: 6,
                ..
            }
        ));
        let data = cat(&[
            b"R",
            &1u32.to_be_bytes(),
            b"\0t\0d",
            &i16::MIN.to_be_bytes(),
        ]);
        assert!(matches!(
            decode(&data).unwrap_err(),
            DecodeError::NegativeCount {
                count: i16::MIN,
                ..
            }
        ));
    }

    #[test]
    fn huge_counts_fail_without_huge_allocations() {
        // Claims 4 billion relations / 32767 columns with nothing behind them.
        let data = cat(&[b"T", &u32::MAX.to_be_bytes(), &[0]]);
        assert!(matches!(decode(&data), Err(DecodeError::Truncated { .. })));
        let data = cat(&[b"I", &1u32.to_be_bytes(), b"N", &i16::MAX.to_be_bytes()]);
        assert!(matches!(decode(&data), Err(DecodeError::Truncated { .. })));
        let data = cat(&[
            b"M",
            &[1],
            &0u64.to_be_bytes(),
            b"p\0",
            &u32::MAX.to_be_bytes(),
        ]);
        assert!(matches!(decode(&data), Err(DecodeError::Truncated { .. })));
        let data = cat(&[
            b"I",
            &1u32.to_be_bytes(),
            b"N",
            &one_col(b"t"),
            &i32::MAX.to_be_bytes(),
        ]);
        assert!(matches!(decode(&data), Err(DecodeError::Truncated { .. })));
    }

    #[test]
    fn bad_markers() {
        let data = cat(&[b"I", &1u32.to_be_bytes(), b"K", &0i16.to_be_bytes()]);
        assert_eq!(
            decode(&data).unwrap_err(),
            DecodeError::UnexpectedMarker {
                expected: "'N' (new tuple)",
                found: b'K',
                offset: 5
            }
        );
        let data = cat(&[b"U", &1u32.to_be_bytes(), b"X", &0i16.to_be_bytes()]);
        assert!(matches!(
            decode(&data).unwrap_err(),
            DecodeError::UnexpectedMarker { found: b'X', .. }
        ));
        // An old tuple must be followed by 'N'.
        let data = cat(&[
            b"U",
            &1u32.to_be_bytes(),
            b"O",
            &0i16.to_be_bytes(),
            b"O",
            &0i16.to_be_bytes(),
        ]);
        assert!(matches!(
            decode(&data).unwrap_err(),
            DecodeError::UnexpectedMarker {
                found: b'O',
                offset: 8,
                ..
            }
        ));
        let data = cat(&[b"D", &1u32.to_be_bytes(), b"N", &0i16.to_be_bytes()]);
        assert!(matches!(
            decode(&data).unwrap_err(),
            DecodeError::UnexpectedMarker { found: b'N', .. }
        ));
    }

    #[test]
    fn strings() {
        let data = cat(&[b"O", &7u64.to_be_bytes(), b"no-nul"]);
        assert_eq!(
            decode(&data).unwrap_err(),
            DecodeError::UnterminatedString {
                offset: 9,
                what: "Origin name"
            }
        );
        let data = cat(&[b"O", &7u64.to_be_bytes(), b"ab\xFFc\0"]);
        assert_eq!(
            decode(&data).unwrap_err(),
            DecodeError::InvalidUtf8 {
                offset: 11,
                what: "Origin name"
            }
        );
    }

    #[test]
    fn trailing_bytes() {
        let data = cat(&[b"Y", &1u32.to_be_bytes(), b"public\0", b"t\0", b"!!"]);
        let err = decode(&data).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TrailingBytes {
                tag: b'Y',
                offset: 14,
                remaining: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "2 trailing byte(s) at offset 14 after a complete 'Y' (0x59) message"
        );
    }

    // ---- bytes captured from PostgreSQL 15 (pg_logical_slot_peek_binary_changes,
    // proto_version 1, messages true) ----

    fn unhex(s: &str) -> Bytes {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }

    #[test]
    fn real_postgres_15_messages() {
        let decoded = |h: &str| decode(&unhex(h)).unwrap();
        assert_eq!(
            decoded("42000000000154ce600003044c6cb952c4000002e3"),
            Message::Begin {
                final_lsn: 0x0154_CE60,
                commit_ts: 0x0003_044C_6CB9_52C4,
                xid: 739
            }
        );
        assert_eq!(
            decoded(
                "52000040147075626c696300446f63006400030169640000000017ffffffff007469746c65\
                 0000000019ffffffff00626f64790000000019ffffffff"
            ),
            Message::Relation(Relation::new(
                16_404,
                "public".into(),
                "Doc".into(),
                b'd',
                vec![
                    Column {
                        flags: 1,
                        name: "id".into(),
                        type_oid: 23,
                        type_modifier: -1
                    },
                    Column {
                        flags: 0,
                        name: "title".into(),
                        type_oid: 25,
                        type_modifier: -1
                    },
                    Column {
                        flags: 0,
                        name: "body".into(),
                        type_oid: 25,
                        type_modifier: -1
                    },
                ],
            ))
        );
        // UPDATE "Doc" SET title = 'b': the externally stored body is unchanged TOAST.
        assert_eq!(
            decoded("55000040144e000374000000013174000000016275"),
            Message::Update {
                relation: 16_404,
                old: None,
                new: Tuple(vec![text("1"), text("b"), TupleValue::UnchangedToast])
            }
        );
        assert_eq!(
            decoded("4300000000000154ce60000000000154ce900003044c6cb952c4"),
            Message::Commit {
                flags: 0,
                commit_lsn: 0x0154_CE60,
                end_lsn: 0x0154_CE90,
                commit_ts: 0x0003_044C_6CB9_52C4
            }
        );
        // Only the enum's array type is announced when only it is used by a column.
        assert_eq!(
            decoded("59000040007075626c6963005f55736572526f6c6500"),
            Message::Type {
                oid: 16_384,
                namespace: "public".into(),
                name: "_UserRole".into()
            }
        );
        // A key-only old tuple sends every non-key column as 'n'.
        let Message::Delete {
            relation: 16_389,
            old: OldTuple::Key(key),
        } = decoded("44000040054b000e740000000274326e6e6e6e6e6e6e6e6e6e6e6e6e")
        else {
            panic!("not a key delete")
        };
        assert_eq!(key.0.len(), 14);
        assert_eq!(key.0[0], text("t2"));
        assert!(key.0[1..].iter().all(|v| *v == TupleValue::Null));
        assert_eq!(
            decoded("4d0000000000015430107265616c74696d652d6865617274626561740000000000"),
            Message::Message {
                transactional: false,
                lsn: 0x0154_3010,
                prefix: "realtime-heartbeat".into(),
                content: Bytes::new()
            }
        );
        assert_eq!(
            decoded("4d0100000000015401c07265616c74696d65000000000b7b2268656c6c6f223a317d"),
            Message::Message {
                transactional: true,
                lsn: 0x0154_01C0,
                prefix: "realtime".into(),
                content: Bytes::from_static(b"{\"hello\":1}")
            }
        );
        assert_eq!(
            decoded("54000000010000004005"),
            Message::Truncate {
                options: 0,
                relations: vec![16_389]
            }
        );
    }
}
