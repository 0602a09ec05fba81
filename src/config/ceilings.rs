//! The ceilings' settings: `LIMIT_TOKENS=N[/window]`, `LIMIT_REQUESTS=N[/window]`,
//! `LIMIT_CONCURRENT=N`. A window is `30s`, `10m`, `1h`, `1d` (a number, then a unit; the number
//! may be left out for one: `/h`), or bare seconds; without a window, the ceiling counts for
//! the process's lifetime.

use std::time::Duration;

use super::ConfigError;
use crate::ceiling::{Rate, Spec};
use crate::limits;

/// The three ceilings; each unset one is off.
pub(super) fn ceilings(var: &impl Fn(&'static str) -> Option<String>) -> Result<Spec, ConfigError> {
    let mut spec = Spec::default();
    if let Some(v) = var("LIMIT_TOKENS") {
        spec.tokens = Some(rate("LIMIT_TOKENS", &v)?);
    }
    if let Some(v) = var("LIMIT_REQUESTS") {
        spec.requests = Some(rate("LIMIT_REQUESTS", &v)?);
    }
    if let Some(v) = var("LIMIT_CONCURRENT") {
        let n = whole(&v)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or(ConfigError::new(
                "LIMIT_CONCURRENT",
                "must be a whole number of requests, at least 1",
            ))?;
        spec.concurrent = Some(n);
    }
    Ok(spec)
}

/// `N` or `N/window`.
fn rate(setting: &'static str, v: &str) -> Result<Rate, ConfigError> {
    let (n, window) = match v.split_once('/') {
        Some((n, w)) => (n, Some(w)),
        None => (v, None),
    };
    let max = whole(n).ok_or(ConfigError::new(
        setting,
        "must be N or N/window with N a whole number, at least 1",
    ))?;
    let window = match window {
        None => None,
        Some(w) => Some(window_of(w).ok_or_else(|| {
            let days = limits::MAX_CEILING_WINDOW.as_secs() / 86_400;
            ConfigError::new(
                setting,
                format!("the window must be like 30s, 10m, 1h or 1d, from 1s to {days}d"),
            )
        })?),
    };
    Ok(Rate { max, window })
}

/// A whole number, at least 1, of ASCII digits only.
fn whole(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().filter(|&n| n > 0)
}

/// `30s`, `10m`, `1h`, `1d`, `h`, or bare seconds, within the window bounds.
fn window_of(w: &str) -> Option<Duration> {
    let (digits, unit) = match w.as_bytes().last()? {
        b's' => (&w[..w.len() - 1], 1),
        b'm' => (&w[..w.len() - 1], 60),
        b'h' => (&w[..w.len() - 1], 3600),
        b'd' => (&w[..w.len() - 1], 86_400),
        _ => (w, 1),
    };
    let count = if digits.is_empty() && unit > 1 {
        1
    } else {
        whole(digits)?
    };
    let d = Duration::from_secs(count.checked_mul(unit)?);
    (limits::MIN_CEILING_WINDOW..=limits::MAX_CEILING_WINDOW)
        .contains(&d)
        .then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&'static str, &str)]) -> Result<Spec, ConfigError> {
        ceilings(&|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn unset_ceilings_are_off() {
        assert!(parse(&[]).unwrap().is_off());
    }

    #[test]
    fn a_rate_is_a_count_and_an_optional_window() {
        let spec = parse(&[
            ("LIMIT_TOKENS", "2000000/1h"),
            ("LIMIT_REQUESTS", "600/1m"),
            ("LIMIT_CONCURRENT", "2"),
        ])
        .unwrap();
        assert_eq!(
            spec.tokens,
            Some(Rate {
                max: 2_000_000,
                window: secs(3600)
            })
        );
        assert_eq!(
            spec.requests,
            Some(Rate {
                max: 600,
                window: secs(60)
            })
        );
        assert_eq!(spec.concurrent, Some(2));
        for (v, window) in [
            ("5/30s", secs(30)),
            ("5/1d", secs(86_400)),
            ("5/h", secs(3600)),
            ("5/90", secs(90)),
            ("5/31d", secs(31 * 86_400)),
            ("5", None),
        ] {
            let spec = parse(&[("LIMIT_TOKENS", v)]).unwrap();
            assert_eq!(spec.tokens, Some(Rate { max: 5, window }), "{v}");
        }
    }

    #[test]
    fn bad_values_name_the_setting_and_never_echo_the_value() {
        for (setting, v) in [
            ("LIMIT_TOKENS", "0"),
            ("LIMIT_TOKENS", "-1"),
            ("LIMIT_TOKENS", "1e6"),
            ("LIMIT_TOKENS", "2000000/"),
            ("LIMIT_TOKENS", "2000000/0s"),
            ("LIMIT_TOKENS", "2000000/500ms"),
            ("LIMIT_TOKENS", "2000000/32d"),
            ("LIMIT_TOKENS", "2000000/1w"),
            ("LIMIT_TOKENS", "2000000/1h/2"),
            ("LIMIT_REQUESTS", "/1m"),
            ("LIMIT_REQUESTS", "99999999999999999999/1m"),
            ("LIMIT_CONCURRENT", "0"),
            ("LIMIT_CONCURRENT", "2/1m"),
            ("LIMIT_CONCURRENT", "5000000000"),
        ] {
            let e = parse(&[(setting, v)]).unwrap_err();
            assert_eq!(e.setting, setting, "{v}");
            let text = e.to_string();
            assert!(text.starts_with(&format!("proxy: {setting}: ")), "{text}");
            assert!(!text.contains(v), "{text}");
        }
    }
}
