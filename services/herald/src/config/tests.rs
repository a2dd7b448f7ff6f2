//! Unit tests of loading, validation and redaction.

use std::time::Duration;

use super::*;

#[test]
fn embedded_dev_config_is_valid_and_has_the_demo_data() {
    let s = Settings::load(None).unwrap();
    assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(s.bus.kind, BusKind::Memory);
    assert!(s.uses_demo_credentials());
    assert_eq!(s.auth.static_.aliases[0].alias, "demo@herald.local");
    assert_eq!(s.auth.static_.tokens[0].token.expose(), "herald-demo-token");
    assert_eq!(s.auth.jwt.secret.expose(), "herald-dev-jwt-secret");
}

#[test]
fn unsafe_settings_are_warned_about_at_start() {
    let mut s = Settings::default();
    assert!(s.security_warnings().is_empty(), "loopback, no JWT");
    s.server.listen = "0.0.0.0:8080".parse().unwrap();
    let warnings = s.security_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("server.allowed_origins is empty"));
    s.server.allowed_origins = vec!["https://app.example.com".into()];
    assert!(s.security_warnings().is_empty());
    s.server.listen = "[::1]:8080".parse().unwrap();
    s.server.allowed_origins.clear();
    assert!(s.security_warnings().is_empty(), "IPv6 loopback");
    s.server.listen = "[::]:8080".parse().unwrap();
    assert_eq!(s.security_warnings().len(), 1, "every IPv6 address");
    s.server.allowed_origins = vec!["https://app.example.com".into()];

    s.auth.providers = vec![ProviderKind::Static, ProviderKind::Jwt];
    s.auth.jwt.secret = Secret::from("short");
    let warnings = s.security_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("auth.jwt.secret is 5 bytes"),
        "{warnings:?}"
    );
    s.auth.jwt.secret = Secret::from("0123456789abcdef0123456789abcdef");
    assert!(s.security_warnings().is_empty(), "32 bytes is enough");
    s.auth.jwt.secret = Secret::from("short");
    s.auth.jwt.algorithm = JwtAlgorithm::RS256;
    assert!(
        s.security_warnings().is_empty(),
        "no shared secret in RS256"
    );
}

#[test]
fn defaults_are_the_contracts_numbers() {
    // SPEC §3–§6: these are promises to operators, not tuning knobs to drift.
    for s in [Settings::default(), Settings::load(None).unwrap()] {
        let l = &s.limits;
        assert_eq!(l.max_notification_bytes, 1024 * 1024);
        assert_eq!(l.max_buffered_bytes, 1024 * 1024);
        assert_eq!(l.max_client_frame_bytes, 1024);
        assert_eq!(l.connections_per_ip_per_minute.get(), 30);
        assert_eq!(l.max_sessions_per_alias, 10);
        assert_eq!(l.max_sessions_total, 10_000);
        assert_eq!(l.max_pending_auth_per_ip, 5);
        assert_eq!(l.max_logins_in_flight_per_ip, 4);
        assert_eq!(l.max_password_checks, 0);
        assert_eq!(l.max_anonymous_per_ip, 3);
        assert_eq!(l.failed_logins_per_ip, 10);
        assert_eq!(l.failed_login_block, Duration::from_secs(600));
        let fe = &s.forwardemail;
        assert!(!fe.allow_anonymous);
        assert_eq!(fe.ping_interval, Duration::from_secs(30));
        assert_eq!(fe.auth_frame_timeout, Duration::from_secs(5));
        assert_eq!(s.auth.backend_timeout, Duration::from_secs(10));
        assert_eq!(s.bus.retention, Duration::from_secs(24 * 3600));
        assert_eq!(s.bus.dedup_window, Duration::from_secs(120));
        assert_eq!(s.bus.memory.max_bytes, 64 << 20);
        assert_eq!(l.publish_body_timeout, Duration::from_secs(10));
        assert_eq!(s.realtime.dm_queue_users_max, 100_000);
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.auth.callout.subject, "herald.v1.auth.request");
        assert_eq!(s.auth.callout.timeout, Duration::from_secs(10));
        let rooms = &s.rooms;
        assert_eq!(rooms.max_connections_per_user, 5);
        assert_eq!(rooms.max_frame_bytes, 1024 * 1024);
        assert_eq!(rooms.max_rooms_per_connection, 100);
        assert_eq!(rooms.ping_interval, Duration::from_secs(30));
        assert_eq!((rooms.messages_per_second, rooms.burst), (20, 40));
        assert_eq!(s.realtime.max_message_bytes, 64 * 1024);
        assert_eq!(s.limits.lease_ttl, Duration::from_secs(30));
    }
    // Production (any --config file) denies by default; only the demo opens every
    // room, so the rooms document's flow runs with a plain demo JWT.
    assert!(
        !Settings::default().rooms.default_allow,
        "a token without a rooms claim is not an open door"
    );
    assert!(Settings::load(None).unwrap().rooms.default_allow);
    // Likewise the demo takes demo JWTs on every dialect; production starts static-only.
    assert_eq!(Settings::default().auth.providers, [ProviderKind::Static]);
    assert_eq!(
        Settings::load(None).unwrap().auth.providers,
        [ProviderKind::Static, ProviderKind::Jwt]
    );
}

