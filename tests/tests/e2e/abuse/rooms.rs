//! Abuse of the rooms dialect (see the module doc of `abuse`).
