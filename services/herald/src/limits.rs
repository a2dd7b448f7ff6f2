//! Connection limits (SPEC §6): per-address rate, failed-login blocks, and counted slots
//! (per address, per alias, per node) that free themselves when dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use moka::ops::compute::Op;

use crate::config::LimitSettings;

/// The client address every per-IP limit is keyed by: IPv4 as is (IPv4-mapped IPv6
/// included), IPv6 reduced to its /64.
pub fn ip_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The client's address: the socket peer, or with `trust_proxy` the last valid
/// `X-Forwarded-For` entry (an invalid entry falls back to the peer).
pub fn client_ip(
    peer: Option<SocketAddr>,
    forwarded_for: Option<&str>,
    trust_proxy: bool,
) -> IpAddr {
    let peer_ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
    let forwarded = trust_proxy
        .then(|| {
            forwarded_for?
                .rsplit(',')
                .next()?
                .trim()
                .parse::<IpAddr>()
                .ok()
        })
        .flatten();
    ip_bucket(forwarded.unwrap_or(peer_ip))
}

/// Counted slots per key with a ceiling; a [`Slot`] gives its place back when dropped.
pub struct Counter<K: Eq + Hash + Clone> {
    shared: Arc<Shared<K>>,
}

/// What a [`Counter`] shares with its slots.
struct Shared<K> {
    counts: Mutex<HashMap<K, usize>>,
    /// Woken whenever a key's last slot is dropped, so shutdown can wait for the last
    /// session instead of sleeping through the whole drain window.
    emptied: tokio::sync::Notify,
}

impl<K: Eq + Hash + Clone> Default for Counter<K> {
    fn default() -> Self {
        Counter {
            shared: Arc::new(Shared {
                counts: Mutex::default(),
                emptied: tokio::sync::Notify::new(),
            }),
        }
    }
}

impl<K: Eq + Hash + Clone> Counter<K> {
    /// Takes a slot for `key` unless `max` are taken. The slot holds the key the map
    /// already has when there is one: with a shared key (an `Arc`) the sessions of a
    /// key then hold one copy of it between them.
    pub fn try_acquire(&self, key: K, max: usize) -> Option<Slot<K>> {
        let mut counts = self.shared.counts.lock().expect("limits lock");
        let key = match counts.get_key_value(&key) {
            Some((stored, _)) => stored.clone(),
            None => key,
        };
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= max {
            if *count == 0 {
                counts.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(Slot {
            shared: Arc::clone(&self.shared),
            key,
        })
    }

    /// Slots currently taken for `key`.
    pub fn count(&self, key: &K) -> usize {
        self.shared
            .counts
            .lock()
            .expect("limits lock")
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Resolves once no slot is taken for `key` (at once if none is).
    pub async fn until_empty(&self, key: &K) {
        loop {
            // Registered before the check, so a drop between the check and the await
            // still wakes this waiter.
            let emptied = self.shared.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.count(key) == 0 {
                return;
            }
            emptied.await;
        }
    }
}

/// A taken slot; dropping it frees the place.
pub struct Slot<K: Eq + Hash + Clone> {
    shared: Arc<Shared<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Slot<K> {
    /// The key the slot was taken for.
    pub fn key(&self) -> &K {
        &self.key
    }
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = self.shared.counts.lock().expect("limits lock");
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
                self.shared.emptied.notify_waiters();
            }
        }
    }
}

/// Every connection limit of a node.
pub struct Limits {
    /// The configured numbers.
    pub settings: LimitSettings,
    rate: DefaultKeyedRateLimiter<IpAddr>,
    failures: moka::sync::Cache<IpAddr, u32>,
    blocked: moka::sync::Cache<IpAddr, ()>,
    /// Sessions waiting for their auth frame, per address.
    pub pending_auth: Counter<IpAddr>,
    /// Logins being checked, per address.
    pub logins_in_flight: Counter<IpAddr>,
    /// Anonymous sessions, per address.
    pub anonymous: Counter<IpAddr>,
    /// Sessions per alias (keyed by a thin pointer: every session's slot holds one).
    pub per_alias: Counter<Arc<Box<str>>>,
    /// Sessions per (dialect, user) for dialects that cap them (rooms).
    pub per_user: Counter<(&'static str, String)>,
    /// Sessions on this node.
    pub total: Counter<()>,
}

impl Limits {
    /// Limits from validated settings.
    pub fn new(settings: &LimitSettings) -> Arc<Limits> {
        let per_minute = settings.connections_per_ip_per_minute;
        Arc::new(Limits {
            settings: settings.clone(),
            rate: RateLimiter::keyed(Quota::per_minute(per_minute)),
            failures: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(settings.failed_login_block)
                .build(),
            blocked: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(settings.failed_login_block)
                .build(),
            pending_auth: Counter::default(),
            logins_in_flight: Counter::default(),
            anonymous: Counter::default(),
            per_alias: Counter::default(),
            per_user: Counter::default(),
            total: Counter::default(),
        })
    }

    /// Counts one connection attempt; `Err(wait)` when the address is over its rate.
    pub fn check_rate(&self, ip: IpAddr) -> Result<(), Duration> {
        self.rate
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// `Some(remaining block)` while the address is blocked for failed logins.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        self.blocked
            .contains_key(&ip)
            .then_some(self.settings.failed_login_block)
    }

