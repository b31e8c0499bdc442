//! HTTP proxy settings from the environment. Talos passes `machine.env` (commonly
//! `HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`, in either case) into every extension service;
//! tsbridge builds its children's environment from scratch, so it passes these on to
//! tailscaled and the tailscale CLI explicitly. A proxy URL may carry credentials
//! (`http://user:pass@proxy:3128`): [`ProxyValue`] never shows them.

use std::collections::BTreeMap;
use std::fmt;

/// The variables Go's net/http reads (golang.org/x/net/http/httpproxy), both cases: for
/// each pair the upper-case one wins when both are set.
pub const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// A proxy variable's value. `Display` and `Debug` replace the credentials of a proxy URL
/// (`scheme://user:pass@host`, or `user:pass@host` without a scheme, as Go also accepts)
/// with `[redacted]`; only [`ProxyValue::expose`] gives the value itself.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyValue(String);

impl ProxyValue {
    pub fn new(value: String) -> Self {
        ProxyValue(value)
    }

    /// The value itself, for the child's environment only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn redacted(&self) -> String {
        // NO_PROXY is a list: each entry is redacted on its own.
        self.0
            .split(',')
            .map(redact_entry)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `scheme://userinfo@rest` or `userinfo@rest` -> `[redacted]@rest`.
fn redact_entry(entry: &str) -> String {
    let start = entry.find("://").map_or(0, |i| i + 3);
    let authority_end = entry[start..]
        .find(['/', '?', '#'])
        .map_or(entry.len(), |i| start + i);
    match entry[start..authority_end].rfind('@') {
        Some(at) => format!("{}[redacted]{}", &entry[..start], &entry[start + at..]),
        None => entry.to_owned(),
    }
}

impl fmt::Display for ProxyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ProxyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// The proxy variables that are set (non-empty), in [`PROXY_VARS`] order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Proxies(Vec<(&'static str, ProxyValue)>);

impl Proxies {
    /// From the environment (last value of a repeated variable already taken).
    pub fn from_env(env: &BTreeMap<String, String>) -> Proxies {
        Proxies(
            PROXY_VARS
                .iter()
                .filter_map(|&k| {
                    let v = env.get(k).filter(|v| !v.is_empty())?;
                    Some((k, ProxyValue::new(v.clone())))
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The variables as they go into a child's environment (values exposed).
    pub fn child_env(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.0
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.expose().to_owned()))
    }

    /// The variables with their values redacted, for showing them.
    pub fn redacted(&self) -> impl Iterator<Item = (&'static str, String)> + '_ {
        self.0.iter().map(|(k, v)| (*k, v.to_string()))
    }

    /// The value Go uses for `upper` (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`): the
    /// upper-case variable, else the lower-case one.
    pub fn effective(&self, upper: &str) -> Option<&ProxyValue> {
        let lower = upper.to_ascii_lowercase();
        let get = |name: &str| self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| v);
        get(upper).or_else(|| get(&lower))
    }

    /// The effective value of `upper` for a log field: redacted, empty when unset.
    pub fn shown(&self, upper: &str) -> String {
        self.effective(upper)
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> String {
        ProxyValue::new(s.to_owned()).to_string()
    }

    #[test]
    fn credentials_never_show() {
        assert_eq!(
            v("http://user:p%40ss@proxy.lab:3128"),
            "http://[redacted]@proxy.lab:3128"
        );
        assert_eq!(
            v("http://user:pass@proxy:3128/path?x=a@b"),
            "http://[redacted]@proxy:3128/path?x=a@b"
        );
        // A password holding '@' unencoded: everything up to the last '@' of the
        // authority is credentials.
        assert_eq!(v("http://u:a@b@proxy:8080"), "http://[redacted]@proxy:8080");
        assert_eq!(v("user:secret@proxy:3128"), "[redacted]@proxy:3128");
        assert_eq!(v("socks5://u@proxy:1080"), "socks5://[redacted]@proxy:1080");
        assert_eq!(v("http://proxy.lab:3128"), "http://proxy.lab:3128");
        assert_eq!(
            v("localhost,.cluster.local,10.0.0.0/8"),
            "localhost,.cluster.local,10.0.0.0/8"
        );
        let d = format!("{:?}", ProxyValue::new("http://u:hunter2@p:1".into()));
        assert!(!d.contains("hunter2"), "{d}");
        assert_eq!(
            ProxyValue::new("http://u:hunter2@p:1".into()).expose(),
            "http://u:hunter2@p:1"
        );
    }

    #[test]
    fn both_cases_are_taken_and_upper_case_wins_as_in_go() {
        let env: BTreeMap<String, String> = [
            ("HTTPS_PROXY", "http://u:s3cret@proxy:3128"),
            ("https_proxy", "http://other:3128"),
            ("http_proxy", "http://proxy:3128"),
            ("NO_PROXY", ""),
            ("no_proxy", "10.0.0.0/8"),
            ("ALL_PROXY", "socks5://x:1"),
            ("TS_AUTHKEY", "tskey-auth-x"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let p = Proxies::from_env(&env);
        let names: Vec<_> = p.child_env().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            ["http_proxy", "HTTPS_PROXY", "https_proxy", "no_proxy"]
        );
        assert!(
            p.child_env()
                .any(|kv| kv == ("HTTPS_PROXY".into(), "http://u:s3cret@proxy:3128".into()))
        );
        assert_eq!(p.shown("HTTPS_PROXY"), "http://[redacted]@proxy:3128");
        assert_eq!(p.shown("HTTP_PROXY"), "http://proxy:3128");
        assert_eq!(p.shown("NO_PROXY"), "10.0.0.0/8");
        assert!(!format!("{p:?}").contains("s3cret"));
        assert!(Proxies::from_env(&BTreeMap::new()).is_empty());
    }
}
