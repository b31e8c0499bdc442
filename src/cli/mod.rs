//! Command-line parsing and dispatch. Configuration comes from the environment, not argv:
//! flags here only pick the command and its output.

mod error;
mod patch;

use std::process::ExitCode;

use lexopt::prelude::*;

use crate::config;
use error::CliError;

const MAIN_HELP: &str = "\
tsbridge - puts a Talos node on the tailnet and makes the tailnet usable from its pods

Usage: tsbridge <COMMAND> [OPTIONS]

Commands:
  run      run the daemon (the extension service's entrypoint)
  config   validate the configuration in the environment and print it (secrets redacted)
  patch    print the Talos machine-config patch for a node
  check    explain whether a pod on this node can reach the tailnet
  version  print version, git commit and target

Configuration is read from the environment (TS_* and TSBRIDGE_* variables; for a repeated
variable the last value wins). See the README for the full table.

Options:
  -h, --help     print help
  -V, --version  print version
";

const RUN_HELP: &str = "\
Usage: tsbridge run

Runs the daemon: supervises tailscaled, joins the tailnet, keeps pod egress working.
Configuration comes from the environment. With an invalid configuration it reports every
problem once and stays up, degraded, until SIGTERM (so Talos does not restart it forever).
";

const CONFIG_HELP: &str = "\
Usage: tsbridge config [--json]

Validates the configuration in the environment and prints the effective configuration as
it would be written in the ExtensionServiceConfig: one VARIABLE=value per line, each marked
`# set` or `# default`, secrets redacted. Warnings and problems go to stderr. Exit status 0
when valid, 1 otherwise.

Options:
  --json  one JSON object: {\"valid\": true, \"settings\": [{var, value, set, from?}],
          \"warnings\": [{var, value, message}]}, or {\"valid\": false, \"problems\": [...]}
";

const CHECK_HELP: &str = "\
Usage: tsbridge check [--json] [--cluster-dns ADDR|off]

Explains whether a pod on this node can reach the tailnet: tailscaled's state and
addresses, tsbridge's guard rules and nftables table, the route a pod packet to the
tailnet takes, the node-identity guard, a MagicDNS query to 100.100.100.100 for a peer's
name, and the same query to the cluster DNS (what a pod asks), whose answer must match.
Each check prints ok or FAIL with a one-line fix. Run it on the node (host network
namespace, as root) with the service's environment. Exit status 0 only when every check
passes.

Options:
  --json              one JSON object: {\"ok\": bool, \"checks\": [{name, ok, detail, fix}]}
  --cluster-dns ADDR  the cluster DNS to ask (IP or IP:PORT); default the 10th address of
                      the first service CIDR (TSBRIDGE_SERVICE_CIDRS), 10.96.0.10 by
                      default; `off` skips the check
";

const VERSION_HELP: &str = "\
Usage: tsbridge version

Prints the version, the git commit it was built from and the target triple.
";

pub fn main() -> ExitCode {
    match dispatch() {
        Ok(code) => code,
        Err(e) => {
            // A key pasted as a stray argument must not be echoed back.
            eprintln!("tsbridge: {}", crate::secret::redact(&e.to_string()));
            ExitCode::from(2)
        }
    }
}

fn dispatch() -> Result<ExitCode, CliError> {
    let mut parser = lexopt::Parser::from_env();
    let Some(arg) = parser.next()? else {
        print!("{MAIN_HELP}");
        return Ok(ExitCode::from(2));
    };
    let cmd = match arg {
        Short('h') | Long("help") => {
            print!("{MAIN_HELP}");
            return Ok(ExitCode::SUCCESS);
        }
        Short('V') | Long("version") => {
            print_version();
            return Ok(ExitCode::SUCCESS);
        }
        Value(v) => v.string()?,
        other => return Err(other.unexpected().into()),
    };
    match cmd.as_str() {
        "run" => {
            if no_args(&mut parser, RUN_HELP)? {
                return Ok(ExitCode::SUCCESS);
            }
            Ok(crate::run::main())
        }
        "config" => {
            let mut json = false;
            while let Some(arg) = parser.next()? {
                match arg {
                    Long("json") => json = true,
                    Short('h') | Long("help") => {
                        print!("{CONFIG_HELP}");
                        return Ok(ExitCode::SUCCESS);
                    }
                    other => return Err(other.unexpected().into()),
                }
            }
            Ok(print_config(json))
        }
        "version" => {
            if no_args(&mut parser, VERSION_HELP)? {
                return Ok(ExitCode::SUCCESS);
            }
            print_version();
            Ok(ExitCode::SUCCESS)
        }
        "patch" => patch::main(&mut parser),
        "check" => {
            let mut json = false;
            let mut cluster_dns = crate::check::ClusterDns::Default;
            while let Some(arg) = parser.next()? {
                match arg {
                    Long("json") => json = true,
                    Long("cluster-dns") => {
                        let v = parser.value()?.string()?;
                        cluster_dns = crate::check::ClusterDns::parse(&v).ok_or_else(|| {
                            CliError::Usage(format!(
                                "--cluster-dns {v:?}: expected an IP address, IP:PORT or `off`"
                            ))
                        })?;
                    }
                    Short('h') | Long("help") => {
                        print!("{CHECK_HELP}");
                        return Ok(ExitCode::SUCCESS);
                    }
                    other => return Err(other.unexpected().into()),
                }
            }
            Ok(crate::check::main(json, cluster_dns))
        }
        "help" => {
            print!("{MAIN_HELP}");
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(CliError::UnknownCommand(cmd)),
    }
}

/// Accepts only `--help`; returns true when help was printed.
fn no_args(parser: &mut lexopt::Parser, help: &str) -> Result<bool, CliError> {
    if let Some(arg) = parser.next()? {
        return match arg {
            Short('h') | Long("help") => {
                print!("{help}");
                Ok(true)
            }
            other => Err(other.unexpected().into()),
        };
    }
    Ok(false)
}

fn print_version() {
    println!(
        "tsbridge {} commit={} target={}",
        env!("CARGO_PKG_VERSION"),
        env!("TSBRIDGE_COMMIT"),
        env!("TSBRIDGE_TARGET")
    );
}

fn print_config(json: bool) -> ExitCode {
    use config::show;
    let loaded = config::from_process_env();
    let env = config::env_map(std::env::vars_os());
    let settings = loaded
        .config
        .as_ref()
        .map(|c| show::settings(c, &env))
        .map_err(|e| e.0.as_slice());
    if json {
        print!(
            "{}",
            show::render_json(settings.as_deref().map_err(|p| *p), &loaded.warnings)
        );
    } else {
        for w in &loaded.warnings {
            eprintln!("warning: {w}");
        }
        match &settings {
            Ok(s) => print!("{}", show::render_text(s)),
            Err(_) => {
                if let Err(e) = &loaded.config {
                    eprintln!("{e}");
                }
            }
        }
    }
    if settings.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
