//! The health listener's request-line parser on arbitrary request heads.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = tsbridge::serve::parse_request(data) {
        assert!(req.path.starts_with('/'));
        assert!(!req.path.contains('?'));
        assert!(!req.path.contains(char::is_whitespace));
        assert!(!req.method.is_empty());
    }
});
