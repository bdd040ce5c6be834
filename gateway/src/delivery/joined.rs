//! The organization channels this replica's streams joined ([`Joined`]),
//! shared by the [`super::Hub`], which adds streams and keeps its Redis
//! subscriptions in step with the map, and every [`super::Subscription`],
//! which lets go of its channel when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::feed::OrgFeed;
use super::lock;

/// For the hub's subscriber task.
pub(super) enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

pub(super) struct Entry {
    pub(super) org: String,
    pub(super) feed: Arc<OrgFeed>,
    /// Streams holding the channel.
    pub(super) refs: usize,
    /// When Redis confirmed the current subscription; `None` while not
    /// subscribed. Since then, every event of the org passes through here.
    pub(super) ready: watch::Sender<Option<Instant>>,
}

/// Channel name → entry, and the way to the subscriber task.
pub(super) struct Joined {
    /// A std mutex: held for map operations only, never across an await.
    entries: Mutex<HashMap<String, Entry>>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Joined {
    pub(super) fn new(commands: mpsc::UnboundedSender<Command>) -> Self {
        Joined {
            entries: Mutex::new(HashMap::new()),
            commands,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        lock(&self.entries)
    }

    /// Queues `command` for the subscriber task (a no-op once it stopped).
    pub(super) fn command(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    /// A stream let go of `channel` (its [`super::Subscription`] was
    /// dropped); the last one ends the Redis subscription.
    pub(super) fn leave(&self, channel: &str) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(channel) {
            entry.refs -= 1;
            if entry.refs == 0 {
                entries.remove(channel);
                self.command(Command::Unsubscribe(channel.to_owned()));
            }
        }
    }
}
