//! Option types and value parsers shared by several commands: what clap
//! checks before a command runs, so that a bad value is a usage error that
//! names its option.

use std::time::Duration;

use clap::ValueEnum;

use crate::values::HumanDuration;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum Output {
    /// For people.
    #[default]
    Text,
    /// The versioned JSON document of docs/output.schema.json.
    Json,
}

/// `-o, --output` of the commands that print results.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OutputArgs {
    /// Output format: text, or the versioned JSON document (docs/output.schema.json).
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

/// A value parser's refusal: the text clap prints after the option's name.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadValue(String);

/// `20ms`, `1.5s`: from 0 to 60 seconds (the simulator's latency).
pub(crate) fn delay(s: &str) -> Result<Duration, BadValue> {
    let (n, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(BadValue(format!(
            "`{s}`: write milliseconds (`20ms`) or seconds (`0.5s`)"
        )));
    };
    let v: f64 = n
        .trim()
        .parse()
        .map_err(|_| BadValue(format!("`{s}` is not a duration")))?;
    if !(0.0..=60.0).contains(&(v * unit)) {
        return Err(BadValue(format!("`{s}`: from 0 to 60 seconds")));
    }
    Ok(Duration::from_secs_f64(v * unit))
}

/// A duration of at most an hour (`30s`, `5m`): what a command waits out.
pub(crate) fn at_most_an_hour(s: &str) -> Result<HumanDuration, BadValue> {
    let d = HumanDuration::parse(s).map_err(|e| BadValue(e.to_string()))?;
    if d.0 > chrono::Duration::hours(1) {
        return Err(BadValue(format!("`{s}` is longer than `1h`, the most it may be")));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_on_the_command_line_are_bounded() {
        assert_eq!(delay("20ms").unwrap(), Duration::from_millis(20));
        assert_eq!(delay("0.5s").unwrap(), Duration::from_millis(500));
        assert!(delay("61s").is_err() && delay("5").is_err() && delay("xs").is_err());
        assert_eq!(at_most_an_hour("1h").unwrap().to_std(), Duration::from_secs(3600));
        assert!(
            at_most_an_hour("1h1s")
                .unwrap_err()
                .to_string()
                .contains("the most it may be")
        );
        assert!(
            at_most_an_hour("soon")
                .unwrap_err()
                .to_string()
                .contains("is not a duration")
        );
    }
}
