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
