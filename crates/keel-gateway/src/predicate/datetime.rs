//! Instants as Spring writes them for After/Before/Between: Java's `ZonedDateTime` text
//! (`2017-01-20T17:42:47.789-07:00[America/Denver]`), RFC 3339, or epoch milliseconds.
//! The offset decides the instant; a bracketed zone name is informational, except that a
//! time without an offset is only accepted in UTC (`Z`, `[UTC]`, `[GMT]`).

/// Milliseconds since the Unix epoch.
pub(crate) fn parse_instant(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    let bad = || {
        format!("{text:?} is not a date-time (e.g. 2017-01-20T17:42:47.789-07:00[America/Denver])")
    };
    let (main, zone) = match t.find('[') {
        Some(i) if t.ends_with(']') => (&t[..i], Some(&t[i + 1..t.len() - 1])),
        Some(_) => return Err(bad()),
        None => (t, None),
    };
    let (date, time) = main.split_once(['T', 't', ' ']).ok_or_else(bad)?;
    let mut d = date.split('-');
    let year: i64 = d.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let month: u32 = d.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let day: u32 = d.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    if d.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    // Split the offset off the time.
    let (clock, offset_min) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, Some(0i64))
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (c, off) = time.split_at(i);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let off = &off[1..];
        let (h, m) = match off.split_once(':') {
            Some((h, m)) => (h, m),
            None if off.len() == 4 => off.split_at(2),
            None => (off, "0"),
        };
        let h: i64 = h.parse().map_err(|_| bad())?;
        let m: i64 = m.parse().map_err(|_| bad())?;
        if h > 18 || m > 59 {
            return Err(bad());
        }
        (c, Some(sign * (h * 60 + m)))
    } else {
        (time, None)
    };
    let offset_min = match (offset_min, zone) {
        (Some(o), _) => o,
        (None, Some("UTC" | "GMT" | "Z" | "Etc/UTC" | "Etc/GMT")) => 0,
        (None, _) => {
            return Err(format!(
                "{text:?} needs a UTC offset (e.g. +01:00 or Z); zone names alone are not resolved"
            ));
        }
    };
    let mut c = clock.split(':');
    let hour: i64 = c.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let minute: i64 = c.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let (second, millis) = match c.next() {
        None => (0, 0),
        Some(s) => {
            let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
            let sec: i64 = whole.parse().map_err(|_| bad())?;
            let frac: String = frac.chars().chain("000".chars()).take(3).collect();
            let ms: i64 = frac.parse().map_err(|_| bad())?;
            (sec, ms)
        }
    };
    if c.next().is_some() || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    secs.checked_mul(1000)
        .and_then(|s| s.checked_add(millis))
        .ok_or_else(bad)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Now, in epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spring_examples() {
        // 2017-01-21T00:42:47.789Z
        assert_eq!(
            parse_instant("2017-01-20T17:42:47.789-07:00[America/Denver]").unwrap(),
            1_484_959_367_789
        );
        assert_eq!(parse_instant("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_instant("1970-01-01T01:00:00+01:00").unwrap(), 0);
        assert_eq!(
            parse_instant("2000-03-01T00:00:00Z").unwrap(),
            951_868_800_000
        );
        assert_eq!(parse_instant("1484959367789").unwrap(), 1_484_959_367_789);
        assert_eq!(
            parse_instant("2017-01-21T00:42:47.789[UTC]").unwrap(),
            1_484_959_367_789
        );
        assert!(parse_instant("2017-01-20T17:42:47[Europe/Paris]").is_err());
        assert!(parse_instant("yesterday").is_err());
        assert!(parse_instant("2017-13-01T00:00Z").is_err());
    }
}
