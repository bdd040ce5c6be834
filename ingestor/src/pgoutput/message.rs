//! Decoded pgoutput messages (protocol version 1).

use bytes::Bytes;

/// One decoded pgoutput message. LSNs are raw `u64` WAL positions; timestamps
/// are microseconds since 2000-01-01 00:00:00 UTC (the Postgres epoch).
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `B`: a transaction starts; `final_lsn` is the LSN of its commit record.
    Begin {
        final_lsn: u64,
        commit_ts: i64,
        xid: u32,
    },
    /// `C`: the transaction ends.
    Commit {
        flags: u8,
        commit_lsn: u64,
        end_lsn: u64,
        commit_ts: i64,
    },
    /// `O`: the transaction came from another origin.
    Origin { commit_lsn: u64, name: String },
    /// `R`: a table's shape; may arrive at any point, also mid-transaction.
    Relation(Relation),
    /// `Y`: a non-built-in type's name (enums, domains, their arrays).
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    /// `I`
    Insert { relation: u32, new: Tuple },
    /// `U`: `old` is present with REPLICA IDENTITY FULL (`O`) or when the key changed (`K`).
    Update {
        relation: u32,
        old: Option<OldTuple>,
        new: Tuple,
    },
    /// `D`
    Delete { relation: u32, old: OldTuple },
    /// `T`: option bits 1 = CASCADE, 2 = RESTART IDENTITY.
    Truncate { options: u8, relations: Vec<u32> },
    /// `M`: `pg_logical_emit_message`.
    Message {
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Bytes,
    },
}

/// A table's description as sent in a Relation message.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
    /// Indexes into `columns` in the order of their names: a row's map is
    /// built in this order, so collecting it finds the keys sorted (no sort
    /// per row; sorting took a tenth of the drain's CPU).
    pub by_name: Vec<usize>,
}

impl Relation {
    pub fn new(
        oid: u32,
        namespace: String,
        name: String,
        replica_identity: u8,
        columns: Vec<Column>,
    ) -> Self {
        let mut by_name: Vec<usize> = (0..columns.len()).collect();
        by_name.sort_by(|&a, &b| columns[a].name.cmp(&columns[b].name));
        Self {
            oid,
            namespace,
            name,
            replica_identity,
            columns,
            by_name,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Bit 1: the column is part of the replica identity key.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// An old row image: the key columns only (`K`) or the whole row (`O`, REPLICA IDENTITY FULL).
#[derive(Debug, Clone, PartialEq)]
pub enum OldTuple {
    Key(Tuple),
    Full(Tuple),
}

impl OldTuple {
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// Column values in relation column order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tuple(pub Vec<TupleValue>);

#[derive(Debug, Clone, PartialEq)]
pub enum TupleValue {
    /// `n`
    Null,
    /// `u`: a TOASTed value that did not change (the new row omits it).
    UnchangedToast,
    /// `t`: the type's text output.
    Text(Bytes),
    /// `b`: the type's binary send format (only with the `binary` option).
    Binary(Bytes),
}
