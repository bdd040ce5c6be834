//! The oracle's judgement: what each client received against what the
//! database says was committed.
//!
//! Per client: every event of its organization committed in the run
//! (`properties` rows and `oracle_membership_log` rows) exactly once, in id
//! order, nothing of another organization, no `data.sync` (the history is
//! never trimmed, so every resume is covered), no refusal other than a 403
//! while a churn user is out of its organization. Churn clients also: a
//! stream open at the user's own `member.leave` receives nothing after it,
//! and no stream opens while the user is out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use realtime_shared::event::EventId;

use super::client::{Behaviour, ClientLog, ClientSpec, EventKey};
use super::membership::Window;

/// What the database holds after the run.
#[derive(Debug, Default)]
pub struct Truth {
    /// `properties` rows: id → organization.
    pub rows: BTreeMap<String, String>,
    /// Membership changes per organization: (leave, user) → how many.
    pub members: BTreeMap<String, BTreeMap<(bool, String), usize>>,
}

/// The findings about one client (empty lists: it passed).
#[derive(Debug, Default)]
pub struct ClientFindings {
    pub missing: Vec<String>,
    pub duplicated: Vec<String>,
    pub misrouted: Vec<String>,
    pub phantom: Vec<String>,
    pub out_of_order: Vec<String>,
    pub member_counts: Vec<String>,
    pub syncs: Vec<String>,
    pub refusals: Vec<String>,
    pub malformed: Vec<String>,
    pub after_leave: Vec<String>,
    pub opened_while_out: Vec<String>,
}

impl ClientFindings {
    fn lists(&self) -> [(&'static str, &Vec<String>); 11] {
        [
            ("missing", &self.missing),
            ("duplicated", &self.duplicated),
            ("misrouted", &self.misrouted),
            ("not in the database", &self.phantom),
            ("out of id order", &self.out_of_order),
            ("member events", &self.member_counts),
            ("data.sync", &self.syncs),
            ("refused", &self.refusals),
            ("malformed", &self.malformed),
            ("after its member.leave", &self.after_leave),
            ("stream opened while not a member", &self.opened_while_out),
        ]
    }

    pub fn passed(&self) -> bool {
        self.lists().iter().all(|(_, l)| l.is_empty())
    }

    /// One line per non-empty finding, at most `limit` items each.
    pub fn describe(&self, limit: usize) -> String {
        let mut out = String::new();
        for (what, list) in self.lists() {
            if list.is_empty() {
                continue;
            }
            let shown: Vec<&str> = list.iter().take(limit).map(String::as_str).collect();
            let more = list.len().saturating_sub(limit);
            let _ = write!(out, "\n    {what} ({}): {}", list.len(), shown.join(", "));
            if more > 0 {
                let _ = write!(out, ", … {more} more");
            }
        }
        out
    }
}

/// Judges one client. `origin`: the time offsets are from it (when the
/// writers started, as in the fault timeline). `leave_ids`: the id of every `member.leave` as some
/// client received it, per (org, user).
pub fn judge(
    spec: &ClientSpec,
    log: &ClientLog,
    truth: &Truth,
    leave_ids: &BTreeMap<(String, String), BTreeSet<EventId>>,
    windows: &[Window],
    origin: tokio::time::Instant,
) -> ClientFindings {
    let mut f = ClientFindings::default();
    let mut seen_ids: HashMap<EventId, usize> = HashMap::new();
    let mut seen_rows: BTreeMap<&str, usize> = BTreeMap::new();
    let mut members: BTreeMap<(bool, String), usize> = BTreeMap::new();
    let mut previous: Option<EventId> = None;
    for event in &log.events {
        *seen_ids.entry(event.id).or_default() += 1;
        if event.org.as_deref() != Some(spec.org.as_str()) {
            f.misrouted
                .push(format!("{} ({:?} of {:?})", event.id, event.key, event.org));
        }
        if previous.is_some_and(|p| event.id <= p) {
            f.out_of_order.push(format!(
                "{} after {}",
                event.id,
                previous.unwrap_or(event.id)
            ));
        }
        previous = Some(event.id);
        match &event.key {
            EventKey::Property(id) => *seen_rows.entry(id.as_str()).or_default() += 1,
            EventKey::Member { leave, user } => {
                *members.entry((*leave, user.clone())).or_default() += 1
            }
            EventKey::Other(kind) => f.phantom.push(format!("{} ({kind})", event.id)),
        }
    }
    f.duplicated = seen_ids
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| format!("{id} ×{n}"))
        .collect();
    f.duplicated.sort();
    for (row, n) in &seen_rows {
        match truth.rows.get(*row) {
            None => f.phantom.push((*row).to_owned()),
            Some(org) if *org == spec.org && *n > 1 => {
                // The same row under two ids: reported with its count.
                if !f.duplicated.iter().any(|d| d.contains(row)) {
                    f.duplicated.push(format!("{row} ×{n}"));
                }
            }
            Some(_) => {}
        }
    }
    f.missing = truth
        .rows
        .iter()
        .filter(|(row, org)| **org == spec.org && !seen_rows.contains_key(row.as_str()))
        .map(|(row, _)| row.clone())
        .collect();
    let empty = BTreeMap::new();
    let want_members = truth.members.get(&spec.org).unwrap_or(&empty);
    for key in want_members
        .keys()
        .chain(members.keys())
        .collect::<BTreeSet<_>>()
    {
        let (want, got) = (
            want_members.get(key).copied().unwrap_or(0),
            members.get(key).copied().unwrap_or(0),
        );
        if want != got {
            let kind = if key.0 { "member.leave" } else { "member.join" };
            f.member_counts.push(format!(
                "{kind} of {}: {got} received, {want} committed",
                key.1
            ));
        }
    }
    f.syncs = log
        .syncs
        .iter()
        .map(|(at, session, data)| {
            let s = &log.sessions[*session];
            format!(
                "at +{:.3} s in session {session} on {} (resumed from {:?}): {data}",
                at.duration_since(origin).as_secs_f64(),
                s.replica,
                s.resumed_from.map(|r| r.to_string())
            )
        })
        .collect();
    f.malformed = log.malformed.clone();
    f.refusals = log
        .refusals
        .iter()
        .filter(|r| !(spec.behaviour == Behaviour::Churn && r.starts_with("403 ")))
        .cloned()
        .collect();
    if spec.behaviour == Behaviour::Churn {
        let own_leaves = leave_ids
            .get(&(spec.org.clone(), spec.user.clone()))
            .cloned()
            .unwrap_or_default();
        for (n, session) in log.sessions.iter().enumerate() {
            for leave in &own_leaves {
                if session.resumed_from.is_some_and(|r| r >= *leave) {
                    continue;
                }
                let after: Vec<String> = log
                    .events
                    .iter()
                    .filter(|e| e.session == n && e.id > *leave)
                    .map(|e| e.id.to_string())
                    .take(5)
                    .collect();
                if !after.is_empty() {
                    f.after_leave.push(format!(
                        "session {n} (from {:?}) passed leave {leave}: {}",
                        session.resumed_from.map(|r| r.to_string()),
                        after.join(" ")
                    ));
                }
            }
            for window in windows.iter().filter(|w| w.user == spec.user) {
                let opened_after_removal = session.requested_at > window.removed;
                let connected_before_readd = match (session.connected_at, window.readding) {
                    (Some(connected), Some(readding)) => connected < readding,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if opened_after_removal && connected_before_readd {
                    f.opened_while_out.push(format!(
                        "session {n} on {} requested {:?} after the removal committed",
                        session.replica,
                        session.requested_at - window.removed
                    ));
                }
            }
        }
    }
    f
}
