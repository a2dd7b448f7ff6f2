//! herald's wire contract, shared by the node, its CLI, the tests and the load generator.
//!
//! - [`event`]: the catalog of event names (exact wire spelling).
//! - [`subject`]: NATS subject builders, parsers and wildcard matching.
//! - [`topic`]: `/ws` topic patterns ([`TopicPattern`]).
//! - [`envelope`]: the `{aliasId, payload}` body producers publish.
//! - [`notification`]: turning one envelope into the notifications clients receive.
//! - [`codec`]: JSON and MessagePack encodings of frames.
//! - [`msgpackr`]: msgpackr records, the `/v1/ws?msgpackr=true` encoding.

pub mod codec;
pub mod dialect;
pub mod envelope;
pub mod event;
pub mod msgpackr;
pub mod notification;
pub mod subject;
pub mod topic;

pub use codec::{JsCompatible, WireFormat};
pub use dialect::Dialect;
pub use envelope::{Envelope, EnvelopeError};
pub use event::{Event, EventFamily};
pub use subject::{Subject, SubjectError};
pub use topic::TopicPattern;

/// Milliseconds since the Unix epoch: the clock of stored events, notification ids and
/// frame timestamps, kept here so every layer above reads the same one.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
