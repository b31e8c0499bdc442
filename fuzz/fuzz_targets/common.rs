// Shared checks for the config fuzz targets (included with `#[path]`).

/// Every `tskey-` (and headscale `hskey-`) in text shown to a user must be the redacted
/// form.
pub fn assert_no_key_shown(shown: &str) {
    for prefix in tsbridge::secret::KEY_PREFIXES {
        let mut rest = shown;
        while let Some(i) = rest.find(prefix) {
            let after = &rest[i + prefix.len()..];
            assert!(
                after.starts_with("[redacted]"),
                "an auth key is shown unredacted: {shown:?}"
            );
            rest = after;
        }
    }
}

/// Everything `load` reports (problems and warnings), field by field. Raw fields, not
/// their `Debug` form: escaping can make `\t` + `skey-` look like a key.
pub fn shown(l: &tsbridge::config::Loaded) -> String {
    let mut s = String::new();
    let problems = l
        .config
        .as_ref()
        .err()
        .map(|e| e.0.as_slice())
        .unwrap_or(&[]);
    for p in problems.iter().chain(&l.warnings) {
        s.push_str(&p.var);
        s.push('\n');
        s.push_str(p.value.as_deref().unwrap_or(""));
        s.push('\n');
        s.push_str(&p.message);
        s.push('\n');
    }
    s
}

/// A valid configuration never hands a key-shaped argument to `tailscale up` or
/// `tailscaled`: it would be visible in `/proc/*/cmdline`.
pub fn assert_no_key_in_args(l: &tsbridge::config::Loaded) {
    if let Ok(c) = &l.config {
        for a in c.extra_args.iter().chain(&c.tailscaled_extra_args) {
            for prefix in tsbridge::secret::KEY_PREFIXES {
                assert!(!a.contains(prefix), "key-shaped argument accepted: {a:?}");
            }
        }
        let debug = format!("{c:?}");
        if let Some(tsbridge::config::AuthKey::Inline(k)) = &c.auth_key {
            if k.expose().len() >= 8 && !debug.contains("Secret([redacted])") {
                panic!("the inline key is not shown as redacted: {debug}");
            }
        }
    }
}
