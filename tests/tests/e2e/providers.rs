//! Auth providers on `/v1/ws` (SPEC §6, issue 8): JWT bearer tokens (HS256 secret, ES256
//! JWKS file with rotation), the NATS auth callout (allow, deny, timeout → 504/1013,
//! cache hits, revocation forcing a new callout), tried in `auth.providers` order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use herald_tests::fixtures::{DEMO, OTHER};
use herald_tests::{subscribe_live, workspace_root, Connect, Node, NodeConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use toml::Value as Toml;

const SECRET: &str = "providers-test-secret";
const AUDIENCE: &str = "herald-tests";
const ISSUER: &str = "https://issuer.test";

fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit")
}

fn list(items: &[&str]) -> Toml {
    Toml::Array(items.iter().map(|s| Toml::from(*s)).collect())
}

/// Valid claims for `aliases`, expiring in an hour; tests change what they need.
fn claims(aliases: &[&str]) -> Value {
    json!({
        "sub": "user-1",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 3600,
        "aliases": aliases,
    })
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("HS256 signs")
}

fn rs256(claims: &Value) -> String {
    let dir = workspace_root().join("tests/fixtures/jwt");
    let pem = std::fs::read(dir.join("rs256.key.pem")).expect("fixture key");
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(&pem).expect("RSA key"),
    )
    .expect("RS256 signs")
}

fn es256(key: &str, claims: &Value) -> String {
    let dir = workspace_root().join("tests/fixtures/jwt");
    let pem = std::fs::read(dir.join(format!("{key}.key.pem"))).expect("fixture key");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_ec_pem(&pem).expect("EC key"),
    )
    .expect("ES256 signs")
}

fn bearer(node: &Node, token: &str) -> Connect {
    Connect::v1(node).header("authorization", &format!("Bearer {token}"))
}

#[tokio::test]
async fn hs256_jwt_checks_signature_exp_aud_and_aliases() {
    let node = Node::start(
        NodeConfig::memory()
            .set("auth.providers", list(&["static", "jwt"]))
            .set("auth.jwt.secret", SECRET)
            .set("auth.jwt.audience", AUDIENCE)
            .set("auth.jwt.issuer", ISSUER)
            .set("auth.jwt.leeway", "1s"),
    )
    .await;

    let client = bearer(&node, &hs256(&claims(&[DEMO.id]))).connect().await;
    assert_eq!(client.hello["aliasId"], DEMO.id, "one alias: used as is");

    let mut expired = claims(&[DEMO.id]);
    expired["exp"] = json!(now() - 60);
    let refusal = bearer(&node, &hs256(&expired)).refused().await;
    assert_eq!(refusal.status, 401, "expired: {refusal:?}");

    let mut wrong_aud = claims(&[DEMO.id]);
    wrong_aud["aud"] = json!("someone-else");
    let refusal = bearer(&node, &hs256(&wrong_aud)).refused().await;
    assert_eq!(refusal.status, 401, "wrong aud: {refusal:?}");

    let mut wrong_iss = claims(&[DEMO.id]);
    wrong_iss["iss"] = json!("https://evil.test");
    let refusal = bearer(&node, &hs256(&wrong_iss)).refused().await;
    assert_eq!(refusal.status, 401, "wrong iss: {refusal:?}");

    let mut not_yet = claims(&[DEMO.id]);
    not_yet["nbf"] = json!(now() + 600);
    let refusal = bearer(&node, &hs256(&not_yet)).refused().await;
    assert_eq!(refusal.status, 401, "nbf in the future: {refusal:?}");

    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(&[DEMO.id]),
        &EncodingKey::from_secret(b"not-the-secret"),
    )
    .unwrap();
    let refusal = bearer(&node, &forged).refused().await;
    assert_eq!(refusal.status, 401, "wrong signature: {refusal:?}");

    let refusal = bearer(&node, "not-a-jwt").refused().await;
    assert_eq!(refusal.status, 401, "garbage: {refusal:?}");

    // Several aliases: the client picks one with ?alias_id=, which must be listed.
    let both = hs256(&claims(&[DEMO.id, OTHER.id]));
    let refusal = bearer(&node, &both).refused().await;
    assert_eq!(
        refusal.status, 400,
        "several aliases, none picked: {refusal:?}"
    );
    let client = bearer(&node, &both)
        .query("alias_id", OTHER.id)
        .connect()
        .await;
    assert_eq!(client.hello["aliasId"], OTHER.id);
    let refusal = bearer(&node, &hs256(&claims(&[DEMO.id])))
        .query("alias_id", OTHER.id)
        .refused()
        .await;
    assert_eq!(refusal.status, 403, "alias not in the token: {refusal:?}");
    let refusal = bearer(&node, &hs256(&claims(&[]))).refused().await;
    assert_eq!(refusal.status, 403, "no alias at all: {refusal:?}");

    // The static provider still answers Basic logins.
    let client = Connect::v1(&node).alias(&DEMO).connect().await;
    assert_eq!(client.hello["aliasId"], DEMO.id);
}

