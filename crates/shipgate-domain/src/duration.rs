//! Human durations as written in config files (`250ms`, `30s`, `5m`, `1h30m`, `2d`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative span of time with millisecond precision, written the way runbooks write it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub u64);

impl Span {
    /// A span of whole seconds.
    pub const fn secs(seconds: u64) -> Self {
        Span(seconds * 1000)
    }

    /// A span of milliseconds.
    pub const fn millis(milliseconds: u64) -> Self {
        Span(milliseconds)
    }

    /// The span in milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The span as a chrono duration, for arithmetic on timestamps.
    pub fn to_chrono(self) -> chrono::Duration {
        chrono::Duration::milliseconds(i64::try_from(self.0).unwrap_or(i64::MAX))
    }

    /// The span as a std duration, for timeouts.
    pub fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

/// Why a duration string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{input}` is not a duration: write a number and a unit, such as 500ms, 30s, 5m, 1h or 1h30m"
)]
pub struct SpanParseError {
    input: String,
}

impl FromStr for Span {
    type Err = SpanParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = || SpanParseError {
            input: input.to_owned(),
        };
        let text = input.trim();
        if text.is_empty() {
            return Err(error());
        }
        let mut total: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(error());
            }
            let number: u64 = rest[..digits].parse().map_err(|_| error())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let factor = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(error()),
            };
            rest = &rest[unit_len..];
            total = number
                .checked_mul(factor)
                .and_then(|part| total.checked_add(part))
                .ok_or_else(error)?;
        }
        Ok(Span(total))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0;
        if millis == 0 {
            return formatter.write_str("0s");
        }
        if millis % 1000 != 0 {
            return write!(formatter, "{millis}ms");
        }
        let mut seconds = millis / 1000;
        let hours = seconds / 3600;
        seconds %= 3600;
        let minutes = seconds / 60;
        seconds %= 60;
        if hours > 0 {
            write!(formatter, "{hours}h")?;
        }
        if minutes > 0 {
            write!(formatter, "{minutes}m")?;
        }
        if seconds > 0 {
            write!(formatter, "{seconds}s")?;
        }
        Ok(())
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(u64),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
            Raw::Seconds(seconds) => Ok(Span::secs(seconds)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_runbooks_use() {
        assert_eq!("30s".parse::<Span>().unwrap(), Span::secs(30));
        assert_eq!("250ms".parse::<Span>().unwrap(), Span::millis(250));
        assert_eq!("5m".parse::<Span>().unwrap(), Span::secs(300));
        assert_eq!("1h30m".parse::<Span>().unwrap(), Span::secs(5400));
        assert_eq!("2d".parse::<Span>().unwrap(), Span::secs(172_800));
    }

    #[test]
    fn refuses_text_without_a_unit_or_with_an_unknown_one() {
        for bad in ["", "30", "s", "5 minutes", "1.5s", "-3s", "10y"] {
            assert!(bad.parse::<Span>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn displays_back_to_the_same_span() {
        for text in ["0s", "250ms", "30s", "5m", "1h30m", "1h0m5s"] {
            let span: Span = text.parse().unwrap();
            let shown = span.to_string();
            assert_eq!(shown.parse::<Span>().unwrap(), span, "{text} -> {shown}");
        }
    }
}