    /// Counts a login from `ip` as failed before it is checked, so concurrent logins can
    /// never check more credentials than `failed_logins_per_ip` allows: `false` (nothing
    /// counted) when every failure the address has left is already taken by a login in
    /// progress. A login that ends otherwise than failed gives its count back with
    /// [`Limits::refund_login`]; a failed one keeps it ([`Limits::record_failure`]).
    pub fn charge_login(&self, ip: IpAddr) -> bool {
        let limit = self.settings.failed_logins_per_ip;
        let mut charged = false;
        self.failures.entry(ip).and_compute_with(|old| {
            let failures = old.as_ref().map_or(0, |e| *e.value());
            if failures >= limit {
                Op::Nop
            } else {
                charged = true;
                Op::Put(failures + 1)
            }
        });
        charged
    }

    /// Gives back what [`Limits::charge_login`] counted: the login succeeded, or was
    /// never decided (backend timeout, node busy).
    pub fn refund_login(&self, ip: IpAddr) {
        self.failures.entry(ip).and_compute_with(|old| match old {
            Some(e) if *e.value() > 1 => Op::Put(e.into_value() - 1),
            Some(_) => Op::Remove,
            None => Op::Nop,
        });
    }

    /// Records a failed login already counted by [`Limits::charge_login`]; the address
    /// is blocked once its failures reach the limit.
    pub fn record_failure(&self, ip: IpAddr) {
        let failures = self.failures.get(&ip).unwrap_or(0);
        if failures >= self.settings.failed_logins_per_ip {
            self.blocked.insert(ip, ());
            self.failures.invalidate(&ip);
            tracing::warn!(%ip, failures, "address blocked after repeated failed logins");
        }
    }

    /// Forgets rate-limiter state of idle addresses (called periodically).
    pub fn housekeeping(&self) {
        self.rate.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    #[test]
    fn ipv6_is_bucketed_by_64_and_mapped_ipv4_counts_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_bucket(a), ip_bucket(b));
        assert_ne!(ip_bucket(a), ip_bucket(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(ip_bucket(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn forwarded_for_is_used_only_behind_a_trusted_proxy_and_only_its_last_valid_entry() {
        let peer = Some("127.0.0.1:5000".parse().unwrap());
        let xff = Some("1.1.1.1, 2.2.2.2");
        assert_eq!(
            client_ip(peer, xff, false),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, xff, true),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(peer, Some("1.1.1.1, junk"), true),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn slots_are_capped_and_freed_on_drop() {
        let counter = Counter::default();
        let a = counter.try_acquire("x", 2).unwrap();
        let _b = counter.try_acquire("x", 2).unwrap();
        assert!(counter.try_acquire("x", 2).is_none());
        drop(a);
        assert_eq!(counter.count(&"x"), 1);
        assert!(counter.try_acquire("x", 2).is_some());
    }

    #[tokio::test]
    async fn until_empty_resolves_when_the_last_slot_is_dropped() {
        let counter = Counter::default();
        counter.until_empty(&()).await;
        let a = counter.try_acquire((), 2).unwrap();
        let b = counter.try_acquire((), 2).unwrap();
        let waiter = tokio::spawn({
            let counter = Counter {
                shared: Arc::clone(&counter.shared),
            };
            async move { counter.until_empty(&()).await }
        });
        drop(a);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "one slot is still taken");
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter wakes when the last slot goes")
            .unwrap();
    }

    #[test]
    fn repeated_failures_block_the_address() {
        let limits = Limits::new(&LimitSettings {
            failed_logins_per_ip: 3,
            ..LimitSettings::default()
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..2 {
            assert!(limits.charge_login(ip));
            limits.record_failure(ip);
        }
        assert!(limits.blocked(ip).is_none());
        assert!(limits.charge_login(ip));
        limits.record_failure(ip);
        assert!(limits.blocked(ip).is_some());
    }

    #[test]
    fn concurrent_logins_cannot_take_more_than_the_failures_left() {
        let limits = Limits::new(&LimitSettings {
            failed_logins_per_ip: 3,
            ..LimitSettings::default()
        });
        let ip: IpAddr = "10.0.0.3".parse().unwrap();
        assert!(limits.charge_login(ip));
        limits.record_failure(ip);
        // Two failures left: two logins may be checked at once, the third waits its turn.
        assert!(limits.charge_login(ip));
        assert!(limits.charge_login(ip));
        assert!(!limits.charge_login(ip));
        assert!(limits.blocked(ip).is_none(), "refused, not blocked");
        // One succeeds: its count comes back and another may try.
        limits.refund_login(ip);
        assert!(limits.charge_login(ip));
        limits.record_failure(ip);
        assert!(limits.blocked(ip).is_some(), "three failures: blocked");
        let other: IpAddr = "10.0.0.4".parse().unwrap();
        assert!(
            limits.charge_login(other),
            "other addresses are not affected"
        );
        limits.refund_login(other);
        limits.refund_login(other);
        assert!(limits.charge_login(other), "a refund never goes below zero");
    }

    #[test]
    fn the_rate_limit_refuses_the_burst_overflow() {
        let limits = Limits::new(&LimitSettings {
            connections_per_ip_per_minute: NonZeroU32::new(2).unwrap(),
            ..LimitSettings::default()
        });
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(limits.check_rate(ip).is_ok());
        assert!(limits.check_rate(ip).is_ok());
        let wait = limits.check_rate(ip).unwrap_err();
        assert!(wait > Duration::from_secs(1));
    }
}
