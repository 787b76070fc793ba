//! The `grpc-timeout` request header (gRPC over HTTP/2 spec: up to 8 digits and a unit H, M, S, m,
//! u or n), turned into an instant the whole response stream must finish by.

use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

use crate::error::RequestError;

/// The deadline a client set, if any; a malformed header is refused.
pub fn from_metadata(metadata: &MetadataMap) -> Result<Option<Instant>, RequestError> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let malformed = |message: String| RequestError::Malformed { message };
    let text = value
        .to_str()
        .map_err(|_| malformed("invalid `grpc-timeout` header".into()))?;
    parse(text)
        .map(|d| Some(Instant::now() + d))
        .ok_or_else(|| malformed(format!("invalid `grpc-timeout` header `{text}`")))
}

fn parse(text: &str) -> Option<Duration> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_of_the_spec_is_understood() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("9n"), Some(Duration::from_nanos(9)));
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in ["", "S", "10", "10x", "123456789S", "-1S"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
