//! Durations as people write them in configuration files, flags and URLs, parsed one way for
//! all of Keel (route files, service and JWT configuration, CLI flags, bus URL settings).

use std::time::Duration;

/// Parses a duration: `250ms`, `1.5s`, `1m30s`, `2h`, `10us`, `5ns`, `2d`, ISO-8601 `PT…`
/// (`PT1.5S`), or a bare number of milliseconds. The error names the text and the forms.
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(ms) = t.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    if let Some(iso) = t.strip_prefix("PT").or_else(|| t.strip_prefix("pt")) {
        return parse_iso(iso).ok_or_else(|| format!("{s:?} is not a duration"));
    }
    let text = t.strip_suffix('d').map(|d| (d, 86_400.0));
    if let Some((days, mult)) = text
        && let Ok(n) = days.trim().parse::<f64>()
        && n.is_finite()
        && n >= 0.0
    {
        return Duration::try_from_secs_f64(n * mult).map_err(|e| e.to_string());
    }
    parse_humane(t).ok_or_else(|| {
        format!("{s:?} is not a duration (use e.g. 250ms, 5s, 1m30s, or a number of milliseconds)")
    })
}

/// `250ms`, `1.5s`, `1m30s`, `2h`, `10us`, `5ns`.
fn parse_humane(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match rest[..unit_end].trim() {
            "h" => 3600.0,
            "m" | "min" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * secs;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

fn parse_iso(s: &str) -> Option<Duration> {
    if s.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    let mut num = String::new();
    for c in s.chars() {
        match c {
            '0'..='9' | '.' => num.push(c),
            'H' | 'h' | 'M' | 'm' | 'S' | 's' => {
                let n: f64 = num.parse().ok()?;
                num.clear();
                total += n * match c.to_ascii_uppercase() {
                    'H' => 3600.0,
                    'M' => 60.0,
                    _ => 1.0,
                };
            }
            _ => return None,
        }
    }
    if !num.is_empty() {
        return None;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("1000").unwrap(), Duration::from_secs(1));
        assert_eq!(parse("PT1.5S").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("PT5M").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("PT0.5S").unwrap(), Duration::from_millis(500));
        assert!(parse("soon").unwrap_err().contains("soon"));
        for bad in ["", "s", "5x", "-1s", "PT", "PT5", "1.5.5s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
