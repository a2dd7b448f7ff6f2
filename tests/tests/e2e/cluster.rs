//! herald on a 3-node NATS JetStream cluster (SPEC §9): nodes attached to different
//! members deliver the same events.

use herald_protocol::Event;
use herald_tests::fixtures::{assert_payload_intact, payload_for, DEMO};
use herald_tests::{Connect, NatsCluster, Node, NodeConfig, Publisher};

#[tokio::test]
async fn nodes_on_different_cluster_members_deliver_the_same_event() {
    let cluster = NatsCluster::start(3).await;
    let urls = cluster.urls();
    let node_a = Node::start(NodeConfig::nats(&urls[..1])).await;
    let node_b = Node::start(NodeConfig::nats(&urls[1..2])).await;
    let publisher = Publisher::nats(&urls[2]).await;
    let mut on_a = Connect::v1(&node_a).alias(&DEMO).connect().await;
    let mut on_b = Connect::v1(&node_b).alias(&DEMO).connect().await;
    publisher
        .sync_alias(DEMO.id, &mut [&mut on_a, &mut on_b])
        .await;

    let payload = payload_for(Event::NewMessage, 1);
    publisher.alias_event(DEMO.id, &payload).await;
    let got_a = on_a.next_json().await;
    let got_b = on_b.next_json().await;
    assert_payload_intact(&payload, &got_a);
    assert_payload_intact(&payload, &got_b);
    assert_eq!(got_a["notificationId"], got_b["notificationId"]);
}
