//! Configuration as operators meet it (SPEC §2): env overrides, bad configs failing at
//! start with the key path, `config check` redacting secrets.

use std::process::Output;

use herald_tests::fixtures::{DEMO, PUBLISH_TOKEN};
use herald_tests::node::herald_binary;
use herald_tests::{Connect, Node, NodeConfig, PROMPT};

/// Runs `herald args...` to completion (killed after [`PROMPT`]).
async fn herald(args: &[&str], config: &NodeConfig) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, config.to_toml()).expect("write config");
    let mut command = tokio::process::Command::new(herald_binary());
    command
        .args(args)
        .arg("--config")
        .arg(&path)
        .env_remove("HERALD_CONFIG")
        .env_remove("RUST_BACKTRACE")
        .kill_on_drop(true);
    tokio::time::timeout(PROMPT, command.output())
        .await
        .unwrap_or_else(|_| panic!("`herald {args:?}` did not finish within {PROMPT:?}"))
        .expect("cannot run herald")
}

#[tokio::test]
async fn environment_variables_override_the_config_file() {
    let node = Node::start(
        NodeConfig::memory()
            .max_sessions_per_alias(10)
            .env("HERALD__LIMITS__MAX_SESSIONS_PER_ALIAS", "1"),
    )
    .await;
    let _first = Connect::v1(&node).alias(&DEMO).connect().await;
    let refusal = Connect::v1(&node).alias(&DEMO).refused().await;
    assert_eq!(refusal.status, 429, "the env cap of 1 applies: {refusal:?}");
}

#[tokio::test]
async fn bad_config_fails_at_start_naming_the_key() {
    let config = NodeConfig::memory().set("limits.max_sessions_per_alias", "lots");
    for args in [&["serve"][..], &["config", "check"][..]] {
        let output = herald(args, &config).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "`herald {args:?}`: {stderr}");
        assert!(
            stderr.contains("limits.max_sessions_per_alias"),
            "`herald {args:?}` must name the key: {stderr}"
        );
    }
}

#[tokio::test]
async fn config_check_prints_the_effective_config_without_secrets() {
    let config = NodeConfig::memory().max_sessions_per_alias(7);
    let output = herald(&["config", "check"], &config).await;
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let effective: toml::Table = stdout.parse().expect("config check prints TOML");
    assert_eq!(
        effective["limits"]["max_sessions_per_alias"].as_integer(),
        Some(7)
    );
    for secret in [
        PUBLISH_TOKEN,
        "herald-demo-token",
        "herald-dev-jwt-secret",
        "$argon2id$",
    ] {
        assert!(!stdout.contains(secret), "config check leaked {secret:?}");
    }
}

#[tokio::test]
async fn the_deprecated_auth_backend_timeout_key_still_applies_with_a_warning() {
    let config = NodeConfig::memory().set("forwardemail.auth_backend_timeout", "3s");
    let output = herald(&["config", "check"], &config).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr
            .contains("forwardemail.auth_backend_timeout is deprecated: set auth.backend_timeout"),
        "{stderr}"
    );
    let effective: toml::Table = String::from_utf8_lossy(&output.stdout)
        .parse()
        .expect("config check prints TOML");
    assert_eq!(effective["auth"]["backend_timeout"].as_str(), Some("3s"));
    assert!(effective["forwardemail"]
        .get("auth_backend_timeout")
        .is_none());
}
