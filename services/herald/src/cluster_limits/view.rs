//! The node's picture of the cluster's leases and connection attempts, fed by the
//! limit streams (see [`super`]) and read by admission without asking NATS.
//!
//! Reconciliation rule (the same on every node, so they agree without talking): the
//! leases of a capped key are ranked by the stream sequence at which the stream first
//! stored them. When a lease's first message is read, it is *doomed* if `cap` earlier,
//! undoomed leases of its key are live at that point of the stream. The stream delivers
//! in sequence order, so every node decides the same from the same prefix; a node closes
//! its own doomed sessions, and nobody counts doomed leases.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;

use super::{Verdict, RATE_WINDOW};

/// The rank of an own lease the stream has not stored yet: after everything stored.
const PENDING: u64 = u64::MAX;
/// Client addresses whose recent attempts the view remembers; past it, a new address
/// is judged by per-node limits only until the sweep frees room.
pub(super) const MAX_ADDRESSES: usize = 100_000;

/// A node's name, shared by its leases (a thin pointer: every lease holds one).
type Node = Arc<Box<str>>;

/// One lease of a key, as the view knows it. Kept at 40 bytes: the view holds one per
/// session of the cluster.
#[derive(Debug)]
struct Held {
    node: Node,
    lease: u64,
    /// The stream sequence of its first message seen ([`PENDING`] until then).
    rank: u64,
    /// When its node last published it, in milliseconds since the view's epoch (remote
    /// leases expire `lease_ttl` after).
    seen: u64,
    /// Over the cap by the reconciliation rule: not counted, about to be released.
    doomed: bool,
    /// Whether its fate is settled: remote leases and own leases admitted while the view
    /// was down (per-node limits) are never reclaimed.
    decided: bool,
}

/// What admission learns from the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// Under the cap: the leases of the key counted, this one included.
    Allowed(usize),
    /// At the cap: the leases counted without this one.
    Refused(usize),
    /// The view is not complete (NATS down, or still reading the stream).
    Unknown,
}

impl Held {
    /// Whether the lease still counts at `now` for node `mine` (both as [`View::now`]):
    /// not doomed, and refreshed within `ttl` unless it is `mine`'s own.
    fn counts(&self, mine: &Node, now: u64, ttl: Duration) -> bool {
        !self.doomed && (Arc::ptr_eq(&self.node, mine) || fresh(self.seen, now, ttl))
    }
}

/// The leases and attempts of the cluster, as far as this node has read them.
pub(super) struct View {
    node: Node,
    /// What [`Held::seen`] counts from.
    epoch: Instant,
    lease_ttl: Duration,
    /// Cap by lease family (`herald.limits.session.alias`, ...); families without one
    /// (presence) are only counted.
    caps: HashMap<String, usize>,
    /// Attempts kept per address: one past the per-minute cap is all a verdict needs.
    rate_keep: usize,
    /// The lease stream has been read up to its end since the feed (re)started.
    pub(super) sessions_live: bool,
    /// The same for the attempts stream.
    pub(super) rate_live: bool,
    /// `<family>.<key>` → its live leases across the cluster.
    keys: HashMap<Box<str>, Vec<Held>>,
    /// Own capped leases' reclaim signals, by lease id.
    reclaim: HashMap<u64, oneshot::Sender<()>>,
    /// Other nodes' recent attempts, by address token.
    rate: Attempts,
    /// The same for this node's own attempts, kept apart so a feed restart (which reads
    /// the others' again) does not lose them.
    own_rate: Attempts,
    /// Other nodes' names, shared by their leases.
    nodes: HashMap<Box<str>, Node>,
}

impl View {
    /// An empty view for `node`; `caps` by lease family, `per_minute` the address rate.
    pub(super) fn new(
        node: &str,
        lease_ttl: Duration,
        caps: HashMap<String, usize>,
        per_minute: u32,
    ) -> View {
        View {
            node: Arc::new(Box::from(node)),
            epoch: Instant::now(),
            lease_ttl,
            caps,
            rate_keep: usize::try_from(per_minute)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
            sessions_live: false,
            rate_live: false,
            keys: HashMap::new(),
            reclaim: HashMap::new(),
            rate: HashMap::new(),
            own_rate: HashMap::new(),
            nodes: HashMap::new(),
        }
    }

