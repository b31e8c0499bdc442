//! One event per line on stderr: `text` (key=value) or `json`.

use crate::config::LogFormat;
use tracing_subscriber::fmt;

pub fn init(format: LogFormat, level: tracing::Level) {
    let builder = fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_ansi(false)
        .with_target(false);
    // Ignoring the error: a second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
