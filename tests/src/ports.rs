//! Free loopback ports for servers started by tests.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

/// A loopback TCP port that nothing listens on right now, never the same
/// twice in this process.
///
/// The port is found by binding `127.0.0.1:0` and closing the listener, so
/// another process may still take it before the caller binds it; the server
/// starters retry with a new port when that happens. Remembering every port
/// handed out keeps two parallel tests of this process from getting the same
/// one (the kernel may hand a just-closed port out again).
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("binding 127.0.0.1:0 to find a free port")
            .port();
        let mut taken = handed_out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if taken.insert(port) {
            return port;
        }
    }
}
