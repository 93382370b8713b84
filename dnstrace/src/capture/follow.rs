//! Interfaces that come and go while `--auto` runs (a pod's veth): which ones are
//! hooked and with what, keyed by interface index, since a name can come back as
//! another device. Pure bookkeeping; [`super::Capture`] does the attaching.
use std::collections::BTreeMap;

use super::links::Link;

/// How the interfaces watched changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CoverageEvent {
    /// A new interface got the tc programs.
    Attached,
    /// A watched interface went away; its hooks went with it.
    Detached,
    /// A new interface could not be hooked: what crosses it is not seen.
    AttachFailed,
    /// A watched interface was renamed; it stays watched.
    Renamed,
}

impl CoverageEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attached => "attached",
            Self::Detached => "detached",
            Self::AttachFailed => "attach_failed",
            Self::Renamed => "renamed",
        }
    }
}

/// Interfaces watched now, and the changes so far in this run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CoverageTotals {
    /// Interfaces with the tc programs attached, after this change.
    pub interfaces: usize,
    /// Interfaces attached since the start (not counting those attached at start).
    pub attached: u64,
    pub detached: u64,
    pub attach_failed: u64,
}

/// One change of the interfaces watched: a `{"type":"coverage"}` record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CoverageChange {
    pub event: CoverageEvent,
    pub iface: String,
    pub ifindex: u32,
    /// Cookie of the netns the interface is in (dnstrace's own).
    pub netns: u64,
    /// How it is hooked ("tcx", "netlink tc prio N"), when attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Its name before, when renamed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_name: Option<String>,
    /// Why attaching failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub totals: CoverageTotals,
}

/// What became of one interface.
#[derive(Debug)]
pub(super) enum Held<H> {
    /// Hooked: one handle per direction.
    Attached(Vec<H>),
    /// Attaching failed; not tried again while it lives (no error storm).
    Failed,
    /// Not selected (a link-layer type dnstrace cannot parse).
    Skipped,
}

#[derive(Debug)]
pub(super) struct Entry<H> {
    pub name: String,
    pub held: Held<H>,
}

/// What a link notification means for what is followed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Seen {
    /// An interface index not followed yet.
    New,
    /// A followed interface under another name.
    Renamed { old: String },
    /// Nothing changed that matters (flags, addresses, carrier…).
    Known,
}

/// Every interface of the netns, by index, with what is held on it.
#[derive(Debug)]
pub(super) struct Followed<H> {
    by_index: BTreeMap<u32, Entry<H>>,
}

impl<H> Default for Followed<H> {
    fn default() -> Self {
        Self {
            by_index: BTreeMap::new(),
        }
    }
}

impl<H> Followed<H> {
    pub fn seen(&self, link: &Link) -> Seen {
        match self.by_index.get(&link.index) {
            None => Seen::New,
            Some(e) if e.name != link.name && !link.name.is_empty() => Seen::Renamed {
                old: e.name.clone(),
            },
            Some(_) => Seen::Known,
        }
    }

    pub fn insert(&mut self, link: &Link, held: Held<H>) {
        self.by_index.insert(
            link.index,
            Entry {
                name: link.name.clone(),
                held,
            },
        );
    }

    /// A followed interface's new name.
    pub fn rename(&mut self, index: u32, name: &str) {
        if let Some(e) = self.by_index.get_mut(&index) {
            name.clone_into(&mut e.name);
        }
    }

    pub fn remove(&mut self, index: u32) -> Option<Entry<H>> {
        self.by_index.remove(&index)
    }

    pub fn get(&self, index: u32) -> Option<&Entry<H>> {
        self.by_index.get(&index)
    }

    /// Followed interfaces that `links` (a fresh listing) no longer has: gone while
    /// notifications were lost.
    pub fn missing_from(&self, links: &[Link]) -> Vec<u32> {
        self.by_index
            .keys()
            .filter(|i| !links.iter().any(|l| l.index == **i))
            .copied()
            .collect()
    }

    /// How many interfaces are hooked now.
    pub fn attached(&self) -> usize {
        self.by_index
            .values()
            .filter(|e| matches!(e.held, Held::Attached(_)))
            .count()
    }

    /// Everything followed, emptied out (at the end of the run).
    pub fn take_all(&mut self) -> Vec<(u32, Entry<H>)> {
        std::mem::take(&mut self.by_index).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::links::Framing;

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.to_owned(),
            kind: "veth".to_owned(),
            framing: Framing::Ethernet,
            up: true,
        }
    }

    #[test]
    fn a_name_that_comes_back_as_another_device_is_a_new_interface() {
        let mut f: Followed<&str> = Followed::default();
        let first = link(7, "vethpod1");
        assert_eq!(f.seen(&first), Seen::New);
        f.insert(&first, Held::Attached(vec!["in7", "out7"]));
        // Flag changes (up, carrier) repeat the same index and name.
        assert_eq!(f.seen(&first), Seen::Known);
        // The pod restarts: the same name with another index, perhaps before the old
        // device's removal is read.
        let again = link(12, "vethpod1");
        assert_eq!(f.seen(&again), Seen::New);
        f.insert(&again, Held::Attached(vec!["in12", "out12"]));
        assert_eq!(f.attached(), 2);
        // The old device's removal lets go of its own handles only.
        let old = f.remove(7).expect("index 7 was followed");
        assert!(matches!(old.held, Held::Attached(ref h) if h == &["in7", "out7"]));
        assert_eq!(f.get(12).map(|e| e.name.as_str()), Some("vethpod1"));
        assert!(
            matches!(f.get(12).map(|e| &e.held), Some(Held::Attached(h)) if h == &["in12", "out12"])
        );
        assert_eq!(f.attached(), 1);
        // Removed twice (a resync after a notification): nothing left to let go.
        assert!(f.remove(7).is_none());
    }

    #[test]
    fn renames_failures_and_resync() {
        let mut f: Followed<u8> = Followed::default();
        f.insert(&link(3, "eth0"), Held::Attached(vec![1, 2]));
        f.insert(&link(4, "tun0"), Held::Failed);
        f.insert(&link(5, "can0"), Held::Skipped);
        assert_eq!(
            f.seen(&link(3, "uplink")),
            Seen::Renamed {
                old: "eth0".to_owned()
            }
        );
        f.rename(3, "uplink");
        assert_eq!(f.seen(&link(3, "uplink")), Seen::Known);
        // A failed interface is not tried again on its next notification.
        assert_eq!(f.seen(&link(4, "tun0")), Seen::Known);
        assert_eq!(f.attached(), 1);
        // Notifications were lost: a listing shows 4 gone and a new 9.
        let now = [link(3, "uplink"), link(5, "can0"), link(9, "veth9")];
        assert_eq!(f.missing_from(&now), vec![4]);
        assert_eq!(f.seen(&now[2]), Seen::New);
        assert_eq!(f.take_all().len(), 3);
        assert_eq!(f.attached(), 0);
    }
}
