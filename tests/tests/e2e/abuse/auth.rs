//! Abuse of the auth layer (see the module doc of `abuse`).
