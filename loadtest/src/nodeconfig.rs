//! A herald node config for load tests: one API token covering many aliases (no password
//! aliases: argon2 would make the connect rate a measure of password hashing), limits
//! high enough that only the machine limits a run, and warn-level logs.

use std::fmt::Write;

use crate::spread::alias_ids;

/// Session and rate limits written into the config: above anything one run can open.
pub const HIGH_LIMIT: u64 = 1_000_000;

/// What goes into the config.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// `server.listen`, e.g. `127.0.0.1:0`.
    pub listen: String,
    /// `bus.nats.urls`; empty = the in-process bus.
    pub nats_url: Option<String>,
    /// API token for the sessions.
    pub token: String,
    /// Alias id prefix (`a` → `a0000`…).
    pub alias_prefix: String,
    /// Aliases the token covers.
    pub aliases: usize,
    /// `log.level`.
    pub log_level: String,
}

/// A TOML string literal (JSON string escapes are valid TOML basic-string escapes).
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings always serialize")
}

impl NodeConfig {
    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut toml = String::new();
        let _ = writeln!(
            toml,
            "# herald config for herald-loadtest (generated; no demo aliases)."
        );
        let _ = writeln!(toml, "[server]\nlisten = {}\n", quote(&self.listen));
        match &self.nats_url {
            Some(url) => {
                let _ = writeln!(
                    toml,
                    "[bus]\nkind = \"nats\"\n\n[bus.nats]\nurls = [{}]\n",
                    quote(url)
                );
            }
            None => {
                let _ = writeln!(toml, "[bus]\nkind = \"memory\"\n");
            }
        }
        let ids = alias_ids(&self.alias_prefix, self.aliases)
            .iter()
            .map(|id| quote(id))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            toml,
            "[auth]\npublish_tokens = []\n\n[[auth.static.tokens]]\ntoken = {}\nalias_ids = [{ids}]\n",
            quote(&self.token)
        );
        let _ = writeln!(
            toml,
            "[limits]\nconnections_per_ip_per_minute = {HIGH_LIMIT}\nmax_sessions_per_alias = {HIGH_LIMIT}\n\
             max_sessions_total = {HIGH_LIMIT}\n"
        );
        let _ = writeln!(toml, "[shutdown]\ndrain_seconds = 1\n");
        let _ = writeln!(toml, "[log]\nlevel = {}", quote(&self.log_level));
        toml
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_every_alias_under_one_token() {
        let toml = NodeConfig {
            listen: "127.0.0.1:0".into(),
            nats_url: Some("nats://127.0.0.1:4222".into()),
            token: "herald-demo-token".into(),
            alias_prefix: "a".into(),
            aliases: 1000,
            log_level: "warn".into(),
        }
        .to_toml();
        assert!(toml.contains("\"a0000\", \"a0001\""));
        assert!(toml.contains("\"a0999\"]"));
        assert!(toml.contains("kind = \"nats\""));
        assert!(toml.contains(&format!("max_sessions_per_alias = {HIGH_LIMIT}")));
    }
}
