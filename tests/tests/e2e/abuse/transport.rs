//! Abuse of the transport layer (see the module doc of `abuse`).
