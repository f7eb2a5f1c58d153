//! A stored spool entry read back, as the replay worker and the spool CLI
//! read it: the encoded headers (`name NUL value NUL`), and the body,
//! parsed for its operation and cut into aliases. The first two bytes say
//! where the headers end. No panic; headers that decode re-encode to a
//! blob that decodes to the same headers.
#![no_main]

use datalayer_sidecar::graphql::{self, split};
use datalayer_sidecar::spool::record::{decode_headers, encode_headers};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let cut = (usize::from(u16::from_le_bytes([data[0], data[1]])) % data.len()).max(2);
    let (headers, body) = data[2..].split_at(cut - 2);
    let decoded = decode_headers(headers);
    let again = decode_headers(&encode_headers(&decoded, &[]));
    assert_eq!(decoded, again);
    if let Ok(op) = graphql::operation_of(body) {
        let _ = op.display_name();
    }
    if let Some(batch) = split::Batch::parse(body) {
        for i in 0..batch.len() {
            let _ = batch.subset(&[i]);
        }
    }
});
