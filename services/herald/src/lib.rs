//! The herald node: routes bus events to WebSocket sessions.
//!
//! - [`config`]: the typed, validated configuration tree.
//! - [`bus`]: where events come from (in-process or NATS).
//! - [`codec`]: an event decoded once, and the trait dialects encode it by.
//! - [`directory`] and [`registry`]: the actor core that fans events out per routing key.
//! - [`outbox`]: each session's byte-bounded outbound queue.
//! - [`websocket`]: the connection after the upgrade: the socket handed over by HTTP/1,
//!   its writer task, and the client's messages.
//! - [`dialect`]: client protocols (`/v1/ws`, `/jmap/ws`, `/ws`, rooms) over that core.
//! - [`auth`], [`limits`], [`cluster_limits`]: who may connect, and how much.
//! - [`http`]: health, readiness, metrics and publishing.
//! - [`startup`]: building and running a node.

pub mod auth;
pub mod bus;
pub mod cli;
pub mod cluster_limits;
pub mod codec;
pub mod config;
pub mod control;
pub mod dialect;
pub mod directory;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod registry;
pub mod startup;
pub mod state;
pub mod websocket;
