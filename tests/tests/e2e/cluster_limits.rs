//! Cluster-wide limits (SPEC §6): the per-alias session cap and the per-address
//! connection rate hold across nodes in NATS mode, and fall back to per-node limits —
//! never to "no limit", never to refusing everyone — while NATS is unreachable.
//!
//! Admission reads each node's view of the limit streams and never waits for NATS;
//! sessions admitted at once on different nodes past a cap are reconciled: exactly the
//! earliest `cap` stay, the others close with 4429 (`cluster_limits`' guarantee).

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use herald_tests::fixtures::{DEMO, OTHER};
use herald_tests::{eventually, Connect, Frame, NatsServer, Node, NodeConfig, WsClient, PROMPT};

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

/// Lets the last connect's lease or attempt cross NATS into every node's view before the
/// next connect: a millisecond normally, generous here where many nodes share two cores.
/// A connect inside that window is admitted (and, over a cap, closed with 4429 once
/// reconciled: the races below), not refused at the handshake.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// `n` nodes on one NATS with the same config.
async fn nodes(
    nats: &NatsServer,
    n: usize,
    configure: impl Fn(NodeConfig) -> NodeConfig,
) -> Vec<Node> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Node::start(configure(NodeConfig::nats(&[nats.url()]))).await);
    }
    for node in &nodes {
        eventually(PROMPT, "the node to be ready", || async {
            (node.get_status("/readyz").await == 200).then_some(())
        })
        .await;
    }
    nodes
}

/// A cap of `cap` sessions per alias, and no other limit in the way of a connect storm
/// from one address.
fn racing(cap: i64) -> impl Fn(NodeConfig) -> NodeConfig {
    move |c: NodeConfig| {
        c.max_sessions_per_alias(cap)
            .connections_per_ip_per_minute(10_000)
            .set("limits.max_logins_in_flight_per_ip", 10_000)
    }
}

/// Logs DEMO in once on every node and leaves, so the storm hits warm auth caches (a
/// cold cache would make every racer hash the password) and no place is held: each
/// warm-up lease is seen by every other node before it is given back, and every view is
/// empty again before the race starts (a release read late would count against it).
async fn warm_up(nodes: &[Node]) {
    for (i, node) in nodes.iter().enumerate() {
        let client = Connect::v1(node).alias(&DEMO).connect().await;
        for (j, other) in nodes.iter().enumerate() {
            if i != j {
                other
                    .wait_remote_leases("the warm-up lease in every view", |n| n >= 1.0)
                    .await;
            }
        }
        client.close().await;
    }
    for node in nodes {
        node.wait_remote_leases("the warm-up leases to leave every view", |n| n == 0.0)
            .await;
    }
}

/// What became of one racing connect.
#[derive(Debug)]
enum Fate {
    /// Still open after reconciliation.
    Open(Box<WsClient>),
    /// Refused at the handshake with this status.
    Refused(u16, String),
    /// Admitted, then closed by the server with this code.
    Closed(Option<u16>),
}

/// Opens `n` DEMO sessions at once, spread round-robin over `nodes`, then watches the
/// admitted ones for `settle`: how each ended up.
async fn storm(nodes: &[Node], n: usize, settle: Duration) -> Vec<Fate> {
    let opens = (0..n).map(|i| Connect::v1(&nodes[i % nodes.len()]).alias(&DEMO).try_open());
    let outcomes = join_all(opens).await;
    let watched = outcomes.into_iter().map(|outcome| async move {
        match outcome.expect("every connect gets an HTTP answer") {
            Err(refusal) => Fate::Refused(refusal.status, refusal.body),
            Ok(mut client) => {
                let deadline = tokio::time::Instant::now() + settle;
                loop {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match client.next_data_frame(left).await {
                        None => return Fate::Open(Box::new(client)),
                        Some(Frame::Close(code, _)) => return Fate::Closed(code),
                        Some(Frame::Ended(why)) => panic!("a racer's socket ended: {why}"),
                        Some(_) => continue, // `connected`
                    }
                }
            }
        }
    });
    join_all(watched).await
}

/// Asserts the reconciliation guarantee over a storm's fates: exactly `cap` sessions
/// open, every other connect refused with 429 (the alias cap) or closed with 4429.
/// Returns the open ones and (refused, closed) counts.
fn assert_exactly_cap(fates: Vec<Fate>, cap: usize) -> (Vec<WsClient>, usize, usize) {
    let (mut open, mut refused, mut closed) = (Vec::new(), 0, 0);
    for fate in fates {
        match fate {
            Fate::Open(client) => open.push(*client),
            Fate::Refused(429, body) if body.contains("max_sessions_per_alias") => refused += 1,
            Fate::Closed(Some(4429)) => closed += 1,
            other => panic!("a racer neither kept its place nor lost it to the cap: {other:?}"),
        }
    }
    assert_eq!(
        open.len(),
        cap,
        "sessions left open after reconciliation ({refused} refused at the handshake, {closed} closed with 4429)"
    );
    println!(
        "storm: {} open, {refused} refused with 429, {closed} closed with 4429",
        open.len()
    );
    (open, refused, closed)
}

