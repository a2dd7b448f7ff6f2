//! Abuse: each attack an internet client could make against a node, performed against the
//! real binary, with the bound that holds it (RSS growth in MiB from `/proc/<pid>/status`,
//! or the refusal it gets) and a check that the node is still ready afterwards.

mod auth;
mod bus;
mod rooms;
mod transport;

/// Mebibytes, for stating RSS bounds.
pub const MIB: u64 = 1024 * 1024;
