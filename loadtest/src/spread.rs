//! How sessions are spread over aliases and loopback source addresses.
//!
//! Session `i` authenticates as alias `i % aliases` and binds its socket to source
//! address `i % sources`, so every alias gets the same number of sessions and no source
//! address runs out of ephemeral ports (28,232 per source/destination pair here).

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{bail, Context};

/// Sessions per source address when the sources are chosen automatically. A source
/// address has 28,232 ephemeral ports (32768–60999), but binding gets slower as they fill
/// (the kernel searches for a free port on every `bind`): 10,000 sessions on one source
/// connect at ~700/s here, spread 1,000 per source at ~3,500/s.
pub const SESSIONS_PER_SOURCE: usize = 1_000;
/// The first automatic source address is `127.0.0.FIRST_SOURCE_OCTET`.
const FIRST_SOURCE_OCTET: u8 = 2;
/// Automatic sources end at `127.0.0.255`.
const MAX_AUTO_SOURCES: usize = 254;
/// Digits of generated alias ids at least (`a0000`).
const MIN_ALIAS_DIGITS: usize = 4;

/// Alias ids `{prefix}0000`, `{prefix}0001`, … (`count` of them, zero-padded to at least
/// four digits), the ids [`crate::nodeconfig`] writes into the node's config.
pub fn alias_ids(prefix: &str, count: usize) -> Vec<String> {
    let digits = count
        .saturating_sub(1)
        .to_string()
        .len()
        .max(MIN_ALIAS_DIGITS);
    (0..count)
        .map(|i| format!("{prefix}{i:0digits$}"))
        .collect()
}

/// `127.0.0.2`, `127.0.0.3`, … enough for `sessions` at [`SESSIONS_PER_SOURCE`] each
/// (at most 254 addresses, up to `127.0.0.255`).
pub fn auto_sources(sessions: usize) -> Vec<IpAddr> {
    let count = sessions
        .div_ceil(SESSIONS_PER_SOURCE)
        .clamp(1, MAX_AUTO_SOURCES);
    (FIRST_SOURCE_OCTET..=u8::MAX)
        .take(count)
        .map(|octet| IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)))
        .collect()
}

/// Parses `127.0.0.2,127.0.0.3`; every address must be loopback (traffic stays local).
pub fn parse_sources(list: &str) -> anyhow::Result<Vec<IpAddr>> {
    let sources = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let ip: IpAddr = s
                .parse()
                .with_context(|| format!("source address {s:?} is not an IP address"))?;
            if !ip.is_loopback() {
                bail!("source address {ip} is not loopback: the load generator only uses 127.0.0.0/8 and ::1");
            }
            Ok(ip)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if sources.is_empty() {
        bail!("--sources is empty: give at least one loopback address");
    }
    Ok(sources)
}

/// The alias and source address of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Index of the session in the run.
    pub session: usize,
    /// Index into the alias list.
    pub alias: usize,
    /// Index into the source address list.
    pub source: usize,
    /// Index into the server list (nodes of one cluster).
    pub target: usize,
}

/// Where session `session` goes, round-robin over `aliases` and `sources`; the sessions
/// of one alias alternate over the `targets` (session `i` is the `i / aliases`-th of its
/// alias), so with several nodes every alias has sessions on each of them.
pub fn place(session: usize, aliases: usize, sources: usize, targets: usize) -> Placement {
    let aliases = aliases.max(1);
    Placement {
        session,
        alias: session % aliases,
        source: session % sources.max(1),
        target: (session / aliases) % targets.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_ids_are_zero_padded_and_match_the_node_config() {
        assert_eq!(alias_ids("a", 3), ["a0000", "a0001", "a0002"]);
        assert_eq!(alias_ids("a", 1000).last().unwrap(), "a0999");
        assert_eq!(alias_ids("a", 20_001).last().unwrap(), "a20000");
    }

    #[test]
    fn auto_sources_cover_the_sessions_with_loopback_addresses() {
        assert_eq!(auto_sources(1).len(), 1);
        let sources = auto_sources(5_000);
        assert_eq!(sources.len(), 5);
        assert_eq!(sources[0], IpAddr::from([127, 0, 0, 2]));
        assert!(sources.iter().all(IpAddr::is_loopback));
        assert_eq!(auto_sources(usize::MAX).len(), 254);
    }

    #[test]
    fn non_loopback_sources_are_refused() {
        assert!(parse_sources("127.0.0.2, 127.0.0.3").is_ok());
        assert!(parse_sources("10.0.0.1").is_err());
        assert!(parse_sources("").is_err());
    }
}
