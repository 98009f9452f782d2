//! Durations in messages written for people (refusals, gRPC status messages, errors):
//! `98.5 ms`, `2 s`, `1.5 s`, `4 min 10 s`, not `Debug`'s `98.529229ms`.

use std::fmt;
use std::time::Duration;

/// A duration as a person reads it: three significant digits at most, with its unit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Human(pub(crate) Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        let (value, unit) = match nanos {
            0 => return f.write_str("0 s"),
            n if n < 1_000 => return write!(f, "{n} ns"),
            n if n < 1_000_000 => (n as f64 / 1e3, "µs"),
            n if n < 1_000_000_000 => (n as f64 / 1e6, "ms"),
            n if n < 60_000_000_000 => (n as f64 / 1e9, "s"),
            _ => {
                let seconds = self.0.as_secs();
                let (minutes, rest) = (seconds / 60, seconds % 60);
                return match rest {
                    0 => write!(f, "{minutes} min"),
                    _ => write!(f, "{minutes} min {rest} s"),
                };
            }
        };
        // One decimal under 100, none above; a trailing ".0" dropped.
        let text = if value < 100.0 {
            format!("{value:.1}")
        } else {
            format!("{value:.0}")
        };
        let text = text.strip_suffix(".0").unwrap_or(&text);
        write!(f, "{text} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        let cases = [
            (Duration::ZERO, "0 s"),
            (Duration::from_nanos(250), "250 ns"),
            (Duration::from_nanos(1_500), "1.5 µs"),
            (Duration::from_nanos(98_529_229), "98.5 ms"),
            (Duration::from_millis(250), "250 ms"),
            (Duration::from_millis(999_960), "16 min 39 s"),
            (Duration::from_secs(2), "2 s"),
            (Duration::from_millis(1_500), "1.5 s"),
            (Duration::from_millis(59_990), "60 s"),
            (Duration::from_secs(250), "4 min 10 s"),
            (Duration::from_secs(900), "15 min"),
        ];
        for (duration, text) in cases {
            assert_eq!(Human(duration).to_string(), text, "{duration:?}");
        }
    }
}
