//! Where the sandbox reaches the proxy besides `LISTEN_ADDR:LISTEN_PORT`: a Unix socket
//! (`LISTEN_UNIX`, its mode and group), the peer uids it admits (`ALLOW_PEER_UIDS`), and a
//! socket passed by systemd (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`).

use std::path::PathBuf;

use super::ConfigError;

/// The longest Unix socket path Linux takes: `sun_path` is 108 bytes, NUL included (unix(7)).
pub const SUN_PATH_MAX: usize = 107;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`, sd_listen_fds(3)).
pub const LISTEN_FDS_START: i32 = 3;

/// `LISTEN_UNIX` and how its socket file is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixListen {
    pub path: PathBuf,
    /// `LISTEN_UNIX_MODE`: the permission bits of the socket file (connect needs write).
    pub mode: u32,
    /// `LISTEN_UNIX_GROUP`: the group the socket file is given, as a gid.
    pub group: Option<u32>,
}

/// The listening socket systemd passed (sd_listen_fds(3)): a descriptor number from 3 on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activation {
    pub fd: i32,
}

/// `LISTEN_UNIX`, `LISTEN_UNIX_MODE`, `LISTEN_UNIX_GROUP`.
pub(super) fn unix_listen(
    var: &impl Fn(&'static str) -> Option<String>,
) -> Result<Option<UnixListen>, ConfigError> {
    let err = ConfigError::new;
    let Some(path) = var("LISTEN_UNIX") else {
        for dependent in ["LISTEN_UNIX_MODE", "LISTEN_UNIX_GROUP"] {
            if var(dependent).is_some() {
                return Err(err(dependent, "needs LISTEN_UNIX"));
            }
        }
        return Ok(None);
    };
    if path.len() > SUN_PATH_MAX || path.contains('\0') {
        return Err(ConfigError::new(
            "LISTEN_UNIX",
            format!("is longer than a Unix socket path may be ({SUN_PATH_MAX} bytes)"),
        ));
    }
    let mode = match var("LISTEN_UNIX_MODE") {
        None => 0o600,
        Some(m) => parse_mode(&m).ok_or(err(
            "LISTEN_UNIX_MODE",
            "must be octal permission bits, like 0600 or 0660",
        ))?,
    };
    let group = match var("LISTEN_UNIX_GROUP") {
        None => None,
        Some(g) => Some(group_id(&g, &etc_group())?),
    };
    Ok(Some(UnixListen {
        path: PathBuf::from(path),
        mode,
        group,
    }))
}

/// Octal permission bits, at most `0777` (no set-id or sticky bits).
fn parse_mode(s: &str) -> Option<u32> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|&m| m <= 0o777)
}

/// `/etc/group`, or empty when it cannot be read. Read directly: a static binary has no NSS,
/// so a group known only to LDAP or sssd must be given as a number.
fn etc_group() -> String {
    std::fs::read_to_string("/etc/group").unwrap_or_default()
}

/// A gid given as a number, or a group name looked up in `group` (the text of `/etc/group`,
/// group(5): `name:password:gid:members`).
fn group_id(given: &str, group: &str) -> Result<u32, ConfigError> {
    if given.bytes().all(|b| b.is_ascii_digit()) {
        return given
            .parse()
            .map_err(|_| ConfigError::new("LISTEN_UNIX_GROUP", "must be a group name or a gid"));
    }
    group
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(name, _)| *name == given)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or(ConfigError::new(
            "LISTEN_UNIX_GROUP",
            "is not a group in /etc/group (give the gid instead)",
        ))
}

/// `ALLOW_PEER_UIDS`: a comma-separated list of uids; `None` when unset (every peer).
pub(super) fn peer_uids(
    var: &impl Fn(&'static str) -> Option<String>,
) -> Result<Option<Vec<u32>>, ConfigError> {
    let Some(list) = var("ALLOW_PEER_UIDS") else {
        return Ok(None);
    };
    let mut uids = Vec::new();
    for item in list.split(',').map(str::trim) {
        let uid = item
            .parse::<u32>()
            .ok()
            .filter(|_| item.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(ConfigError::new(
                "ALLOW_PEER_UIDS",
                "must be a comma-separated list of numeric uids",
            ))?;
        uids.push(uid);
    }
    Ok(Some(uids))
}

/// Socket activation (sd_listen_fds(3)): `LISTEN_PID` must be this process (otherwise the
/// variables were meant for another and are ignored), `LISTEN_FDS` the number of sockets
/// passed from fd 3 on. One socket is served; more are refused rather than left unserved.
pub(super) fn activation(
    var: &impl Fn(&'static str) -> Option<String>,
    pid: u32,
) -> Result<Option<Activation>, ConfigError> {
    let Some(fds) = var("LISTEN_FDS") else {
        return Ok(None);
    };
    let ours = var("LISTEN_PID").is_some_and(|p| p.trim().parse::<u32>() == Ok(pid));
    if !ours {
        return Ok(None);
    }
    match fds.trim().parse::<u32>() {
        Ok(1) => Ok(Some(Activation {
            fd: LISTEN_FDS_START,
        })),
        Ok(0) => Ok(None),
        Ok(n) => Err(ConfigError::new(
            "LISTEN_FDS",
            format!(
                "systemd passed {n} sockets, but the proxy serves exactly one: give its \
                 socket unit a single ListenStream= line"
            ),
        )),
        Err(_) => Err(ConfigError::new(
            "LISTEN_FDS",
            "must be the number of sockets systemd passed (the proxy serves exactly one)",
        )),
    }
}

/// How many descriptors `LISTEN_FDS` says were passed from fd 3 on, whether or not
/// `LISTEN_PID` names this process (0 when unset or not a number): all of them are made
/// close-on-exec at bind, so that none reaches a token command, served or not.
pub(super) fn passed_fds(var: &impl Fn(&'static str) -> Option<String>) -> u32 {
    var("LISTEN_FDS")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&str, &str)]) -> impl Fn(&'static str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn a_unix_socket_defaults_to_0600_and_no_group() {
        let u = unix_listen(&vars(&[("LISTEN_UNIX", "/run/alp/sock")]))
            .unwrap()
            .unwrap();
        assert_eq!((u.mode, u.group), (0o600, None));
    }

    #[test]
    fn a_path_longer_than_sun_path_is_refused() {
        let long = format!("/{}", "a".repeat(SUN_PATH_MAX));
        let e = unix_listen(&vars(&[("LISTEN_UNIX", &long)])).unwrap_err();
        assert_eq!(e.setting, "LISTEN_UNIX");
        let fits = format!("/{}", "a".repeat(SUN_PATH_MAX - 1));
        assert!(unix_listen(&vars(&[("LISTEN_UNIX", &fits)])).is_ok());
    }

    #[test]
    fn modes_are_octal_permission_bits() {
        assert_eq!(parse_mode("0660"), Some(0o660));
        assert_eq!(parse_mode("600"), Some(0o600));
        for bad in ["", "0800", "4755", "rw", "01777"] {
            assert_eq!(parse_mode(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_group_is_a_gid_or_a_name_in_etc_group() {
        let table = "root:x:0:\nagents:x:1234:alice,bob\n";
        assert_eq!(group_id("77", table), Ok(77));
        assert_eq!(group_id("agents", table), Ok(1234));
        assert!(group_id("nobody-here", table).is_err());
    }

    #[test]
    fn mode_and_group_need_the_socket() {
        let e = unix_listen(&vars(&[("LISTEN_UNIX_MODE", "0660")])).unwrap_err();
        assert_eq!(e.setting, "LISTEN_UNIX_MODE");
    }

    #[test]
    fn peer_uids_are_numbers() {
        let got = peer_uids(&vars(&[("ALLOW_PEER_UIDS", "1000, 1001")])).unwrap();
        assert_eq!(got, Some(vec![1000, 1001]));
        for bad in ["x", "1000,,", "-1", "+5"] {
            assert!(
                peer_uids(&vars(&[("ALLOW_PEER_UIDS", bad)])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn activation_is_for_this_pid_only() {
        let v = [("LISTEN_FDS", "1"), ("LISTEN_PID", "42")];
        assert_eq!(
            activation(&vars(&v), 42).unwrap(),
            Some(Activation { fd: 3 })
        );
        assert_eq!(activation(&vars(&v), 43).unwrap(), None);
        let two = [("LISTEN_FDS", "2"), ("LISTEN_PID", "42")];
        let e = activation(&vars(&two), 42).unwrap_err();
        assert_eq!(e.setting, "LISTEN_FDS");
        assert!(e.to_string().contains("passed 2 sockets"), "{e}");
        assert!(e.to_string().contains("exactly one"), "{e}");
    }

    #[test]
    fn passed_descriptors_are_counted_for_any_pid() {
        let v = [("LISTEN_FDS", "3"), ("LISTEN_PID", "1")];
        assert_eq!(passed_fds(&vars(&v)), 3);
        assert_eq!(passed_fds(&vars(&[("LISTEN_FDS", "x")])), 0);
        assert_eq!(passed_fds(&vars(&[])), 0);
    }
}
