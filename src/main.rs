use std::process::ExitCode;

fn main() -> ExitCode {
    tsbridge::cli::main()
}