/// Loads the embedded dev config with `toml` on top, as an operator's file would be.
fn load_with(toml: &str) -> Result<Settings, ConfigError> {
    let builder = config::Config::builder()
        .add_source(config::File::from_str(DEV_CONFIG, config::FileFormat::Toml))
        .add_source(config::File::from_str(toml, config::FileFormat::Toml));
    Settings::from_builder(builder)
}

/// The key path a bad `toml` is refused at, with the reason.
fn refusal(toml: &str) -> (String, String) {
    match load_with(toml) {
        Err(ConfigError::Invalid { key, reason }) => (key, reason),
        other => panic!("expected a config error for {toml:?}, got {other:?}"),
    }
}

#[test]
fn bad_values_are_refused_while_parsing_with_their_key_path() {
    for (toml, key, reason) in [
        (
            "[realtime]\ndefault_subscribe = [\"a.>.b\"]",
            "realtime.default_subscribe[0]",
            "is invalid",
        ),
        (
            "[realtime]\nmax_message_bytes = 0",
            "realtime.max_message_bytes",
            "at least 64",
        ),
        (
            "[limits]\nlease_ttl = \"0s\"",
            "limits.lease_ttl",
            "at least 1s",
        ),
        ("[rooms]\nburst = 0", "rooms.burst", "greater than 0"),
        (
            "[limits]\npublish_body_timeout = \"0s\"",
            "limits.publish_body_timeout",
            "greater than 0",
        ),
        (
            "[bus.memory]\nmax_bytes = 1024",
            "bus.memory.max_bytes",
            "at least 1048576",
        ),
        (
            "[realtime]\ndm_queue_users_max = 0",
            "realtime.dm_queue_users_max",
            "greater than 0",
        ),
        (
            "[realtime]\nack_wait = \"11s\"",
            "realtime.ack_wait",
            "at most 10s",
        ),
        (
            "[jmap]\nmax_calls_in_request = 0",
            "jmap.max_calls_in_request",
            "greater than 0",
        ),
        (
            "[jmap]\ncoalesce_window = \"1m\"",
            "jmap.coalesce_window",
            "at most 10s",
        ),
        (
            "[forwardemail]\nping_interval = \"10ms\"",
            "forwardemail.ping_interval",
            "at least 100ms",
        ),
        (
            "[bus.nats]\nstream_replicas = 7",
            "bus.nats.stream_replicas",
            "between 1 and 5",
        ),
        (
            "[bus.nats]\nstream_name = \"a.b\"",
            "bus.nats.stream_name",
            "without spaces, dots",
        ),
        (
            "[server]\nlisten = \"nope\"",
            "server.listen",
            "127.0.0.1:8080",
        ),
        (
            "[server]\nmetrics_listen = \"nope\"",
            "server.metrics_listen",
            "leave it empty",
        ),
        ("[log]\nlevel = \"info,[\"", "log.level", "info,["),
        (
            "[auth]\nproviders = [\"ldap\"]",
            "auth.providers[0]",
            "is not one of \"static\", \"jwt\", \"callout\"",
        ),
        (
            "[auth.jwt]\nalgorithm = \"none\"",
            "auth.jwt.algorithm",
            "is not one of HS256, RS256, ES256",
        ),
        (
            "[auth]\npublish_tokens = [\"\"]",
            "auth.publish_tokens",
            "would accept anyone",
        ),
        (
            "[[auth.static.tokens]]\ntoken = \"t\"\nalias_ids = [\"a b\"]",
            "auth.static.tokens[0].alias_ids",
            "[A-Za-z0-9_-]",
        ),
        (
            "[auth]\nbackend_timeout = \"0s\"",
            "auth.backend_timeout",
            "greater than 0",
        ),
        (
            "[limits]\nconnections_per_ip_per_minute = 0",
            "limits.connections_per_ip_per_minute",
            "nonzero",
        ),
        (
            "[limits]\nmax_sessions_per_alias = \"lots\"",
            "limits.max_sessions_per_alias",
            "invalid",
        ),
    ] {
        let (got_key, got_reason) = refusal(toml);
        assert_eq!(got_key, key, "{toml:?}: {got_reason}");
        assert!(got_reason.contains(reason), "{toml:?}: {got_reason}");
    }
}

