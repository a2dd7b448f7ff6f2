//! Cluster-wide limits (SPEC §6): the per-alias session cap and the per-address
//! connection rate hold across nodes in NATS mode, and fall back to per-node limits —
//! never to "no limit", never to refusing everyone — while NATS is unreachable.

use herald_tests::fixtures::{DEMO, OTHER};
use herald_tests::{eventually, Connect, NatsServer, Node, NodeConfig, PROMPT};

/// Two nodes on one NATS with the same config.
async fn two_nodes(
    nats: &NatsServer,
    configure: impl Fn(NodeConfig) -> NodeConfig,
) -> (Node, Node) {
    let a = Node::start(configure(NodeConfig::nats(&[nats.url()]))).await;
    let b = Node::start(configure(NodeConfig::nats(&[nats.url()]))).await;
    for node in [&a, &b] {
        eventually(PROMPT, "the node to be ready", || async {
            (node.get_status("/readyz").await == 200).then_some(())
        })
        .await;
    }
    (a, b)
}

#[tokio::test]
async fn sixth_session_of_an_alias_across_two_nodes_is_refused_when_the_cap_is_five() {
    let nats = NatsServer::start();
    let (a, b) = two_nodes(&nats, |c| c.max_sessions_per_alias(5)).await;
    let mut open = Vec::new();
    for node in [&a, &a, &a, &b, &b] {
        open.push(Connect::v1(node).alias(&DEMO).connect().await);
    }
    for node in [&a, &b] {
        let refusal = Connect::v1(node).alias(&DEMO).refused().await;
        assert_eq!(
            refusal.status, 429,
            "6th session of the alias in the cluster: {refusal:?}"
        );
        assert!(refusal.retry_after().is_some_and(|s| s > 0), "{refusal:?}");
    }
    let other = Connect::v1(&a).alias(&OTHER).connect().await;
    assert_eq!(other.hello["aliasId"], OTHER.id, "the cap is per alias");

    // A session leaving on node B frees a place that node A can give out.
    open.pop().expect("a session on B").close().await;
    eventually(PROMPT, "a place to free up across the cluster", || async {
        Connect::v1(&a).alias(&DEMO).open().await.ok()
    })
    .await;
}

#[tokio::test]
async fn a_live_node_keeps_its_places_past_the_lease_ttl() {
    let nats = NatsServer::start();
    let (a, b) = two_nodes(&nats, |c| {
        c.max_sessions_per_alias(1).set("limits.lease_ttl", "2s")
    })
    .await;
    let _held = Connect::v1(&a).alias(&DEMO).connect().await;
    // Three TTLs: the lease lives only because node A keeps refreshing it.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let refusal = Connect::v1(&b).alias(&DEMO).refused().await;
    assert_eq!(refusal.status, 429, "the place is still held: {refusal:?}");
}

#[tokio::test]
async fn connection_rate_per_address_holds_across_nodes() {
    let nats = NatsServer::start();
    let (a, b) = two_nodes(&nats, |c| c.connections_per_ip_per_minute(4)).await;
    let mut open = Vec::new();
    for node in [&a, &b, &a, &b] {
        open.push(Connect::v1(node).alias(&DEMO).connect().await);
    }
    let refusal = Connect::v1(&a).alias(&OTHER).refused().await;
    assert_eq!(
        refusal.status, 429,
        "5th connection from one address in a minute, 2 of them on the other node: {refusal:?}"
    );
    assert!(refusal.retry_after().is_some_and(|s| s > 0), "{refusal:?}");
}

#[tokio::test]
async fn limits_fall_back_to_per_node_while_nats_is_down() {
    let mut nats = NatsServer::start();
    let (a, b) = two_nodes(&nats, |c| c.max_sessions_per_alias(2)).await;
    nats.kill();
    eventually(PROMPT, "the node to notice NATS is gone", || async {
        (a.get_status("/readyz").await == 503).then_some(())
    })
    .await;

    // Not "refuse everyone": each node still admits up to the cap on its own...
    let mut open = Vec::new();
    for node in [&a, &a, &b, &b] {
        open.push(Connect::v1(node).alias(&DEMO).connect().await);
    }
    // ...and not "no limit": the per-node cap still holds.
    for node in [&a, &b] {
        let refusal = Connect::v1(node).alias(&DEMO).refused().await;
        assert_eq!(
            refusal.status, 429,
            "per-node cap while NATS is down: {refusal:?}"
        );
    }
}