/// Racers on `n_nodes` nodes for the last place of a cap of 3 (2 held): exactly one
/// racer keeps it, and the held places are not the ones given up.
async fn race_for_the_last_place(n_nodes: usize) {
    let nats = NatsServer::start();
    let nodes = nodes(&nats, n_nodes, racing(3)).await;
    warm_up(&nodes).await;
    let mut held = vec![
        Connect::v1(&nodes[0]).alias(&DEMO).connect().await,
        Connect::v1(&nodes[1]).alias(&DEMO).connect().await,
    ];
    // The held leases reach every view (sequential connects see each other).
    for (i, node) in nodes.iter().enumerate() {
        let remote = if i < 2 { 1.0 } else { 2.0 };
        node.wait_remote_leases("the held leases in every view", |n| n >= remote)
            .await;
    }
    let fates = storm(&nodes, 8 * n_nodes, Duration::from_secs(2)).await;
    let (open, _, _) = assert_exactly_cap(fates, 1);
    // The held sessions were admitted first: reconciliation never takes their places.
    for client in &mut held {
        client.expect_no_event(Duration::from_millis(300)).await;
    }
    for node in &nodes {
        let refusal = Connect::v1(node).alias(&DEMO).refused().await;
        assert_eq!(
            refusal.status, 429,
            "the cap is full on every node: {refusal:?}"
        );
    }
    drop((open, held));
}

#[tokio::test]
async fn racers_on_two_nodes_for_the_last_place_leave_exactly_the_cap_open() {
    race_for_the_last_place(2).await;
}

#[tokio::test]
async fn racers_on_three_nodes_for_the_last_place_leave_exactly_the_cap_open() {
    race_for_the_last_place(3).await;
}

/// Admits `per_node` DEMO sessions on every node while NATS is frozen (so no node sees
/// the others' leases: a race as wide as the freeze), then lets NATS go: exactly `cap`
/// stay, the rest close with 4429.
async fn frozen_race(n_nodes: usize, cap: usize, per_node: usize) {
    let mut nats = NatsServer::start();
    let nodes = nodes(&nats, n_nodes, racing(cap as i64)).await;
    warm_up(&nodes).await;
    tokio::task::block_in_place(|| nats.pause());
    let mut admitted = Vec::new();
    for node in &nodes {
        for _ in 0..per_node {
            admitted.push(Connect::v1(node).alias(&DEMO).connect().await);
        }
    }
    // Each node's own sessions still count at once, NATS or not.
    let refusal = Connect::v1(&nodes[0]).alias(&DEMO).refused().await;
    assert_eq!(refusal.status, 429, "the node's own places: {refusal:?}");
    tokio::task::block_in_place(|| nats.resume());
    let watched = admitted.into_iter().map(|mut client| async move {
        match client.next_data_frame(Duration::from_secs(3)).await {
            None => Fate::Open(Box::new(client)),
            Some(Frame::Close(code, _)) => Fate::Closed(code),
            Some(other) => panic!("unexpected frame: {other:?}"),
        }
    });
    let (_open, _, closed) = assert_exactly_cap(join_all(watched).await, cap);
    assert_eq!(closed, n_nodes * per_node - cap);
    for node in &nodes {
        let refusal = Connect::v1(node).alias(&DEMO).refused().await;
        assert_eq!(refusal.status, 429, "after reconciliation: {refusal:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_admitted_on_two_nodes_behind_a_frozen_nats_are_cut_back_to_the_cap() {
    frozen_race(2, 3, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_admitted_on_three_nodes_behind_a_frozen_nats_are_cut_back_to_the_cap() {
    frozen_race(3, 2, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connects_do_not_wait_for_a_frozen_nats() {
    let mut nats = NatsServer::start();
    let nodes = nodes(&nats, 2, |c| c.max_sessions_per_alias(50)).await;
    warm_up(&nodes).await;
    // A session per node keeps the alias's registry (and its NATS subscription) in
    // place, so what is timed below is admission, not a registry's first subscribe.
    let mut open = Vec::new();
    for node in &nodes {
        open.push(Connect::v1(node).alias(&DEMO).connect().await);
    }
    tokio::task::block_in_place(|| nats.pause());
    // The old admission waited up to 500 ms for each of its two JetStream checks here.
    let mut slowest = Duration::ZERO;
    for i in 0..6 {
        let started = Instant::now();
        open.push(Connect::v1(&nodes[i % 2]).alias(&DEMO).connect().await);
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(400),
            "connect {i} took {took:?} with NATS frozen"
        );
        slowest = slowest.max(took);
    }
    println!("slowest connect with NATS frozen: {slowest:?}");
    tokio::task::block_in_place(|| nats.resume());
}

#[tokio::test]
async fn sixth_session_of_an_alias_across_two_nodes_is_refused_when_the_cap_is_five() {
    let nats = NatsServer::start();
    let (a, b) = two_nodes(&nats, |c| c.max_sessions_per_alias(5)).await;
    let mut open = Vec::new();
    for node in [&a, &a, &a, &b, &b] {
        open.push(Connect::v1(node).alias(&DEMO).connect().await);
    }
    // Each node counts the other's sessions before the sixth asks (a connect racing the
    // views is admitted, then reclaimed with 4429: the races below).
    a.wait_remote_leases("node A counting B's 2 sessions", |n| n >= 2.0)
        .await;
    b.wait_remote_leases("node B counting A's 3 sessions", |n| n >= 3.0)
        .await;
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
    settle().await;
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
