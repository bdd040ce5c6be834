//! Configuration helpers shared by both binaries (ARCHITECTURE.md §5).
//!
//! Every setting is an environment variable and the same-named `--flag`
//! (kebab-case: `REALTIME_HISTORY_LEN` ↔ `--realtime-history-len`), parsed by
//! clap in each binary. This module holds the value parsers, so that a bad
//! value stops start-up with one line naming the variable and why.

use std::time::Duration;

/// Parses a duration written like `30s`, `500ms`, `2m` or `1h` (a number
/// followed by a unit; combinations such as `1m30s` are accepted too).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (write durations like 30s, 500ms or 2m)"))?;
    Ok(d)
}

/// Parses a duration that must be above zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be above zero".into());
    }
    Ok(d)
}

/// `true`/`false`/`1`/`0`/`yes`/`no`/`on`/`off`, any case.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        other => Err(format!("{other:?} is not a boolean (true or false)")),
    }
}

/// A Redis key prefix: non-empty, printable ASCII without spaces, braces or
/// colons at the end (the keys add their own `:` separators and hash tags).
pub fn parse_key_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
        || s.ends_with(':')
    {
        return Err("use letters, digits and - _ . : only, not ending in ':'".into());
    }
    Ok(s.to_owned())
}

/// Parses the process's flags and environment into `C`. `--help` and
/// `--version` print and exit; a bad value prints one line naming the
/// variable and why (not clap's usage block) and gives exit code 2.
pub fn parse_args<C: clap::Parser>() -> Result<C, std::process::ExitCode> {
    match C::try_parse() {
        Ok(config) => Ok(config),
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid settings");
            eprintln!("error: {}", first.trim_start_matches("error: "));
            Err(std::process::ExitCode::from(2))
        }
    }
}

/// A runtime for a binary's `main`, or the one line saying why not.
pub fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, std::process::ExitCode> {
    let mut builder = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        std::process::ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_positive_duration("0s").is_err());
    }

    #[test]
    fn booleans_and_prefixes() {
        assert!(parse_bool("TRUE").unwrap());
        assert!(!parse_bool("off").unwrap());
        assert!(parse_bool("maybe").is_err());
        assert!(parse_key_prefix("rt").is_ok());
        assert!(parse_key_prefix("").is_err());
        assert!(parse_key_prefix("a{b").is_err());
        assert!(parse_key_prefix("rt:").is_err());
        assert!(parse_key_prefix("r t").is_err());
    }
}
