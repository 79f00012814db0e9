//! A Kafka broker for benchmarks: librdkafka's mock cluster (one broker on 127.0.0.1),
//! as the tests use it. Prints its bootstrap address, then serves until killed.
//!
//!   cargo build --release --example mock_broker && target/release/examples/mock_broker

use std::io::Write;

fn main() {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    println!("{}", cluster.bootstrap_servers());
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
