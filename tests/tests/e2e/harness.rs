//! The harness itself: what later tests rely on from NATS restarts and clusters.

use std::time::Duration;

use futures_util::StreamExt;
use herald_tests::{NatsCluster, NatsServer};

#[tokio::test]
async fn nats_restart_keeps_the_port_and_the_jetstream_store() {
    let mut nats = NatsServer::start();
    let url = nats.url();
    let js = async_nats::jetstream::new(nats.client().await);
    let mut stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "KEEP".into(),
            subjects: vec!["keep.>".into()],
            ..Default::default()
        })
        .await
        .expect("create stream");
    js.publish("keep.one", "1".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert_eq!(stream.info().await.expect("info").state.messages, 1);

    nats.restart();
    assert_eq!(nats.url(), url);
    let js = async_nats::jetstream::new(nats.client().await);
    let mut stream = js.get_stream("KEEP").await.expect("the stream survived");
    assert_eq!(stream.info().await.expect("info").state.messages, 1);
}

#[tokio::test]
async fn nats_cluster_of_three_routes_messages_between_members() {
    let cluster = NatsCluster::start(3).await;
    assert_eq!(cluster.urls().len(), 3);
    let subscriber = cluster.servers[0].client().await;
    let mut sub = subscriber.subscribe("routed").await.expect("subscribe");
    subscriber.flush().await.expect("flush");
    let publisher = cluster.servers[2].client().await;
    // Route interest propagates asynchronously: publish until it arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let received = loop {
        publisher
            .publish("routed", "hi".into())
            .await
            .expect("publish");
        publisher.flush().await.expect("flush");
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(200), sub.next()).await
        {
            break message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message routed from member 3 to member 1"
        );
    };
    assert_eq!(&received.payload[..], b"hi");
}
