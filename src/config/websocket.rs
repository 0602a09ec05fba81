//! The WebSocket settings: which paths tunnel an upgrade, and how long a silent tunnel lives.

use std::time::Duration;

use super::{duration, ConfigError};
use crate::handshake::WebSocketPaths;
use crate::limits;

/// The tunnel's settings, present only when `WEBSOCKET_PATHS` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocket {
    /// `WEBSOCKET_PATHS`: exact paths; an upgrade anywhere else gets 426.
    pub paths: WebSocketPaths,
    /// `WEBSOCKET_IDLE_TIMEOUT`: no frame either way for this long closes the tunnel.
    pub idle: Duration,
}

/// `WEBSOCKET_PATHS` and `WEBSOCKET_IDLE_TIMEOUT`. The timeout alone is accepted (a
/// deployment may set it ahead of the paths) and has no effect.
pub(super) fn websocket(
    var: &impl Fn(&'static str) -> Option<String>,
) -> Result<Option<WebSocket>, ConfigError> {
    let mut idle = limits::WEBSOCKET_IDLE_TIMEOUT;
    duration(var, "WEBSOCKET_IDLE_TIMEOUT", &mut idle)?;
    let Some(list) = var("WEBSOCKET_PATHS") else {
        return Ok(None);
    };
    let paths = WebSocketPaths::parse(&list).map_err(|r| ConfigError::new("WEBSOCKET_PATHS", r))?;
    Ok(Some(WebSocket { paths, idle }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Option<WebSocket>, ConfigError> {
        websocket(&|k: &'static str| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn off_unless_paths_are_listed() {
        assert_eq!(read(&[]), Ok(None));
        assert_eq!(read(&[("WEBSOCKET_IDLE_TIMEOUT", "10s")]), Ok(None));
        let on = read(&[("WEBSOCKET_PATHS", "/v1/responses")])
            .unwrap()
            .unwrap();
        assert!(on.paths.lists(b"/v1/responses"));
        assert_eq!(on.idle, limits::WEBSOCKET_IDLE_TIMEOUT);
    }

    #[test]
    fn a_bad_setting_names_itself_without_its_value() {
        let e = read(&[("WEBSOCKET_PATHS", "v1/secret")]).unwrap_err();
        assert_eq!(e.setting, "WEBSOCKET_PATHS");
        assert!(!e.to_string().contains("secret"));
        let e = read(&[("WEBSOCKET_PATHS", "/a"), ("WEBSOCKET_IDLE_TIMEOUT", "x")]).unwrap_err();
        assert_eq!(e.setting, "WEBSOCKET_IDLE_TIMEOUT");
    }
}
