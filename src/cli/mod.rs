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
Usage: tsbridge config

Validates the configuration in the environment, prints the effective values (secrets
redacted) and every problem. Exit status 0 when valid, 1 otherwise.
";

const CHECK_HELP: &str = "\
Usage: tsbridge check [--json]

Explains whether a pod on this node can reach the tailnet: tailscaled's state and
addresses, tsbridge's guard rules and nftables table, the route a pod packet to the
tailnet takes, the node-identity guard, and a MagicDNS query to 100.100.100.100. Each
check prints ok or FAIL with a one-line fix. Run it on the node (host network namespace,
as root) with the service's environment. Exit status 0 only when every check passes.

Options:
  --json  one JSON object: {\"ok\": bool, \"checks\": [{name, ok, detail, fix}]}
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
            if no_args(&mut parser, CONFIG_HELP)? {
                return Ok(ExitCode::SUCCESS);
            }
            Ok(print_config())
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
            while let Some(arg) = parser.next()? {
                match arg {
                    Long("json") => json = true,
                    Short('h') | Long("help") => {
                        print!("{CHECK_HELP}");
                        return Ok(ExitCode::SUCCESS);
                    }
                    other => return Err(other.unexpected().into()),
                }
            }
            Ok(crate::check::main(json))
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

fn print_config() -> ExitCode {
    let loaded = config::from_process_env();
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    match loaded.config {
        Ok(c) => {
            println!("{c:#?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
