//! The SSRF guard: a callback may only reach public addresses, unless the host's allow-list
//! names it. The check is on the address actually connected to: the sender resolves the host
//! itself, refuses denied addresses, and connects only to the ones it checked, on every
//! redirect hop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use reqwest::Url;

/// Targets the guard lets through although their address is denied: `host` (any port) or
/// `host:port`, compared with the URL's host as written (lowercase).
#[derive(Clone, Debug, Default)]
pub struct AllowList {
    entries: Vec<(String, Option<u16>)>,
}

impl AllowList {
    /// Parses `--allow-callback-host` entries.
    pub fn parse(entries: &[String]) -> Result<AllowList, String> {
        let mut out = Vec::new();
        for e in entries {
            let e = e.trim().to_ascii_lowercase();
            let (host, port) = match e.rsplit_once(':') {
                // `[::1]:8080`, `host:8080`; a bare IPv6 address has several colons.
                Some((h, p)) if !h.is_empty() && (h.ends_with(']') || !h.contains(':')) => {
                    let port = p.parse::<u16>().map_err(|_| {
                        format!("--allow-callback-host {e:?}: the port must be a number")
                    })?;
                    (h.to_string(), Some(port))
                }
                _ => (e.clone(), None),
            };
            if host.is_empty() {
                return Err(format!("--allow-callback-host {e:?} names no host"));
            }
            out.push((host, port));
        }
        Ok(AllowList { entries: out })
    }

    /// True when `host:port` is explicitly allowed.
    pub fn permits(&self, host: &str, port: u16) -> bool {
        self.entries
            .iter()
            .any(|(h, p)| h == host && p.is_none_or(|p| p == port))
    }
}

/// Why a target is refused.
pub fn denied(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => denied_v4(v4),
        IpAddr::V6(v6) => {
            // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d) forms hide an IPv4
            // address: judge that one.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return denied_v4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0, 0, 0, 0, 0, 0] && !(s[6] == 0 && s[7] <= 1) {
                return denied_v4(Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                ));
            }
            // NAT64 (64:ff9b::/96) embeds an IPv4 address too.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return denied_v4(Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                ));
            }
            if v6.is_loopback() {
                Some("a loopback address")
            } else if v6.is_unspecified() {
                Some("the unspecified address")
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("a private (unique local) address")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address")
            } else {
                None
            }
        }
    }
}

fn denied_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("the cloud metadata address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if o[0] == 0 {
        Some("an unspecified (0.0.0.0/8) address")
    } else if ip.is_broadcast() || ip.is_multicast() {
        Some("a broadcast or multicast address")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("a shared (carrier-grade NAT) address")
    } else {
        None
    }
}

/// Checks what can be checked of a callback URL without resolving: scheme, host, and a literal
/// IP address (however written: `2130706433`, `[::ffff:127.0.0.1]`).
pub fn check_url(url: &str, allow: &AllowList) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if parsed.scheme() != "http" && parsed.scheme() != "https" {
        return Err(format!("{url:?}: a callback URL is http or https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "{url:?}: credentials in a callback URL are not allowed"
        ));
    }
    let host = host_of(&parsed).ok_or_else(|| format!("{url:?} has no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    if allow.permits(&host, port) {
        return Ok(parsed);
    }
    if let Some(ip) = literal_ip(&parsed)
        && let Some(why) = denied(ip)
    {
        return Err(format!(
            "callback target {host} is {why}; refused (allow it with --allow-callback-host)"
        ));
    }
    Ok(parsed)
}

/// The URL's host as the allow-list compares it: lowercase, IPv6 in brackets.
pub fn host_of(url: &Url) -> Option<String> {
    match url.host()? {
        url::Host::Domain(d) => Some(d.to_ascii_lowercase()),
        url::Host::Ipv4(v4) => Some(v4.to_string()),
        url::Host::Ipv6(v6) => Some(format!("[{v6}]")),
    }
}

fn literal_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Domain(_) => None,
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
    }
}

/// The addresses a hop may connect to: every resolved address must pass (a name that resolves
/// to any denied address is refused, so DNS cannot smuggle one in next to a public one).
pub async fn resolve(url: &Url, allow: &AllowList) -> Result<Vec<SocketAddr>, String> {
    let host = host_of(url).ok_or("the URL has no host")?;
    let port = url.port_or_known_default().unwrap_or(80);
    let allowed = allow.permits(&host, port);
    let addrs: Vec<SocketAddr> = match literal_ip(url) {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    if !allowed {
        for a in &addrs {
            if let Some(why) = denied(a.ip()) {
                return Err(format!(
                    "callback target {host}:{port} resolves to {} ({why}); refused (allow it with --allow-callback-host)",
                    a.ip()
                ));
            }
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denies_internal_addresses_in_every_form() {
        for ip in [
            "127.0.0.1",
            "127.0.0.2",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(denied(ip.parse().unwrap()).is_some(), "{ip} must be denied");
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34"] {
            assert!(denied(ip.parse().unwrap()).is_none(), "{ip} is public");
        }
    }

    #[test]
    fn literal_hosts_are_checked_however_written() {
        let none = AllowList::default();
        for url in [
            "http://127.0.0.2/",
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://169.254.169.254/latest/meta-data",
        ] {
            assert!(check_url(url, &none).is_err(), "{url} must be refused");
        }
        assert!(check_url("ftp://example.com/", &none).is_err());
        let allow = AllowList::parse(&["127.0.0.1:8080".into(), "localhost".into()]).unwrap();
        assert!(check_url("http://127.0.0.1:8080/x", &allow).is_ok());
        assert!(check_url("http://127.0.0.1:8081/x", &allow).is_err());
        assert!(allow.permits("localhost", 1));
    }
}
