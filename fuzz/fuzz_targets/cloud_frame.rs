//! Cloud frames: decoding, then the command checks on every command, and
//! the answer the gateway would send. Nothing may panic; every answer is
//! strict JSON.
#![no_main]

use hearthlink::links::Snapshot;
use hearthlink::protocol::{self, Inbound};
use hearthlink::relay::checks::{decide, Context, Decision};
use hearthlink::topic::FilterSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let answer = match protocol::decode(text) {
        Ok(Inbound::Command(cmd)) => {
            let links = Snapshot::default();
            let topics = FilterSet::new(["ampio/to/#"]).expect("filters");
            let ctx = Context {
                max_payload_bytes: 65536,
                now_ms: 1_700_000_000_000,
                links: &links,
                command_topics: &topics,
                broker_connected: true,
            };
            let outcome = match decide(&cmd, &ctx, |_| true) {
                Decision::Publish => protocol::Outcome::Ok,
                Decision::Reject(reason, message) => protocol::Outcome::rejected(reason, message),
            };
            protocol::encode_ack(&cmd.id, &outcome)
        }
        Ok(_) => return,
        Err(e) => protocol::encode_error(&e),
    };
    assert!(
        protocol::parse_strict(&answer).is_ok(),
        "answer is not strict JSON: {answer}"
    );
});