#[test]
fn bad_provider_settings_name_their_key() {
    for (toml, key) in [
        ("[auth]\nproviders = []", "auth.providers"),
        ("[auth]\nproviders = [\"jwt\", \"jwt\"]", "auth.providers"),
        (
            "[auth.dialects]\njmap = [\"callout\"]",
            "auth.dialects.jmap",
        ),
        ("[auth]\nproviders = [\"callout\"]", "auth.providers"),
        (
            "[auth]\nproviders = [\"jwt\"]\n[auth.jwt]\nsecret = \"\"",
            "auth.jwt.secret",
        ),
        (
            "[auth]\nproviders = [\"jwt\"]\n[auth.jwt]\nalgorithm = \"RS256\"",
            "auth.jwt.public_key_file",
        ),
        (
            "[bus]\nkind = \"nats\"\n[auth]\nproviders = [\"callout\"]\n[auth.callout]\ntimeout = \"0s\"",
            "auth.callout.timeout",
        ),
    ] {
        assert_eq!(refusal(toml).0, key, "{toml:?}");
    }
}

#[test]
fn auth_dialects_are_keyed_by_label_and_unknown_ones_are_refused() {
    let s =
        load_with("[auth]\nproviders = [\"static\", \"jwt\"]\n[auth.dialects]\nrooms = [\"jwt\"]")
            .unwrap();
    assert_eq!(s.auth.dialects.of(Dialect::Rooms), [ProviderKind::Jwt]);
    assert!(s.auth.dialects.of(Dialect::Jmap).is_empty());
    let (key, reason) = refusal("[auth.dialects]\nwebsocket = [\"jwt\"]");
    assert!(key.starts_with("auth.dialects"), "{key}: {reason}");
    assert!(
        reason.contains("unknown dialect \"websocket\"")
            && reason.contains("v1, jmap, realtime, rooms"),
        "{reason}"
    );
}

#[test]
fn the_old_auth_backend_timeout_key_still_works_with_a_warning() {
    let s = load_with("[forwardemail]\nauth_backend_timeout = \"3s\"").unwrap();
    assert_eq!(s.auth.backend_timeout, Duration::from_secs(3));
    assert_eq!(
        s.forwardemail.auth_backend_timeout, None,
        "read once, moved"
    );
    let warnings = s.deprecation_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("overrides auth.backend_timeout = 10s"),
        "the dev config sets the new key too: {warnings:?}"
    );
    assert!(!s.to_redacted_toml().contains("auth_backend_timeout"));

    let s = load_with("[auth]\nbackend_timeout = \"4s\"").unwrap();
    assert_eq!(s.auth.backend_timeout, Duration::from_secs(4));
    assert!(s.deprecation_warnings().is_empty());
    assert!(Settings::load(None)
        .unwrap()
        .deprecation_warnings()
        .is_empty());

    let (key, reason) = refusal("[forwardemail]\nauth_backend_timeout = \"0s\"");
    assert_eq!(key, "forwardemail.auth_backend_timeout", "{reason}");
}

#[test]
fn redacted_output_hides_every_secret() {
    let s = Settings::load(None).unwrap();
    let out = s.to_redacted_toml();
    for secret in [
        "herald-dev-admin",
        "herald-demo-token",
        "herald-dev-jwt-secret",
        "$argon2id",
    ] {
        assert!(!out.contains(secret), "{secret} leaked");
    }
    assert!(out.contains("[redacted]"));
}

#[test]
fn a_bad_value_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[bus]\nkind = \"nats\"\n[bus.nats]\nurls = [\"http://x\"]\n",
    )
    .unwrap();
    let err = Settings::load(Some(&file)).unwrap_err().to_string();
    assert!(err.contains("bus.nats.urls"), "{err}");
    std::fs::write(&file, "[server]\nlisten = \"nope\"\n").unwrap();
    let err = Settings::load(Some(&file)).unwrap_err().to_string();
    assert!(err.contains("server.listen"), "{err}");
    std::fs::write(&file, "[server]\nlisten_typo = \"x\"\n").unwrap();
    let err = Settings::load(Some(&file)).unwrap_err().to_string();
    assert!(err.contains("listen_typo"), "{err}");
}
