//! Chunked transfer decoding of the streams sse_load reads.

/// Undoes `Transfer-Encoding: chunked`, incrementally.
#[derive(Default)]
pub(crate) struct Dechunk {
    /// Bytes left in the current chunk's data.
    pub(crate) remaining: usize,
    /// The CRLF after a chunk's data is still to be skipped.
    pub(crate) crlf: bool,
    /// The terminating zero-size chunk was seen.
    pub(crate) done: bool,
}

impl Dechunk {
    /// Moves the payload of the complete parts of `raw` into `out`, and
    /// removes what it consumed from `raw`. Err on a malformed size line.
    pub(crate) fn feed(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) -> Result<(), String> {
        let mut pos = 0;
        while pos < raw.len() && !self.done {
            if self.remaining > 0 {
                let take = self.remaining.min(raw.len() - pos);
                out.extend_from_slice(&raw[pos..pos + take]);
                pos += take;
                self.remaining -= take;
                if self.remaining == 0 {
                    self.crlf = true;
                }
                continue;
            }
            if self.crlf {
                if raw.len() - pos < 2 {
                    break;
                }
                pos += 2;
                self.crlf = false;
                continue;
            }
            // A byte search, not `memmem::find`, which builds a searcher per
            // call (per delivery here: it showed in the bench's profile).
            let Some(lf) = memchr::memchr(b'\n', &raw[pos..]) else {
                if raw.len() - pos > 64 {
                    return Err("chunk size line too long".into());
                }
                break;
            };
            if lf == 0 || raw[pos + lf - 1] != b'\r' {
                return Err("chunk size line not ended by CRLF".into());
            }
            let nl = lf - 1;
            let line = std::str::from_utf8(&raw[pos..pos + nl]).map_err(|e| e.to_string())?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|e| format!("bad chunk size {line:?}: {e}"))?;
            pos += nl + 2;
            if size == 0 {
                self.done = true;
            } else {
                self.remaining = size;
            }
        }
        raw.drain(..pos);
        Ok(())
    }
}
