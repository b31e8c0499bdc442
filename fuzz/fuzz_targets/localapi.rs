//! LocalAPI decoding: `/status` and watch-ipn-bus `Notify` JSON, and the chunked
//! transfer decoder. The first byte picks what; the rest is the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsbridge::localapi::{ChunkDecoder, Notify, Status};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => {
            if let Ok(s) = serde_json::from_slice::<Status>(rest) {
                let _ = (s.backend(), s.addrs(), s.suffix());
                if let Some(sfx) = s.suffix() {
                    assert!(!sfx.starts_with('.') && !sfx.ends_with('.') && !sfx.is_empty());
                }
            }
        }
        1 => {
            if let Ok(n) = serde_json::from_slice::<Notify>(rest) {
                let _ = (n.backend(), n.self_changed());
            }
        }
        _ => {
            // Any split of the same bytes decodes the same: the stream arrives in pieces.
            let Some((&at, body)) = rest.split_first() else {
                return;
            };
            let mut whole = ChunkDecoder::default();
            let mut a = Vec::new();
            let ra = whole.feed(body, &mut a);
            let cut = usize::from(at).min(body.len());
            let mut split = ChunkDecoder::default();
            let mut b = Vec::new();
            let rb = split
                .feed(&body[..cut], &mut b)
                .and_then(|()| split.feed(&body[cut..], &mut b));
            assert_eq!(ra.is_ok(), rb.is_ok(), "split at {cut} changed the verdict");
            if ra.is_ok() {
                assert_eq!(a, b, "split at {cut} changed the data");
                assert_eq!(whole.done(), split.done());
            }
            assert!(a.len() <= body.len());
        }
    }
});
