//! Redis key and channel names (ARCHITECTURE.md §4), all under one prefix
//! (`REALTIME_KEY_PREFIX`, default `rt`).
//!
//! Hash tags (`{org:<id>}`) keep an organization's history and channel in one
//! Redis Cluster slot, so the publish script touches a single slot.

use crate::event::Scope;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `rt:{org:<id>}` or `rt:{broadcast}`: the live PUBLISH channel.
    pub fn channel(&self, scope: &Scope) -> String {
        match scope {
            Scope::Organization(org) => format!("{}:{{org:{org}}}", self.prefix),
            Scope::Broadcast => format!("{}:{{broadcast}}", self.prefix),
        }
    }

    /// `rt:{org:<id>}:history` or `rt:{broadcast}:history`: the history stream.
    pub fn history(&self, scope: &Scope) -> String {
        let mut key = self.channel(scope);
        key.push_str(":history");
        key
    }

    /// `rt:{control}`: cross-replica control messages.
    pub fn control(&self) -> String {
        format!("{}:{{control}}", self.prefix)
    }

    /// `rt:{caps:user:<id>}`: one user's connection-cap leases. Its own hash
    /// tag: on a Redis Cluster every user's and organization's set lives in
    /// its own slot, so no one slot holds every cap (a hot slot).
    pub fn caps_user(&self, user: &str) -> String {
        format!("{}:{{caps:user:{user}}}", self.prefix)
    }

    /// `rt:{caps:org:<id>}`: one organization's connection-cap leases.
    pub fn caps_org(&self, org: &str) -> String {
        format!("{}:{{caps:org:{org}}}", self.prefix)
    }
}

impl Default for Keys {
    fn default() -> Self {
        Self::new("rt")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_design_section_4() {
        let k = Keys::default();
        let org = Scope::Organization("o1".into());
        assert_eq!(k.channel(&org), "rt:{org:o1}");
        assert_eq!(k.history(&org), "rt:{org:o1}:history");
        assert_eq!(k.channel(&Scope::Broadcast), "rt:{broadcast}");
        assert_eq!(k.history(&Scope::Broadcast), "rt:{broadcast}:history");
        assert_eq!(k.control(), "rt:{control}");
        assert_eq!(k.caps_user("u1"), "rt:{caps:user:u1}");
        assert_eq!(k.caps_org("o1"), "rt:{caps:org:o1}");
    }
}