    fn node(&mut self, name: &str) -> Node {
        if name == &**self.node {
            return Arc::clone(&self.node);
        }
        if let Some(node) = self.nodes.get(name) {
            return Arc::clone(node);
        }
        let node: Node = Arc::new(Box::from(name));
        self.nodes.insert(Box::from(name), Arc::clone(&node));
        node
    }

    /// Now, as [`Held::seen`] counts.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes a place for own lease `lease` under `family_key` (cap `max`), from the view
    /// alone. A lease not refused is recorded (pending until the stream stores it), with
    /// `reclaim` fired if reconciliation dooms it. When the view is unknown the lease is
    /// admitted by per-node limits: reclaimable if `loading` (NATS is up and the view is
    /// being read: the stream will rank it after what the view reads first), never
    /// reclaimed otherwise (NATS down).
    pub(super) fn admit(
        &mut self,
        family_key: &str,
        lease: u64,
        max: usize,
        reclaim: Option<oneshot::Sender<()>>,
        loading: bool,
    ) -> Admission {
        let now = self.now();
        let live = self.sessions_live;
        let counted = self.keys.get(family_key).map_or(0, |leases| {
            leases
                .iter()
                .filter(|h| h.counts(&self.node, now, self.lease_ttl))
                .count()
        });
        if live && counted >= max {
            return Admission::Refused(counted);
        }
        let node = Arc::clone(&self.node);
        self.keys
            .entry(Box::from(family_key))
            .or_default()
            .push(Held {
                node,
                lease,
                rank: PENDING,
                seen: now,
                doomed: false,
                decided: !live && !loading,
            });
        if live || loading {
            if let Some(reclaim) = reclaim {
                self.reclaim.insert(lease, reclaim);
            }
        }
        if live {
            Admission::Allowed(counted + 1)
        } else {
            Admission::Unknown
        }
    }

    /// Forgets own lease `lease` of `family_key` (its session ended).
    pub(super) fn release(&mut self, family_key: &str, lease: u64) {
        self.reclaim.remove(&lease);
        let node = Arc::clone(&self.node);
        self.remove(family_key, &node, lease);
    }

    fn remove(&mut self, family_key: &str, node: &str, lease: u64) {
        if let Some(leases) = self.keys.get_mut(family_key) {
            leases.retain(|h| !(h.lease == lease && &**h.node == node));
            if leases.is_empty() {
                self.keys.remove(family_key);
            }
        }
    }

    /// A lease message read from the stream at `seq` (`released`: its release marker).
    /// Returns whether it doomed one of this node's own leases (whose session is told).
    pub(super) fn feed_lease(&mut self, subject: &str, seq: u64, released: bool) -> bool {
        let Some((family_key, node, lease)) = parse_lease(subject) else {
            return false;
        };
        if released {
            if node == &**self.node {
                self.reclaim.remove(&lease);
            }
            self.remove(family_key, node, lease);
            return false;
        }
        let now = self.now();
        let own = node == &**self.node;
        let cap = family_key
            .rsplit_once('.')
            .and_then(|(family, _)| self.caps.get(family))
            .copied();
        let node = self.node(node);
        let leases = self.keys.entry(Box::from(family_key)).or_default();
        let at = match leases
            .iter()
            .position(|h| h.lease == lease && Arc::ptr_eq(&h.node, &node))
        {
            Some(at) => {
                let held = &mut leases[at];
                held.seen = now;
                if held.rank != PENDING {
                    return false; // a refresh
                }
                held.rank = seq;
                if held.decided {
                    return false;
                }
                held.decided = true;
                at
            }
            None if own => return false, // released meanwhile: its marker follows
            None => {
                leases.push(Held {
                    node,
                    lease,
                    rank: seq,
                    seen: now,
                    doomed: false,
                    decided: true,
                });
                leases.len() - 1
            }
        };
        let Some(cap) = cap else { return false };
        let earlier = leases
            .iter()
            .filter(|h| h.rank < seq && h.counts(&self.node, now, self.lease_ttl))
            .count();
        if earlier < cap {
            return false;
        }
        leases[at].doomed = true;
        if own {
            if let Some(reclaim) = self.reclaim.remove(&lease) {
                let _ = reclaim.send(());
            }
            return true;
        }
        false
    }

