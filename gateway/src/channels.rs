//! Channel filters (ARCHITECTURE.md §3): `property` → property.update;
//! `organization` → organization.change, member.join, member.leave;
//! `user` → user.activity; `notifications` → notification.new;
//! `system` → system.alert; absent or `all` → everything. `data.sync`
//! always passes.

use realtime_shared::event::EventType;

/// A set of event types as a bit mask: one `u16` per connection, one AND
/// per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelFilter(u16);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown channel {0:?} (use property, organization, user, notifications, system or all)")]
pub struct UnknownChannel(pub String);

const fn bit(t: EventType) -> u16 {
    1 << t as u16
}

impl ChannelFilter {
    pub const ALL: ChannelFilter = ChannelFilter(u16::MAX);

    /// Parses `channel=a,b`; `None`/empty/`all` is everything.
    pub fn parse(spec: Option<&str>) -> Result<(ChannelFilter, String), UnknownChannel> {
        // No name at all (absent, empty, or only commas and spaces): all.
        let Some(spec) = spec
            .map(str::trim)
            .filter(|s| s.split(',').any(|n| !n.trim().is_empty()))
        else {
            return Ok((ChannelFilter::ALL, "all".to_owned()));
        };
        let mut mask = bit(EventType::DataSync);
        for name in spec.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            mask |= match name {
                "all" => u16::MAX,
                "property" => bit(EventType::PropertyUpdate),
                "organization" => {
                    bit(EventType::OrganizationChange)
                        | bit(EventType::MemberJoin)
                        | bit(EventType::MemberLeave)
                }
                "user" => bit(EventType::UserActivity),
                "notifications" => bit(EventType::NotificationNew),
                "system" => bit(EventType::SystemAlert),
                other => return Err(UnknownChannel(other.chars().take(64).collect())),
            };
        }
        Ok((ChannelFilter(mask), spec.to_owned()))
    }

    /// Parses the `channels` list of a `PUT` body; an empty list is all,
    /// like an absent `channel` parameter.
    pub fn parse_list(names: &[String]) -> Result<(ChannelFilter, String), UnknownChannel> {
        ChannelFilter::parse(Some(&names.join(",")))
    }

    pub const fn bits(self) -> u16 {
        self.0
    }

    pub const fn from_bits(bits: u16) -> ChannelFilter {
        ChannelFilter(bits)
    }

    pub fn passes(self, t: EventType) -> bool {
        self.0 & bit(t) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_channel() {
        let (f, name) = ChannelFilter::parse(Some("property")).unwrap();
        assert_eq!(name, "property");
        assert!(f.passes(EventType::PropertyUpdate));
        assert!(f.passes(EventType::DataSync));
        assert!(!f.passes(EventType::MemberLeave));
        let (f, _) = ChannelFilter::parse(Some("organization,system")).unwrap();
        assert!(f.passes(EventType::MemberLeave) && f.passes(EventType::SystemAlert));
        assert!(!f.passes(EventType::UserActivity));
        let (f, name) = ChannelFilter::parse(None).unwrap();
        assert_eq!(name, "all");
        assert!(EventType::ALL.iter().all(|t| f.passes(*t)));
        assert!(ChannelFilter::parse(Some("bogus")).is_err());
        let (f, name) = ChannelFilter::parse(Some(",,, ,")).unwrap();
        assert_eq!((f, name.as_str()), (ChannelFilter::ALL, "all"));
    }
}