#[tokio::test]
async fn a_jwt_only_node_needs_no_password_file_and_refuses_basic() {
    let node = Node::start(
        NodeConfig::memory()
            .set("auth.providers", list(&["jwt"]))
            .set("auth.jwt.secret", SECRET),
    )
    .await;
    let client = bearer(&node, &hs256(&claims(&[DEMO.id]))).connect().await;
    assert_eq!(client.hello["aliasId"], DEMO.id);
    let refusal = Connect::v1(&node).alias(&DEMO).refused().await;
    assert_eq!(refusal.status, 401, "{refusal:?}");
}

#[tokio::test]
async fn es256_jwks_file_is_reloaded_when_the_keys_rotate() {
    let fixtures = workspace_root().join("tests/fixtures/jwt");
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::copy(fixtures.join("es256-a.jwks.json"), &jwks).unwrap();
    let node = Node::start(
        NodeConfig::memory()
            .set("auth.providers", list(&["jwt"]))
            .set("auth.jwt.algorithm", "ES256")
            .set("auth.jwt.jwks_file", jwks.to_str().unwrap())
            .set("auth.cache.negative_ttl", "0s"),
    )
    .await;

    let client = bearer(&node, &es256("es256-a", &claims(&[DEMO.id])))
        .connect()
        .await;
    assert_eq!(client.hello["aliasId"], DEMO.id);
    let refusal = bearer(&node, &es256("es256-b", &claims(&[DEMO.id])))
        .refused()
        .await;
    assert_eq!(refusal.status, 401, "key b not published yet: {refusal:?}");

    // Rotate: the file now holds key b only (a later mtime, so the node re-reads it).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tmp = dir.path().join("jwks.json.new");
    std::fs::copy(fixtures.join("es256-b.jwks.json"), &tmp).unwrap();
    std::fs::rename(&tmp, &jwks).unwrap();

    let client = bearer(&node, &es256("es256-b", &claims(&[OTHER.id])))
        .connect()
        .await;
    assert_eq!(
        client.hello["aliasId"], OTHER.id,
        "key b accepted after rotation"
    );
    let mut fresh = claims(&[DEMO.id]);
    fresh["jti"] = json!("after-rotation");
    let refusal = bearer(&node, &es256("es256-a", &fresh)).refused().await;
    assert_eq!(refusal.status, 401, "key a retired: {refusal:?}");
}

#[tokio::test]
async fn es256_public_key_file() {
    let key = workspace_root().join("tests/fixtures/jwt/es256-a.pub.pem");
    let node = Node::start(
        NodeConfig::memory()
            .set("auth.providers", list(&["jwt"]))
            .set("auth.jwt.algorithm", "ES256")
            .set("auth.jwt.public_key_file", key.to_str().unwrap()),
    )
    .await;
    let client = bearer(&node, &es256("es256-a", &claims(&[DEMO.id])))
        .connect()
        .await;
    assert_eq!(client.hello["aliasId"], DEMO.id);
    let refusal = bearer(&node, &es256("es256-b", &claims(&[DEMO.id])))
        .refused()
        .await;
    assert_eq!(refusal.status, 401, "{refusal:?}");
}

#[tokio::test]
async fn rs256_public_key_file_and_a_jwt_in_the_auth_frame() {
    let key = workspace_root().join("tests/fixtures/jwt/rs256.pub.pem");
    let node = Node::start(
        NodeConfig::memory()
            .set("auth.providers", list(&["static", "jwt"]))
            .set("auth.jwt.algorithm", "RS256")
            .set("auth.jwt.public_key_file", key.to_str().unwrap()),
    )
    .await;
    let client = bearer(&node, &rs256(&claims(&[DEMO.id]))).connect().await;
    assert_eq!(client.hello["aliasId"], DEMO.id);
    let refusal = bearer(&node, &es256("es256-a", &claims(&[DEMO.id])))
        .refused()
        .await;
    assert_eq!(refusal.status, 401, "another algorithm: {refusal:?}");

    // Browsers cannot set Authorization: the JWT goes in the auth frame instead.
    let both = rs256(&claims(&[DEMO.id, OTHER.id]));
    let mut client = Connect::v1(&node)
        .auth_message()
        .open()
        .await
        .expect("upgrade");
    client
        .send_json(&json!({"event": "auth", "token": both, "alias_id": OTHER.id}))
        .await;
    let hello = client.next_json().await;
    assert_eq!(hello["aliasId"], OTHER.id, "{hello}");

    let mut expired = claims(&[DEMO.id]);
    expired["exp"] = json!(now() - 600);
    let mut client = Connect::v1(&node)
        .auth_message()
        .open()
        .await
        .expect("upgrade");
    client
        .send_json(&json!({"event": "auth", "token": rs256(&expired)}))
        .await;
    assert_eq!(
        client.expect_close().await,
        Some(4401),
        "expired JWT in the frame"
    );

    let mut client = Connect::v1(&node)
        .auth_message()
        .open()
        .await
        .expect("upgrade");
    client
        .send_json(
            &json!({"event": "auth", "token": both, "username": DEMO.address, "password": "demo"}),
        )
        .await;
    assert_eq!(
        client.expect_close().await,
        Some(4400),
        "token and password together"
    );
}

