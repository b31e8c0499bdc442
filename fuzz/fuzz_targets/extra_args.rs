//! `TS_EXTRA_ARGS` / `TS_TAILSCALED_EXTRA_ARGS` splitting and checking. The first byte picks
//! the variable and which related `TS_*` variables are set (conflict rules); the rest is
//! the value.
#![no_main]

use std::ffi::OsString;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(value) = std::str::from_utf8(rest) else {
        return;
    };
    let var = if sel & 1 == 0 {
        "TS_EXTRA_ARGS"
    } else {
        "TS_TAILSCALED_EXTRA_ARGS"
    };
    let mut env = vec![(OsString::from(var), OsString::from(value))];
    if sel & 2 != 0 {
        env.push(("TS_HOSTNAME".into(), "node-1".into()));
    }
    if sel & 4 != 0 {
        env.push(("TS_ROUTES".into(), "10.0.0.0/24".into()));
    }
    if sel & 8 != 0 {
        env.push(("TS_ACCEPT_DNS".into(), "true".into()));
    }
    let loaded = tsbridge::config::load(env, Path::new("/usr/local/bin"));
    common::assert_no_key_shown(&common::shown(&loaded));
    common::assert_no_key_in_args(&loaded);
    if let Ok(c) = &loaded.config {
        // Splitting is POSIX-shell-like: the parsed arguments are exactly the shell words.
        let args = if sel & 1 == 0 {
            &c.extra_args
        } else {
            &c.tailscaled_extra_args
        };
        let words = shlex::split(value).expect("valid config means the value split");
        if value.trim().is_empty() {
            assert!(args.is_empty());
        } else {
            assert_eq!(args, &words);
        }
        // A flag the user set in TS_EXTRA_ARGS is never also set by tsbridge. (Only the
        // first word is surely a flag: later ones may be the value of an unknown flag.)
        if sel & 1 == 0
            && words
                .first()
                .is_some_and(|w| w == "--accept-dns" || w.starts_with("--accept-dns="))
        {
            assert_eq!(c.accept_dns, None);
        }
    }
});
