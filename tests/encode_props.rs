//! The frame encoder escapes strings (topics, link ids, text payloads)
//! by finding the first byte that needs it eight bytes at a time: whatever
//! the string, and wherever its special bytes fall against those eight-byte
//! words, the frame must parse back to exactly the strings given.

use hearthlink::protocol::{encode_state, PayloadRepr};
use proptest::prelude::*;

/// Strings rich in what JSON escapes, at every offset within a word.
fn tricky() -> impl Strategy<Value = String> {
    "[a-z/\"\\\\\u{0}-\u{1f}\u{7f}\u{e9}\u{20ac}\u{1F600}]{0,40}"
}

proptest! {
    #[test]
    fn strings_survive_the_frame(topic in tricky(), link in tricky(), text in tricky(), ts in any::<i64>()) {
        let frame = encode_state(Some(&link), &topic, PayloadRepr::Text(&text), ts, false);
        let v: serde_json::Value = serde_json::from_str(&frame)
            .map_err(|e| TestCaseError::fail(format!("{e}: {frame:?}")))?;
        prop_assert_eq!(v["topic"].as_str(), Some(topic.as_str()));
        let audience = format!("link:{link}");
        prop_assert_eq!(v["audience"].as_str(), Some(audience.as_str()));
        prop_assert_eq!(v["payload"].as_str(), Some(text.as_str()));
        prop_assert_eq!(v["ts"].as_i64(), Some(ts));
    }
}
