//! The ingestor's pgoutput decoder and column-value conversion: any bytes
//! decode to a message or a `DecodeError`, and every decoded column value
//! converts to JSON under every type the converter knows.

use bytes::Bytes;
use realtime_ingestor::pgoutput::{Message, Tuple, TupleValue, decode};
use realtime_ingestor::value::TypeRegistry;

/// Type OIDs with their own conversion (scalars and their arrays), plus
/// one unknown (text).
const TYPE_OIDS: &[u32] = &[
    16, 20, 21, 23, 25, 26, 114, 700, 701, 1043, 1082, 1114, 1184, 1700, 2950, 3802, 1000, 1005,
    1007, 1016, 1009, 1015, 1021, 1022, 1231, 199, 3807, 1115, 1185, 1182, 2951, 424_242,
];

pub fn check(data: &[u8]) {
    let Ok(message) = decode(&Bytes::copy_from_slice(data)) else {
        return;
    };
    let types = TypeRegistry::default();
    let convert = |tuple: &Tuple| {
        for value in &tuple.0 {
            for &oid in TYPE_OIDS {
                let json = types.to_json(oid, value);
                assert_eq!(json.is_none(), matches!(value, TupleValue::UnchangedToast));
            }
        }
    };
    match &message {
        Message::Insert { new, .. } => convert(new),
        Message::Update { old, new, .. } => {
            if let Some(old) = old {
                convert(old.tuple());
            }
            convert(new);
        }
        Message::Delete { old, .. } => convert(old.tuple()),
        _ => {}
    }
}
