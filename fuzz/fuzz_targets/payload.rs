//! The MQTT payload classifier and the state frame around it: whatever a
//! device publishes, the app frame and a link frame are strict JSON, and a
//! payload classified as JSON passes the strict parse on its own.
#![no_main]

use hearthlink::protocol::{encode_state, parse_strict, PayloadRepr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let repr = PayloadRepr::classify(data);
    if let PayloadRepr::Json(text) = repr {
        assert!(parse_strict(text).is_ok(), "classified as JSON: {text:?}");
    }
    for audience in [None, Some("l-1")] {
        let frame = encode_state(audience, "ampio/from/x", repr, 1, false);
        assert!(
            parse_strict(&frame).is_ok(),
            "frame is not strict JSON: {frame}"
        );
    }
});