    /// `count` attempts from `address` read from the stream, made on `node` `age` ago.
    pub(super) fn feed_attempt(&mut self, address: &str, node: &str, age: Duration, count: u32) {
        if node == &**self.node || age >= RATE_WINDOW {
            return; // counted when it was made, or out of the window
        }
        let now = Instant::now();
        let at = now.checked_sub(age).unwrap_or(now);
        // Past `rate_keep` the oldest go anyway: a batch adds at most that many.
        let count = usize::try_from(count)
            .unwrap_or(usize::MAX)
            .min(self.rate_keep);
        for _ in 0..count {
            stamp(&mut self.rate, self.rate_keep, address, at);
        }
    }

    /// Counts an attempt from `address` made on this node: refused past `per_minute`
    /// within the window across the cluster.
    /// The attempt is remembered even when the verdict is unknown (the view still
    /// being read), so it counts once the view is complete.
    pub(super) fn attempt(&mut self, address: &str, per_minute: u32) -> Verdict {
        let now = Instant::now();
        let recent = |attempts: &Attempts| {
            attempts.get(address).map_or(0, |stamps| {
                stamps
                    .iter()
                    .filter(|at| now.duration_since(**at) < RATE_WINDOW)
                    .count()
            })
        };
        let recent = recent(&self.rate) + recent(&self.own_rate);
        if !stamp(&mut self.own_rate, self.rate_keep, address, now) || !self.rate_live {
            return Verdict::Unknown;
        }
        if recent + 1 > usize::try_from(per_minute).unwrap_or(usize::MAX) {
            Verdict::Refused
        } else {
            Verdict::Allowed
        }
    }

    /// Drops expired remote leases and attempts, and the keys and addresses left empty.
    pub(super) fn sweep(&mut self) {
        let now = Instant::now();
        let (at, ttl, mine) = (self.now(), self.lease_ttl, Arc::clone(&self.node));
        self.keys.retain(|_, leases| {
            leases.retain(|h| Arc::ptr_eq(&h.node, &mine) || fresh(h.seen, at, ttl));
            !leases.is_empty()
        });
        for attempts in [&mut self.rate, &mut self.own_rate] {
            attempts.retain(|_, stamps| {
                while stamps
                    .front()
                    .is_some_and(|at| now.duration_since(*at) >= RATE_WINDOW)
                {
                    stamps.pop_front();
                }
                !stamps.is_empty()
            });
            if attempts.capacity() > 4 * attempts.len() + 1024 {
                attempts.shrink_to_fit();
            }
        }
        if self.keys.capacity() > 4 * self.keys.len() + 1024 {
            self.keys.shrink_to_fit();
        }
        // A node name only the map still holds belongs to no live lease.
        self.nodes.retain(|_, n| Arc::strong_count(n) > 1);
    }

    /// The feed stopped (NATS gone, or its stream recreated): forget what other nodes
    /// hold until the stream is read again; own leases stay, to be ranked afresh.
    pub(super) fn reset(&mut self) {
        self.sessions_live = false;
        self.rate_live = false;
        let mine = Arc::clone(&self.node);
        self.keys.retain(|_, leases| {
            leases.retain(|h| Arc::ptr_eq(&h.node, &mine) && !h.doomed);
            for held in leases.iter_mut() {
                held.rank = PENDING;
            }
            !leases.is_empty()
        });
        self.rate.clear(); // read again from the stream; own attempts stay
    }

    /// Leases of other nodes the view holds, expired or doomed ones included until the
    /// sweep drops them.
    pub(super) fn remote_leases(&self) -> usize {
        self.keys
            .values()
            .flatten()
            .filter(|h| !Arc::ptr_eq(&h.node, &self.node))
            .count()
    }
}

/// Whether a lease last seen at `seen` is still live at `now` (both [`View::now`]).
fn fresh(seen: u64, now: u64, ttl: Duration) -> bool {
    Duration::from_millis(now.saturating_sub(seen)) <= ttl
}

