//! Logging set-up (tracing + tracing-subscriber).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber: `filter` in `RUST_LOG` syntax, pretty or
/// JSON lines on stdout. An unparsable filter falls back to `info` with a
/// warning rather than refusing to start.
pub fn init(format: LogFormat, filter: &str) {
    let (env_filter, bad_filter) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter);
    let result = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if result.is_ok()
        && let Some(e) = bad_filter
    {
        tracing::warn!(filter, error = %e, "invalid log filter; using `info`");
    }
}
