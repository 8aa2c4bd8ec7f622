//! An address scan for tests, written independently of the daemon's: it finds what the standard library's
//! parsers read as an IP address anywhere in a text, and says whether an address was truncated.
//!
//! The text is cut into tokens at every character that cannot be part of an address (anything but hex
//! digits, `.` and `:`), and each token is tried whole, without the dots and colons at its ends, piece by
//! piece between colons (`1.2.3.4:443`, `from:1.2.3.4`), and by its runs of digits and dots (`v1.2.3.4`,
//! `a1.2.3.4`), with `IpAddr`'s and `SocketAddr`'s parsers.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Every address found in `text`. An IPv6 address glued to a word (`pipeline::fetcher` holds `e::fe`) is
/// part of a name, not an address.
pub fn find(text: &str) -> BTreeSet<IpAddr> {
    let mut found = BTreeSet::new();
    let is_part = |c: char| c.is_ascii_hexdigit() || c == '.' || c == ':';
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut tokens = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        match (is_part(c) && i < text.len(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                tokens.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    for (s, e) in tokens {
        let token = &text[s..e];
        let glued = is_word(text[..s].chars().next_back()) || is_word(text[e..].chars().next());
        let mut candidates =
            vec![token.to_string(), token.trim_matches(|c| c == ':' || c == '.').to_string()];
        candidates.extend(token.split(':').map(str::to_string));
        candidates.extend(
            token.split(|c: char| !(c.is_ascii_digit() || c == '.')).map(|r| r.trim_matches('.').to_string()),
        );
        // `[v6]:port` loses its brackets to the cut; a v4 `ip:port` is tried as a socket address too.
        for c in candidates.iter().filter(|c| !c.is_empty()) {
            if let Ok(a) = c.parse::<IpAddr>() {
                if !(glued && a.is_ipv6() && c.as_str() == token) {
                    found.insert(a);
                }
            } else if let Ok(s) = c.parse::<SocketAddr>() {
                found.insert(s.ip());
            }
        }
    }
    found
}

/// The IPv4 addresses an IPv6 address carries: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`), 6to4 (`2002:AABB:CCDD::`), and Teredo's server and
/// (obfuscated) client.
pub fn embedded_ipv4(a: &Ipv6Addr) -> Vec<(&'static str, Ipv4Addr)> {
    let bits = u128::from(*a);
    let low32 = Ipv4Addr::from(bits as u32);
    let mut out = Vec::new();
    if bits >> 32 == 0xffff {
        out.push(("mapped", low32));
    }
    if bits >> 32 == 0 && bits > 1 {
        out.push(("compatible", low32));
    }
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        out.push(("nat64", low32));
    }
    if bits >> 112 == 0x2002 {
        out.push(("6to4", Ipv4Addr::from((bits >> 80) as u32)));
    }
    if bits >> 96 == 0x2001_0000 {
        out.push(("teredo server", Ipv4Addr::from((bits >> 64) as u32)));
        out.push(("teredo client", Ipv4Addr::from(!(bits as u32))));
    }
    out
}

/// Why `a` still identifies a host, if it does: an IPv4 address keeps at most its /24, an IPv6 address its
/// /48, and an IPv4 address it carries at most its /24 (a Teredo client none at all).
pub fn full_address(a: &IpAddr) -> Option<String> {
    match a {
        IpAddr::V4(v4) if v4.octets()[3] != 0 => Some(format!("{v4} keeps more than its /24")),
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) => {
            let bits = u128::from(*v6);
            for (form, v4) in embedded_ipv4(v6) {
                let whole = match form {
                    // Truncation removes the client altogether: its obfuscated bits are all zero.
                    "teredo client" => (bits as u32) != 0,
                    "teredo server" => false,
                    _ => v4.octets()[3] != 0,
                };
                if whole {
                    return Some(format!("{v6} carries the IPv4 address {v4} ({form})"));
                }
            }
            let mapped = bits >> 32 == 0xffff;
            if !mapped && bits & ((1u128 << 80) - 1) != 0 {
                return Some(format!("{v6} keeps more than its /48"));
            }
            None
        }
    }
}
