//! The control socket's request parser: any line is a request or an error
//! text; a revoke carries a valid link id.
#![no_main]

use hearthlink::control::{parse_request, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match parse_request(line) {
        Ok(Request::Revoke { link_id }) => {
            assert!(hearthlink::protocol::valid_link_id(&link_id), "{link_id:?}");
        }
        Ok(_) => {}
        Err(e) => assert!(!e.is_empty()),
    }
});