/// An in-test auth backend on `herald.v1.auth.request`: allows `cal@herald.local` /
/// `good` (alias DEMO), `lazy@herald.local` / `good` after 300 ms (alias OTHER) and the
/// token `cal-token` (aliases DEMO and OTHER), ignores `slow@herald.local`, denies the
/// rest; counts requests and keeps the last one.
struct Responder {
    requests: Arc<AtomicUsize>,
    last: Arc<std::sync::Mutex<Value>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Responder {
    async fn start(client: async_nats::Client) -> Responder {
        let mut requests_sub = subscribe_live(&client, "herald.v1.auth.request").await;
        let requests = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(std::sync::Mutex::new(Value::Null));
        let (count, keep) = (Arc::clone(&requests), Arc::clone(&last));
        let task = tokio::spawn(async move {
            while let Some(message) = requests_sub.next().await {
                count.fetch_add(1, Ordering::SeqCst);
                let request: Value = serde_json::from_slice(&message.payload).unwrap();
                *keep.lock().unwrap() = request.clone();
                let reply = match (
                    request["username"].as_str(),
                    request["password"].as_str(),
                    request["token"].as_str(),
                ) {
                    (Some("slow@herald.local"), _, _) => continue,
                    (Some("lazy@herald.local"), Some("good"), _) => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        json!({"ok": true, "aliasIds": [OTHER.id]})
                    }
                    (Some("cal@herald.local"), Some("good"), _) => {
                        json!({"ok": true, "aliasIds": [DEMO.id], "ttl": 60})
                    }
                    (_, _, Some("cal-token")) => {
                        json!({"ok": true, "aliasIds": [DEMO.id, OTHER.id]})
                    }
                    _ => json!({"ok": false}),
                };
                if let Some(to) = message.reply {
                    client
                        .publish(to, serde_json::to_vec(&reply).unwrap().into())
                        .await
                        .unwrap();
                }
            }
        });
        Responder {
            requests,
            last,
            _task: task,
        }
    }

    fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn callout_config(c: NodeConfig) -> NodeConfig {
    c.set("auth.providers", list(&["static", "callout"]))
        .set("auth.callout.timeout", "1s")
        .set("forwardemail.auth_backend_timeout", "2s")
}

#[tokio::test]
async fn callout_allows_denies_and_is_cached_until_revoked() {
    let setup = crate::nats_setup(callout_config).await;
    let responder = Responder::start(setup.nats.client().await).await;
    let node = &setup.node;

    let mut client = Connect::v1(node)
        .basic("cal@herald.local", "good")
        .connect()
        .await;
    assert_eq!(client.hello["aliasId"], DEMO.id);
    assert_eq!(responder.count(), 1);
    let request = responder.last.lock().unwrap().clone();
    assert_eq!(request["dialect"], "v1", "{request}");
    assert_eq!(request["username"], "cal@herald.local", "{request}");
    assert!(request["remote_ip"].as_str().is_some(), "{request}");

    // Within the TTL the cache answers: the backend is not asked again.
    let again = Connect::v1(node)
        .basic("cal@herald.local", "good")
        .connect()
        .await;
    assert_eq!(again.hello["aliasId"], DEMO.id);
    assert_eq!(
        responder.count(),
        1,
        "a cache hit must not call the callout"
    );
    drop(again);

    // Concurrent logins with the same credentials share one callout.
    let lazy = (0..4).map(|_| {
        Connect::v1(node)
            .basic("lazy@herald.local", "good")
            .connect()
    });
    for client in futures_util::future::join_all(lazy).await {
        assert_eq!(client.hello["aliasId"], OTHER.id);
    }
    assert_eq!(responder.count(), 2, "one callout for 4 concurrent logins");

    // Static credentials are answered before the callout is asked.
    Connect::v1(node).alias(&DEMO).connect().await;
    assert_eq!(
        responder.count(),
        2,
        "static login must not reach the callout"
    );

    let refusal = Connect::v1(node)
        .basic("cal@herald.local", "bad")
        .refused()
        .await;
    assert_eq!(refusal.status, 401, "denied: {refusal:?}");
    assert_eq!(responder.count(), 3);

    // A token with two aliases: ?alias_id= picks one, an unlisted one is 403.
    let by_token = Connect::v1(node)
        .token("cal-token", OTHER.id)
        .connect()
        .await;
    assert_eq!(by_token.hello["aliasId"], OTHER.id);
    let refusal = Connect::v1(node)
        .token("cal-token", "someone-else")
        .refused()
        .await;
    assert_eq!(refusal.status, 403, "{refusal:?}");

    // Revocation closes the session and drops the cache entry: the next login asks again.
    let before = responder.count();
    let nats = setup.nats.client().await;
    nats.publish(
        "herald.v1.control.revoke",
        serde_json::to_vec(&json!({"aliasId": DEMO.id}))
            .unwrap()
            .into(),
    )
    .await
    .unwrap();
    nats.flush().await.unwrap();
    assert_eq!(client.expect_close().await, Some(4001));
    let client = Connect::v1(node)
        .basic("cal@herald.local", "good")
        .connect()
        .await;
    assert_eq!(client.hello["aliasId"], DEMO.id);
    assert_eq!(responder.count(), before + 1, "revoke forces a new callout");
}

#[tokio::test]
async fn callout_that_does_not_answer_is_504_or_1013_never_allow() {
    let setup = crate::nats_setup(callout_config).await;
    let responder = Responder::start(setup.nats.client().await).await;
    let node = &setup.node;

    let refusal = Connect::v1(node)
        .basic("slow@herald.local", "whatever")
        .refused()
        .await;
    assert_eq!(refusal.status, 504, "{refusal:?}");

    let mut client = Connect::v1(node)
        .auth_message()
        .open()
        .await
        .expect("upgrade");
    client
        .send_json(&json!({"event": "auth", "username": "slow@herald.local", "password": "x"}))
        .await;
    assert_eq!(client.expect_close().await, Some(1013));
    assert_eq!(responder.count(), 2, "a timeout is not cached");
}

#[tokio::test]
async fn revoking_a_user_or_a_jwt_closes_its_sessions_with_4001() {
    let setup = crate::nats_setup(|c| {
        c.set("auth.providers", list(&["static", "jwt"]))
            .set("auth.jwt.secret", SECRET)
    })
    .await;
    let node = &setup.node;
    let nats = setup.nats.client().await;
    let revoke = |body: Value| {
        let nats = nats.clone();
        async move {
            nats.publish(
                "herald.v1.control.revoke",
                serde_json::to_vec(&body).unwrap().into(),
            )
            .await
            .unwrap();
            nats.flush().await.unwrap();
        }
    };

    let mut user_9 = claims(&[DEMO.id]);
    user_9["sub"] = json!("user-9");
    let mut by_user = bearer(node, &hs256(&user_9)).connect().await;
    let other_token = hs256(&claims(&[OTHER.id]));
    let mut by_token = bearer(node, &other_token).connect().await;
    let mut bystander = Connect::v1(node).alias(&DEMO).connect().await;

    revoke(json!({"userId": "user-9"})).await;
    assert_eq!(by_user.expect_close().await, Some(4001), "user revoked");
    revoke(json!({"token": other_token})).await;
    assert_eq!(by_token.expect_close().await, Some(4001), "JWT revoked");
    bystander.expect_no_event(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn each_dialect_asks_its_own_providers() {
    // `/jmap/ws` takes JWTs only; `/v1/ws` keeps every provider of auth.providers.
    let node = Node::start(
        NodeConfig::memory()
            .set("auth.providers", list(&["static", "jwt"]))
            .set("auth.dialects.jmap", list(&["jwt"]))
            .set("auth.jwt.secret", SECRET)
            .set("auth.jwt.audience", AUDIENCE)
            .set("auth.jwt.issuer", ISSUER),
    )
    .await;
    let token = hs256(&claims(&[DEMO.id]));
    let jmap = Connect::jmap(&node).header("authorization", &format!("Bearer {token}"));
    let mut client = jmap.open().await.expect("a JWT opens /jmap/ws");
    client
        .send_json(&json!({"@type": "Request", "using": [], "methodCalls": [["Core/echo", {"a": 1}, "c"]]}))
        .await;
    let frame = client.next_frame(herald_tests::PROMPT).await;
    assert!(
        matches!(&frame, Some(herald_tests::Frame::Text(t)) if t.contains("Core/echo")),
        "{frame:?}"
    );
    let refusal = Connect::jmap(&node).alias(&DEMO).refused().await;
    assert_eq!(refusal.status, 401, "no static provider on /jmap/ws");
    let client = Connect::v1(&node).alias(&DEMO).connect().await;
    assert_eq!(client.hello["aliasId"], DEMO.id, "static still on /v1/ws");
}
