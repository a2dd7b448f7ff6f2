//! The directory finds or starts the registry of a routing key. It is sharded: each shard
//! is an actor on its own arbiter (thread) owning a slice of the keys, and it counts each
//! key's members itself, so "last member left → stop the registry" cannot race a join.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use actix::prelude::*;

use crate::bus::Bus;
use crate::registry::{
    CloseAll, Join, Leave, Registry, RegistrySettings, Retire, RoutingKey, SessionId,
};

/// Registry mailbox size: large enough that a shard's `send` never parks (see Join).
const REGISTRY_MAILBOX: usize = 1 << 30;

/// Handle to every shard; cheap to clone into sessions.
#[derive(Clone)]
pub struct Directory {
    shards: Arc<[Addr<DirectoryShard>]>,
    hasher: RandomState,
}

impl Directory {
    /// Starts `shards` shards, each on a new arbiter.
    pub fn start(shards: usize, bus: Bus, settings: Arc<RegistrySettings>) -> Directory {
        let shards: Vec<_> = (0..shards.max(1))
            .map(|_| {
                let arbiter = Arbiter::new();
                let bus = bus.clone();
                let settings = Arc::clone(&settings);
                DirectoryShard::start_in_arbiter(&arbiter.handle(), move |_| DirectoryShard {
                    registries: HashMap::new(),
                    bus,
                    settings,
                })
            })
            .collect();
        Directory {
            shards: shards.into(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &RoutingKey) -> &Addr<DirectoryShard> {
        let index = self.hasher.hash_one(key) as usize % self.shards.len();
        &self.shards[index]
    }

    /// Joins a registry; resolves once the registry's subscription is in place.
    pub async fn join(&self, join: Join) {
        let _ = self.shard(&join.key).send(join).await;
    }

    /// Closes every session of `key` on this node (no-op if none).
    pub fn close_all(&self, close: CloseAll) {
        self.shard(&close.key).do_send(close);
    }

    /// Leaves a registry (fire and forget: used from `stopped()`).
    pub fn leave(&self, key: RoutingKey, id: SessionId) {
        self.shard(&key).do_send(Leave { key, id });
    }
}

/// One shard of the directory.
pub struct DirectoryShard {
    /// Live registries of this shard's keys and their member counts.
    registries: HashMap<RoutingKey, (Addr<Registry>, usize)>,
    bus: Bus,
    settings: Arc<RegistrySettings>,
}

impl Actor for DirectoryShard {
    type Context = Context<Self>;
}

impl Handler<Join> for DirectoryShard {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, join: Join, _: &mut Self::Context) -> Self::Result {
        let (registry, members) = self.registries.entry(join.key.clone()).or_insert_with(|| {
            let registry = Registry::new(
                join.key.clone(),
                self.bus.clone(),
                Arc::clone(&self.settings),
            );
            let addr = Registry::create(|ctx| {
                // `send` must enqueue at once (never park on a full mailbox) so a later
                // Leave from this shard cannot overtake this Join.
                ctx.set_mailbox_capacity(REGISTRY_MAILBOX);
                registry
            });
            (addr, 0)
        });
        *members += 1;
        let joined = registry.send(join);
        Box::pin(async move {
            let _ = joined.await;
        })
    }
}

impl Handler<Leave> for DirectoryShard {
    type Result = ();

    fn handle(&mut self, leave: Leave, _: &mut Self::Context) {
        let Some((registry, members)) = self.registries.get_mut(&leave.key) else {
            return;
        };
        *members -= 1;
        let registry = registry.clone();
        let last = *members == 0;
        if last {
            self.registries.remove(&leave.key);
        }
        registry.do_send(leave);
        if last {
            // Same sender, so the registry sees Leave before Retire.
            registry.do_send(Retire);
        }
    }
}

impl Handler<CloseAll> for DirectoryShard {
    type Result = ();

    fn handle(&mut self, close: CloseAll, _: &mut Self::Context) {
        if let Some((registry, _)) = self.registries.get(&close.key) {
            registry.do_send(close);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bus::MemoryBus;
    use crate::registry::tests::support::{member, new_message, next_uid, settings, uids};
    use crate::registry::Member;

    const PATTERN: &str = "herald.v1.alias.a1.*";

    fn alias_a1() -> RoutingKey {
        RoutingKey::Alias("a1".into())
    }

    fn join(member: Member) -> Join {
        Join {
            key: alias_a1(),
            member,
            since: None,
            announces_resync: false,
        }
    }

    async fn until_subscribers(bus: &MemoryBus, count: usize) {
        for _ in 0..500 {
            if bus.subscribers(PATTERN) == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "expected {count} subscriptions, found {}",
            bus.subscribers(PATTERN)
        );
    }

    #[actix::test]
    async fn members_of_a_key_share_one_registry_until_the_last_leaves() {
        let bus = MemoryBus::new(100, Duration::from_secs(60), Duration::ZERO);
        let directory = Directory::start(2, Bus::Memory(bus.clone()), settings(1 << 20));
        let (first, _first_rx, _) = member(1, 1 << 20);
        let (second, second_rx, _) = member(2, 1 << 20);
        directory.join(join(first)).await;
        directory.join(join(second)).await;
        assert_eq!(bus.subscribers(PATTERN), 1, "one subscription per key");
        directory.leave(alias_a1(), 1);
        bus.publish(new_message(1, 0));
        assert_eq!(
            uids(&second_rx).await,
            [1],
            "the remaining member still gets events"
        );
        assert_eq!(bus.subscribers(PATTERN), 1);
        directory.leave(alias_a1(), 2);
        until_subscribers(&bus, 0).await;
    }

    #[actix::test]
    async fn a_join_racing_the_last_leave_gets_a_live_registry() {
        let bus = MemoryBus::new(1_000, Duration::from_secs(60), Duration::ZERO);
        let directory = Directory::start(2, Bus::Memory(bus.clone()), settings(1 << 20));
        for round in 0..50u64 {
            let (leaving, _leaving_rx, _) = member(2 * round, 1 << 20);
            let (joining, joining_rx, _) = member(2 * round + 1, 1 << 20);
            directory.join(join(leaving)).await;
            // The Leave retires the registry; the Join right behind it must not land in
            // the retiring one.
            directory.leave(alias_a1(), 2 * round);
            let joined = directory.join(join(joining));
            joined.await;
            bus.publish(new_message(round, 0));
            let uid = next_uid(&joining_rx, Duration::from_secs(5)).await;
            assert_eq!(uid, Some(round), "round {round}");
            directory.leave(alias_a1(), 2 * round + 1);
        }
        until_subscribers(&bus, 0).await;
    }

    #[actix::test]
    async fn leaving_a_key_never_joined_or_twice_is_harmless() {
        let bus = MemoryBus::new(100, Duration::from_secs(60), Duration::ZERO);
        let directory = Directory::start(1, Bus::Memory(bus.clone()), settings(1 << 20));
        directory.leave(alias_a1(), 7);
        let (first, first_rx, _) = member(1, 1 << 20);
        directory.join(join(first)).await;
        directory.leave(RoutingKey::Alias("other".into()), 1);
        bus.publish(new_message(1, 0));
        assert_eq!(uids(&first_rx).await, [1]);
        directory.leave(alias_a1(), 1);
        until_subscribers(&bus, 0).await;
        directory.leave(alias_a1(), 1);
        let (again, again_rx, _) = member(2, 1 << 20);
        directory.join(join(again)).await;
        bus.publish(new_message(2, 0));
        assert_eq!(uids(&again_rx).await, [2]);
    }
}
