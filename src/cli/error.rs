//! The command line's one error type, shared by the dispatcher and the commands.

#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("{0}")]
    Args(#[from] lexopt::Error),
    #[error("unknown command {0:?}; run `tsbridge --help`")]
    UnknownCommand(String),
    #[error("{0}")]
    Patch(#[from] crate::talos::PatchError),
    #[error("{0}")]
    Usage(String),
}
