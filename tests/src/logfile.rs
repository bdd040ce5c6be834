//! Reading the log files that servers and child processes write.

use std::path::Path;

/// The whole file as text, invalid UTF-8 replaced (empty if unreadable).
pub(crate) fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// The last `lines` lines of a text file (empty if unreadable).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = read_lossy(path);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
