//! Abuse of the bus layer (see the module doc of `abuse`).
