//! How numbers read on screen: sizes, durations, ages, progress.

/// `999 B`, `1.5 KB`, `12.3 MB` (powers of 1000, as file managers show).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 999.95 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `850 ms`, `1.2 s`, `3 min 04 s`, `2 h 05 min`.
pub fn duration_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {:02} s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{} h {:02} min", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// How long ago `then_ms` was at `now_ms`: `just now`, `12 s ago`, `3 min ago`, `2 h ago`,
/// `4 d ago`.
pub fn age(now_ms: i64, then_ms: i64) -> String {
    let secs = (now_ms - then_ms).max(0) / 1000;
    match secs {
        0 => "just now".to_string(),
        1..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// Share of `total` that has ended (`done + failed + cancelled`), 0 to 100, rounded down so
/// that 100 means every image really ended.
pub fn percent(ended: u32, total: u32) -> u32 {
    if total == 0 {
        return 0;
    }
    let p = u64::from(ended.min(total)) * 100 / u64::from(total);
    p as u32
}

/// A job state label as people read it: `completed_with_errors` → `completed with errors`.
pub fn state(label: &str) -> String {
    label.replace('_', " ")
}

/// A short form of a ULID job id for tight tables: its last 8 characters (the random part,
/// which differs between jobs made in the same millisecond).
pub fn short_id(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}

/// A wall-clock time of day, `HH:MM:SS` in UTC, from milliseconds since the epoch.
pub fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1000), "1.0 KB");
        assert_eq!(bytes(1_530), "1.5 KB");
        assert_eq!(bytes(999_960), "1.0 MB");
        assert_eq!(bytes(12_345_678), "12.3 MB");
        assert_eq!(bytes(u64::MAX), "18446744.1 TB");
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms(0), "0 ms");
        assert_eq!(duration_ms(850), "850 ms");
        assert_eq!(duration_ms(1_234), "1.2 s");
        assert_eq!(duration_ms(184_000), "3 min 04 s");
        assert_eq!(duration_ms(7_500_000), "2 h 05 min");
    }

    #[test]
    fn ages() {
        assert_eq!(age(10_000, 9_500), "just now");
        assert_eq!(
            age(10_000, 20_000),
            "just now",
            "a clock ahead reads as now"
        );
        assert_eq!(age(72_000, 0), "1 min ago");
        assert_eq!(age(12_000, 0), "12 s ago");
        assert_eq!(age(7_200_000, 0), "2 h ago");
        assert_eq!(age(4 * 86_400_000, 0), "4 d ago");
    }

    #[test]
    fn percents_round_down_and_never_pass_100() {
        assert_eq!(percent(0, 0), 0);
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(2, 3), 66);
        assert_eq!(percent(299, 300), 99);
        assert_eq!(percent(3, 3), 100);
        assert_eq!(percent(5, 3), 100);
    }

    #[test]
    fn labels_ids_and_clocks() {
        assert_eq!(state("completed_with_errors"), "completed with errors");
        assert_eq!(short_id("01JABCDEFGHJKMNPQRSTVWXYZ0"), "STVWXYZ0");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(clock(3_723_000), "01:02:03");
        assert_eq!(clock(86_400_000 + 5_000), "00:00:05");
    }
}
