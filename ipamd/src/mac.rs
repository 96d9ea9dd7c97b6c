//! Ethernet MAC addresses as instance metadata writes them (`02:00:0a:00:00:0a`) and as netlink
//! carries them (6 raw bytes). ENIs are matched to host links by MAC, never by name.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// A string that is not `xx:xx:xx:xx:xx:xx`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (expected six hex pairs separated by ':')")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(|| ParseMacError(s.to_owned()))?;
            if part.len() != 2 {
                return Err(ParseMacError(s.to_owned()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ParseMacError(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError(s.to_owned()));
        }
        Ok(Self(bytes))
    }
}

impl MacAddr {
    /// From netlink's `IFLA_ADDRESS` bytes; `None` unless exactly 6 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(Self)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn round_trips_and_is_case_insensitive() {
        let mac: MacAddr = "02:00:0A:00:00:0b".parse().unwrap();
        assert_eq!(mac.0, [2, 0, 10, 0, 0, 11]);
        assert_eq!(mac.to_string(), "02:00:0a:00:00:0b");
        assert_eq!(MacAddr::from_bytes(&[2, 0, 10, 0, 0, 11]), Some(mac));
        assert_eq!(MacAddr::from_bytes(&[1, 2, 3]), None);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "02:00:0a:00:00",
            "02:00:0a:00:00:0a:01",
            "0200:0a:00:00:0a",
            "zz:00:0a:00:00:0a",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
