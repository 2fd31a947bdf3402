//! A call's deadline: the server's default, or the client's `grpc-timeout`
//! when that is sooner.

use std::time::Duration;

use http::HeaderMap;

/// The deadline of a call with these headers, given the server's default.
/// A malformed `grpc-timeout` is ignored, as tonic ignores it.
pub fn deadline(headers: &HeaderMap, default: Duration) -> Duration {
    let asked = headers
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(grpc_timeout);
    asked.map_or(default, |asked| asked.min(default))
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (gRPC over
/// HTTP/2: `H` hours, `M` minutes, `S` seconds, `m` millis, `u` micros,
/// `n` nanos).
pub fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn every_unit_of_grpc_timeout_is_read() {
        assert_eq!(grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(grpc_timeout("4S"), Some(Duration::from_secs(4)));
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(grpc_timeout("7n"), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn malformed_grpc_timeouts_are_not_read() {
        for bad in [
            "",
            "S",
            "100",
            "123456789m",
            "1.5S",
            "-1S",
            "10s",
            "10 S",
            "１S",
            "1é",
        ] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_sooner_of_the_default_and_the_clients_deadline_holds() {
        let default = Duration::from_secs(30);
        let mut headers = HeaderMap::new();
        assert_eq!(deadline(&headers, default), default);
        headers.insert("grpc-timeout", HeaderValue::from_static("200m"));
        assert_eq!(deadline(&headers, default), Duration::from_millis(200));
        headers.insert("grpc-timeout", HeaderValue::from_static("1H"));
        assert_eq!(deadline(&headers, default), default);
        headers.insert("grpc-timeout", HeaderValue::from_static("soon"));
        assert_eq!(deadline(&headers, default), default);
    }
}
