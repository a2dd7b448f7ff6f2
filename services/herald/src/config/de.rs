//! Deserializers that reject a bad value while it is parsed, so the error names its key
//! path (`config error at realtime.max_message_bytes: ...`) and no check is forgotten in a
//! hand-written validation pass. Field types stay plain numbers and durations: the code
//! that reads them does not change with the rule.

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::Error;
use serde::{Deserialize, Deserializer};

use super::Secret;

/// A count of at least `MIN` (`MIN = 1`: "greater than 0").
pub fn at_least<'de, const MIN: u64, T, D>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Copy + TryInto<u64>,
{
    let value = T::deserialize(d)?;
    match value.try_into() {
        Ok(v) if v >= MIN => Ok(value),
        _ if MIN == 1 => Err(D::Error::custom("must be greater than 0")),
        _ => Err(D::Error::custom(format!("must be at least {MIN}"))),
    }
}

/// A count between `MIN` and `MAX`, inclusive.
pub fn between<'de, const MIN: u64, const MAX: u64, T, D>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Copy + TryInto<u64>,
{
    let value = T::deserialize(d)?;
    match value.try_into() {
        Ok(v) if (MIN..=MAX).contains(&v) => Ok(value),
        _ => Err(D::Error::custom(format!("must be between {MIN} and {MAX}"))),
    }
}

/// A humantime duration (`"30s"`) greater than zero.
pub fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value: Duration = humantime_serde::deserialize(d)?;
    if value.is_zero() {
        return Err(D::Error::custom("must be greater than 0 (e.g. \"10s\")"));
    }
    Ok(value)
}

/// A humantime duration of at least `MIN_MS` milliseconds.
pub fn duration_at_least<'de, const MIN_MS: u64, D: Deserializer<'de>>(
    d: D,
) -> Result<Duration, D::Error> {
    let value: Duration = humantime_serde::deserialize(d)?;
    let min = Duration::from_millis(MIN_MS);
    if value < min {
        return Err(D::Error::custom(format!(
            "must be at least {}",
            humantime::format_duration(min)
        )));
    }
    Ok(value)
}

/// A humantime duration above zero and at most `MAX_MS` milliseconds.
pub fn duration_up_to<'de, const MAX_MS: u64, D: Deserializer<'de>>(
    d: D,
) -> Result<Duration, D::Error> {
    let value: Duration = humantime_serde::deserialize(d)?;
    let max = Duration::from_millis(MAX_MS);
    if value.is_zero() || value > max {
        return Err(D::Error::custom(format!(
            "must be more than 0 and at most {}",
            humantime::format_duration(max)
        )));
    }
    Ok(value)
}

/// A humantime duration of at most `MAX_MS` milliseconds (zero allowed).
pub fn duration_at_most<'de, const MAX_MS: u64, D: Deserializer<'de>>(
    d: D,
) -> Result<Duration, D::Error> {
    let value: Duration = humantime_serde::deserialize(d)?;
    let max = Duration::from_millis(MAX_MS);
    if value > max {
        return Err(D::Error::custom(format!(
            "must be at most {}",
            humantime::format_duration(max)
        )));
    }
    Ok(value)
}

/// A listen address; `""` (the documented "none") is `None`.
pub fn optional_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        D::Error::custom(format!(
            "{text:?} is not an address like 0.0.0.0:9090 (or leave it empty)"
        ))
    })
}

/// A listen address, with an example in the error.
pub fn address<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse()
        .map_err(|_| D::Error::custom(format!("{text:?} is not an address like 127.0.0.1:8080")))
}

/// An id used in subjects: `[A-Za-z0-9_-]{1,128}`.
pub fn identifier<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let id = String::deserialize(d)?;
    check_identifier(&id).map_err(D::Error::custom)?;
    Ok(id)
}

/// A list of ids used in subjects.
pub fn identifiers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let ids = Vec::<String>::deserialize(d)?;
    for id in &ids {
        check_identifier(id).map_err(D::Error::custom)?;
    }
    Ok(ids)
}

fn check_identifier(id: &str) -> Result<(), String> {
    herald_protocol::subject::validate_identifier(id)
        .map_err(|_| format!("id {id:?} must match [A-Za-z0-9_-]{{1,128}}"))
}

/// A secret that must not be empty (an empty token would accept anyone).
pub fn non_empty_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    let secret = Secret::deserialize(d)?;
    if secret.is_empty() {
        return Err(D::Error::custom(
            "is empty: an empty token would accept anyone; remove it",
        ));
    }
    Ok(secret)
}

/// Secrets none of which may be empty.
pub fn non_empty_secrets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    let secrets = Vec::<Secret>::deserialize(d)?;
    if secrets.iter().any(Secret::is_empty) {
        return Err(D::Error::custom(
            "an empty token would accept anyone: remove it",
        ));
    }
    Ok(secrets)
}

/// An argon2 PHC string, as `herald hash-password` prints.
pub fn argon2_hash<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    let hash = Secret::deserialize(d)?;
    if argon2::PasswordHash::new(hash.expose()).is_err() {
        return Err(D::Error::custom(
            "is not an argon2 PHC string (make one with `herald hash-password`)",
        ));
    }
    Ok(hash)
}

/// A name without dots, spaces, wildcards or slashes (a JetStream stream name).
pub fn stream_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    if name.is_empty() || name.contains(['.', ' ', '*', '>', '/', '\\']) {
        return Err(D::Error::custom(format!(
            "{name:?} must be non-empty without spaces, dots, wildcards or slashes"
        )));
    }
    Ok(name)
}

/// A log level or `EnvFilter` directive.
pub fn log_level<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let level = String::deserialize(d)?;
    herald_telemetry::validate_level(&level).map_err(D::Error::custom)?;
    Ok(level)
}
