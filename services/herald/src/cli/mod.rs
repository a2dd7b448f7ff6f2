//! Operator commands other than `serve`.

pub mod publish;
pub mod tail;
