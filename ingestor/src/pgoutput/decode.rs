//! Stub: replaced by the real decoder.
use bytes::Bytes;

use super::Message;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
}

pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    let _ = data;
    Err(DecodeError::Empty)
}