/// Address token → when its recent attempts were made (oldest first, at most `keep`).
type Attempts = HashMap<Box<str>, VecDeque<Instant>>;

/// Records an attempt from `address` at `at`, keeping the newest `keep`; `false` when the
/// address is new and [`MAX_ADDRESSES`] are already tracked.
fn stamp(attempts: &mut Attempts, keep: usize, address: &str, at: Instant) -> bool {
    let full = attempts.len() >= MAX_ADDRESSES;
    let stamps = match attempts.get_mut(address) {
        Some(stamps) => stamps,
        None if full => return false,
        None => attempts.entry(Box::from(address)).or_default(),
    };
    stamps.push_back(at);
    while stamps.len() > keep {
        stamps.pop_front();
    }
    true
}

/// `<family>.<key>.<node>.<lease>` → (`<family>.<key>`, node, lease id).
pub(super) fn parse_lease(subject: &str) -> Option<(&str, &str, u64)> {
    let (rest, lease) = subject.rsplit_once('.')?;
    let (family_key, node) = rest.rsplit_once('.')?;
    Some((family_key, node, lease.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIAS: &str = "herald.limits.session.alias";

    #[test]
    fn a_lease_fits_in_40_bytes() {
        // The view holds one per session of the cluster (docs/performance.md).
        assert!(std::mem::size_of::<Held>() <= 40);
    }

    fn view(node: &str, cap: usize) -> View {
        let caps = HashMap::from([(ALIAS.to_owned(), cap)]);
        let mut view = View::new(node, Duration::from_secs(30), caps, 3);
        view.sessions_live = true;
        view.rate_live = true;
        view
    }

    #[test]
    fn racers_beyond_the_cap_are_doomed_in_stream_order_on_every_node() {
        // Two nodes admit two sessions each for a cap of 2, before seeing each other.
        let (mut a, mut b) = (view("a", 2), view("b", 2));
        let key = format!("{ALIAS}.demo");
        let (a_tx, mut a_rx) = oneshot::channel();
        let (b_tx, mut b_rx) = oneshot::channel();
        assert_eq!(a.admit(&key, 1, 2, None, false), Admission::Allowed(1));
        assert_eq!(
            a.admit(&key, 2, 2, Some(a_tx), false),
            Admission::Allowed(2)
        );
        assert_eq!(b.admit(&key, 1, 2, None, false), Admission::Allowed(1));
        assert_eq!(
            b.admit(&key, 2, 2, Some(b_tx), false),
            Admission::Allowed(2)
        );
        assert_eq!(a.admit(&key, 3, 2, None, false), Admission::Refused(2));
        // The stream stored a1, b1, b2, a2.
        let order = [("a", 1, 1), ("b", 1, 2), ("b", 2, 3), ("a", 2, 4)];
        let mut doomed = Vec::new();
        for v in [&mut a, &mut b] {
            for (node, lease, seq) in order {
                if v.feed_lease(&format!("{key}.{node}.{lease}"), seq, false) {
                    doomed.push((v.node.to_string(), lease));
                }
            }
        }
        assert_eq!(doomed, [("a".to_owned(), 2), ("b".to_owned(), 2)]);
        assert_eq!(
            (a_rx.try_recv(), b_rx.try_recv()),
            (Ok(Some(())), Ok(Some(())))
        );
        // Both count the two survivors only, and refuse a third.
        assert_eq!(a.admit(&key, 5, 2, None, false), Admission::Refused(2));
        assert_eq!(b.admit(&key, 5, 2, None, false), Admission::Refused(2));
    }

    #[test]
    fn a_released_lease_frees_its_place_and_refreshes_change_nothing() {
        let mut a = view("a", 1);
        let key = format!("{ALIAS}.demo");
        assert!(!a.feed_lease(&format!("{key}.b.7"), 1, false));
        assert_eq!(a.admit(&key, 1, 1, None, false), Admission::Refused(1));
        assert!(!a.feed_lease(&format!("{key}.b.7"), 5, false));
        assert_eq!(a.remote_leases(), 1);
        assert!(!a.feed_lease(&format!("{key}.b.7"), 6, true));
        assert_eq!(a.remote_leases(), 0);
        assert_eq!(a.admit(&key, 1, 1, None, false), Admission::Allowed(1));
    }

    #[test]
    fn leases_admitted_while_nats_is_down_are_never_reclaimed() {
        let mut a = view("a", 1);
        a.reset();
        let key = format!("{ALIAS}.demo");
        let (tx, mut rx) = oneshot::channel();
        assert_eq!(a.admit(&key, 1, 1, Some(tx), false), Admission::Unknown);
        assert_eq!(a.admit(&key, 2, 1, None, false), Admission::Unknown);
        a.sessions_live = true;
        assert!(!a.feed_lease(&format!("{key}.b.1"), 1, false));
        assert!(!a.feed_lease(&format!("{key}.a.1"), 2, false));
        assert_ne!(rx.try_recv(), Ok(Some(())), "never reclaimed");
        // Both count once the view is back: the cap is full.
        assert_eq!(a.admit(&key, 3, 1, None, false), Admission::Refused(3));
    }

    #[test]
    fn leases_admitted_while_the_view_loads_are_reconciled_like_any_other() {
        let mut a = view("a", 1);
        a.reset();
        let key = format!("{ALIAS}.demo");
        let (tx, mut rx) = oneshot::channel();
        assert_eq!(a.admit(&key, 1, 1, Some(tx), true), Admission::Unknown);
        // The stream held b's lease before a's: a's is over the cap.
        assert!(!a.feed_lease(&format!("{key}.b.7"), 1, false));
        a.sessions_live = true;
        assert!(a.feed_lease(&format!("{key}.a.1"), 2, false));
        assert_eq!(rx.try_recv(), Ok(Some(())));
    }

    #[test]
    fn the_address_rate_counts_every_node_and_keeps_a_bounded_tail() {
        let mut a = view("a", 1);
        for _ in 0..10 {
            a.feed_attempt("127-0-0-1", "b", Duration::ZERO, 1);
        }
        assert_eq!(a.rate["127-0-0-1"].len(), 4, "per_minute + 1 kept");
        assert_eq!(a.attempt("127-0-0-1", 3), Verdict::Refused);
        assert_eq!(a.attempt("10-0-0-1", 3), Verdict::Allowed);
        a.feed_attempt("10-0-0-1", "a", Duration::ZERO, 1);
        a.feed_attempt("10-0-0-1", "b", RATE_WINDOW, 1);
        assert_eq!(a.attempt("10-0-0-1", 3), Verdict::Allowed);
        assert_eq!(a.attempt("10-0-0-1", 3), Verdict::Allowed);
        assert_eq!(a.attempt("10-0-0-1", 3), Verdict::Refused);
    }

    #[test]
    fn a_batch_of_attempts_counts_each_and_keeps_the_same_bound() {
        let mut a = view("a", 1);
        a.feed_attempt("10-0-0-2", "b", Duration::ZERO, 2);
        assert_eq!(a.attempt("10-0-0-2", 3), Verdict::Allowed, "2 + this one");
        assert_eq!(a.attempt("10-0-0-2", 3), Verdict::Refused, "2 + 2 earlier");
        a.feed_attempt("10-0-0-3", "b", Duration::ZERO, u32::MAX);
        assert_eq!(a.rate["10-0-0-3"].len(), 4, "per_minute + 1 kept");
    }

    #[test]
    fn own_attempts_outlive_a_feed_restart() {
        let mut a = view("a", 1);
        for _ in 0..3 {
            assert_eq!(a.attempt("10-0-0-1", 3), Verdict::Allowed);
        }
        a.reset();
        a.rate_live = true;
        assert_eq!(a.attempt("10-0-0-1", 3), Verdict::Refused);
    }

    #[test]
    fn lease_subjects_split_into_key_node_and_id() {
        assert_eq!(
            parse_lease("herald.limits.session.alias.demo.node-1.42"),
            Some(("herald.limits.session.alias.demo", "node-1", 42))
        );
        assert_eq!(parse_lease("herald.limits.node.x"), None);
    }
}
