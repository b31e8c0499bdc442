//! Checking `TS_EXTRA_ARGS` (flags of `tailscale up`) and `TS_TAILSCALED_EXTRA_ARGS` (flags
//! of `tailscaled`): refuse what tsbridge sets itself, what conflicts with a `TS_*`
//! variable, and anything that would put an auth key on a command line.

use super::Problem;
use crate::secret::redact;

/// Which `tailscale up` flags the user's `TS_EXTRA_ARGS` already set.
#[derive(Default)]
pub(super) struct UpFlags {
    pub accept_dns: bool,
}

/// Which of the settings `TS_EXTRA_ARGS` could also carry are set by their own variable
/// (`TS_HOSTNAME`, `TS_ROUTES`, `TS_ACCEPT_DNS`).
#[derive(Clone, Copy)]
pub(super) struct SetElsewhere {
    pub hostname: bool,
    pub routes: bool,
    pub accept_dns: bool,
}

/// Checks `TS_EXTRA_ARGS`, already split into arguments; problems in argument order.
pub(super) fn check_up_args(args: &[String], set: SetElsewhere) -> (UpFlags, Vec<Problem>) {
    let mut c = Checker::default();
    let flags = c.up_args(args, set);
    (flags, c.problems)
}

/// Checks `TS_TAILSCALED_EXTRA_ARGS`, already split into arguments.
pub(super) fn check_tailscaled_args(args: &[String]) -> Vec<Problem> {
    let mut c = Checker::default();
    c.tailscaled_args(args);
    c.problems
}

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn push(&mut self, var: &str, value: Option<&str>, message: impl Into<String>) {
        self.problems.push(Problem::new(var, value, message));
    }

    /// Checks `TS_EXTRA_ARGS` (flags of `tailscale up`).
    fn up_args(&mut self, args: &[String], set: SetElsewhere) -> UpFlags {
        let SetElsewhere {
            hostname: hostname_env,
            routes: routes_env,
            accept_dns: accept_dns_env,
        } = set;
        const VAR: &str = "TS_EXTRA_ARGS";
        let mut flags = UpFlags::default();
        // Arguments already refused as an auth key (the flag and its separate value).
        let mut covered = Vec::new();
        let mut skip_value = false;
        for (i, arg) in args.iter().enumerate() {
            if skip_value {
                skip_value = false;
                continue;
            }
            let Some((name, value)) = flag_parts(arg) else {
                self.push(
                    VAR,
                    Some(arg),
                    "`tailscale up` takes no positional arguments; expected --flag=value",
                );
                continue;
            };
            let takes_value = value.is_none() && !is_bool_up_flag(name);
            match name {
                "authkey" | "auth-key" => {
                    self.push(
                        VAR,
                        Some(&redact_flag(arg, value)),
                        "puts the auth key on a command line; set TS_AUTHKEY instead (tsbridge passes it through a pipe)",
                    );
                    skip_value = value.is_none();
                    covered.extend([i, i + 1]);
                    continue;
                }
                "socket" => self.push(VAR, Some(arg), "the LocalAPI socket is set by TS_SOCKET"),
                "reset" => self.push(
                    VAR,
                    Some(arg),
                    "tsbridge always runs `up --reset`; remove it",
                ),
                "hostname" if hostname_env => self.push(
                    VAR,
                    Some(arg),
                    "conflicts with TS_HOSTNAME; set the hostname in one place",
                ),
                "advertise-routes" if routes_env => self.push(
                    VAR,
                    Some(arg),
                    "conflicts with TS_ROUTES; set the routes in one place",
                ),
                "accept-dns" if accept_dns_env => self.push(
                    VAR,
                    Some(arg),
                    "conflicts with TS_ACCEPT_DNS; set it in one place",
                ),
                "accept-dns" => {
                    flags.accept_dns = true;
                    if value.is_none_or(|v| super::parse_bool(v) == Some(true)) {
                        self.push(
                            VAR,
                            Some(arg),
                            format!("--accept-dns {}", super::ACCEPT_DNS_REFUSED),
                        );
                    }
                }
                "json" | "qr" => self.push(
                    VAR,
                    Some(arg),
                    "changes the output tsbridge reads; remove it",
                ),
                _ => {}
            }
            if takes_value {
                if i + 1 < args.len() {
                    skip_value = true;
                } else {
                    self.push(VAR, Some(arg), "the flag needs a value; write --flag=value");
                }
            }
        }
        self.refuse_key_shaped(VAR, args, &covered);
        flags
    }

    /// Refuses any argument holding something key-shaped (`tskey-...`) that is not already
    /// refused as an `--authkey` flag: a typo in the flag name, or a key given as the value
    /// of another flag, would otherwise put the key on a command line.
    /// `covered`: indices already reported.
    fn refuse_key_shaped(&mut self, var: &str, args: &[String], covered: &[usize]) {
        for (i, arg) in args.iter().enumerate() {
            if !covered.contains(&i) && crate::secret::KEY_PREFIXES.iter().any(|p| arg.contains(p))
            {
                self.push(
                    var,
                    Some(arg),
                    "looks like an auth key, which would be visible on a command line; set TS_AUTHKEY instead",
                );
            }
        }
    }

    /// Checks `TS_TAILSCALED_EXTRA_ARGS` (flags of `tailscaled`).
    fn tailscaled_args(&mut self, args: &[String]) {
        const VAR: &str = "TS_TAILSCALED_EXTRA_ARGS";
        let mut covered = Vec::new();
        for (i, arg) in args.iter().enumerate() {
            let Some((name, _)) = flag_parts(arg) else {
                continue;
            };
            match name {
                "statedir" | "state" => {
                    self.push(VAR, Some(arg), "the state location is set by TS_STATE_DIR")
                }
                "socket" => self.push(VAR, Some(arg), "the LocalAPI socket is set by TS_SOCKET"),
                "tun" => self.push(
                    VAR,
                    Some(arg),
                    "tsbridge runs tailscaled in kernel mode on tailscale0 (pod egress needs it); remove --tun",
                ),
                "authkey" | "auth-key" => {
                    covered.push(i);
                    self.push(
                        VAR,
                        Some(&redact_flag(arg, None)),
                        "puts the auth key on a command line; set TS_AUTHKEY instead",
                    )
                }
                _ => {}
            }
        }
        self.refuse_key_shaped(VAR, args, &covered);
    }
}

/// Splits `--name=value`, `-name=value`, `--name` into (name, value). Go's flag package
/// accepts one or two dashes.
fn flag_parts(arg: &str) -> Option<(&str, Option<&str>)> {
    let body = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    if body.is_empty() {
        return None;
    }
    Some(match body.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (body, None),
    })
}

/// `tailscale up` flags that are booleans (and so never take the next argument).
fn is_bool_up_flag(name: &str) -> bool {
    matches!(
        name,
        "accept-dns"
            | "accept-routes"
            | "advertise-connector"
            | "advertise-exit-node"
            | "exit-node-allow-lan-access"
            | "force-reauth"
            | "json"
            | "qr"
            | "reset"
            | "shields-up"
            | "snat-subnet-routes"
            | "ssh"
            | "stateful-filtering"
            | "unattended"
            | "netfilter-mode-forced"
            | "operator-only"
    )
}

fn redact_flag(arg: &str, value: Option<&str>) -> String {
    match value {
        Some(_) => match arg.split_once('=') {
            Some((n, _)) => format!("{n}=[redacted]"),
            None => "[redacted]".into(),
        },
        None => redact(arg).into_owned(),
    }
}
