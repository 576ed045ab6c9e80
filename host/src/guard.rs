//! The SSRF guard: whatever the host sends on a user's behalf (webhook callbacks, handlers'
//! outbound HTTP) may only reach public addresses, unless the operator's allow-list names the
//! target. The check is on the address actually connected to: the sender resolves the host
//! itself, refuses denied addresses, and connects only to the ones it checked (a
//! [`PinnedClients`] client), on every redirect hop.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use parking_lot::Mutex;
use reqwest::Url;

/// Who is sending, for the guard's refusals: what the target is called and which operator flag
/// allows an internal one.
#[derive(Clone, Copy, Debug)]
pub struct Purpose {
    /// What the refused target is, e.g. "callback target".
    pub what: &'static str,
    /// The `sluice serve` flag that allows an internal target.
    pub flag: &'static str,
}

/// Webhook callbacks (`--allow-callback-host`).
pub const CALLBACK: Purpose = Purpose {
    what: "callback target",
    flag: "--allow-callback-host",
};

/// Handlers' outbound HTTP requests (`--allow-outbound-host`).
pub const OUTBOUND: Purpose = Purpose {
    what: "outbound request to",
    flag: "--allow-outbound-host",
};

/// Targets the guard lets through although their address is denied: `host` (any port) or
/// `host:port`, compared with the URL's host as written (lowercase).
#[derive(Clone, Debug, Default)]
pub struct AllowList {
    entries: Vec<(String, Option<u16>)>,
}

impl AllowList {
    /// Parses allow-list entries (of `purpose`'s flag): `host`, `host:port`, `[v6]`,
    /// `[v6]:port`, or a bare IPv6 address (`::1`, any port). IP addresses are compared in their
    /// usual form.
    pub fn parse(entries: &[String], purpose: Purpose) -> Result<AllowList, String> {
        let flag = purpose.flag;
        let mut out = Vec::new();
        for e in entries {
            let e = e.trim().to_ascii_lowercase();
            let (host, port) = if let Ok(v6) = e.parse::<std::net::Ipv6Addr>() {
                (format!("[{v6}]"), None)
            } else if e.starts_with('[') && e.ends_with(']') {
                (e.clone(), None)
            } else {
                match e.rsplit_once(':') {
                    Some((h, p)) if !h.is_empty() && (h.ends_with(']') || !h.contains(':')) => {
                        let port = p
                            .parse::<u16>()
                            .map_err(|_| format!("{flag} {e:?}: the port must be a number"))?;
                        (h.to_string(), Some(port))
                    }
                    Some(_) => {
                        return Err(format!(
                            "{flag} {e:?} is neither host, host:port nor an IPv6 address; write an IPv6 address with a port as [addr]:port"
                        ));
                    }
                    None => (e.clone(), None),
                }
            };
            if host.is_empty() {
                return Err(format!("{flag} {e:?} names no host"));
            }
            let host = match host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<IpAddr>()
            {
                Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
                Ok(IpAddr::V4(v4)) => v4.to_string(),
                Err(_) if host.starts_with('[') => {
                    return Err(format!("{flag} {e:?}: {host} is not an IPv6 address"));
                }
                Err(_) => host,
            };
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
            // NAT64 (64:ff9b::/96) and IPv4-translated (::ffff:0:a.b.c.d) embed one at the end.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..6] == [0, 0, 0, 0, 0xffff, 0] {
                return denied_v4(Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                ));
            }
            // 6to4 (2002::/16) embeds one after the prefix.
            if s[0] == 0x2002 {
                return denied_v4(Ipv4Addr::new(
                    (s[1] >> 8) as u8,
                    s[1] as u8,
                    (s[2] >> 8) as u8,
                    s[2] as u8,
                ));
            }
            // Local-use NAT64 (64:ff9b:1::/48) places it anywhere; Teredo (2001::/32) hides it.
            if s[..3] == [0x64, 0xff9b, 1] {
                return Some("a local-use NAT64 address");
            }
            if s[..2] == [0x2001, 0] {
                return Some("a Teredo tunnel address");
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
            } else if (s[0] & 0xffc0) == 0xfec0 {
                Some("a site-local address")
            } else if s[..2] == [0x2001, 0xdb8] {
                Some("a documentation address")
            } else if s[..4] == [0x100, 0, 0, 0] {
                Some("a discard-only address")
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
    } else if o[0] >= 240 {
        Some("a reserved (240.0.0.0/4) address")
    } else if o[..3] == [192, 0, 0] {
        Some("an IETF protocol assignment (192.0.0.0/24)")
    } else if o[..3] == [192, 0, 2] || o[..3] == [198, 51, 100] || o[..3] == [203, 0, 113] {
        Some("a documentation address")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("a benchmarking (198.18.0.0/15) address")
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

/// Why a hop was not sent.
#[derive(Debug)]
pub struct Refusal {
    /// For the job's callback state: says why without revealing internal addresses.
    pub message: String,
    /// True when trying again later may work (a failed name lookup), false for a denied target.
    pub transient: bool,
}

/// The addresses a hop may connect to: every resolved address must pass (a name that resolves
/// to any denied address is refused, so DNS cannot smuggle one in next to a public one). The
/// refusal names the kind of address, never the address: a callback's error must not map the
/// host's network for whoever submitted it.
pub async fn resolve(
    url: &Url,
    allow: &AllowList,
    purpose: Purpose,
) -> Result<Vec<SocketAddr>, Refusal> {
    let host = host_of(url).ok_or(Refusal {
        message: "the URL has no host".into(),
        transient: false,
    })?;
    let port = url.port_or_known_default().unwrap_or(80);
    let allowed = allow.permits(&host, port);
    let addrs: Vec<SocketAddr> = match literal_ip(url) {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| Refusal {
                message: format!("cannot resolve {host}: {e}; tried again later"),
                transient: true,
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(Refusal {
            message: format!("{host} resolves to no address; tried again later"),
            transient: true,
        });
    }
    if !allowed {
        for a in &addrs {
            if let Some(why) = denied(a.ip()) {
                return Err(Refusal {
                    message: format!(
                        "{} {host}:{port} resolves to {why}; refused (the host operator allows it with {})",
                        purpose.what, purpose.flag
                    ),
                    transient: false,
                });
            }
        }
    }
    Ok(addrs)
}

/// Clients kept at most by one [`PinnedClients`] (all are dropped when it fills).
const MAX_CLIENTS: usize = 256;

/// HTTP clients that connect a host name only to the addresses the guard checked for it, kept
/// per (host, checked addresses): repeated requests to one origin reuse its TLS setup and
/// connections, and a change in what the name resolves to makes a new client. They never
/// follow redirects (a redirect is a new target for the guard to judge).
pub struct PinnedClients {
    clients: Mutex<HashMap<(String, Vec<SocketAddr>), reqwest::Client>>,
    timeout: Option<Duration>,
}

impl PinnedClients {
    /// Clients whose requests each take at most `timeout` (none: the caller bounds them).
    pub fn new(timeout: Option<Duration>) -> Self {
        PinnedClients {
            clients: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// The client that connects `host` (as [`host_of`] writes it) only to `addrs`.
    pub fn client(&self, host: &str, addrs: &[SocketAddr]) -> reqwest::Result<reqwest::Client> {
        let mut sorted = addrs.to_vec();
        sorted.sort();
        let key = (host.to_string(), sorted);
        let mut clients = self.clients.lock();
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .resolve_to_addrs(host.trim_matches(|c| c == '[' || c == ']'), addrs);
        if let Some(timeout) = self.timeout {
            builder = builder.timeout(timeout);
        }
        let client = builder.build()?;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }
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
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.0.8",
            "fec0::1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "64:ff9b:1::a00:1",
            "::ffff:0:7f00:1",
            "2001:0:4136:e378::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(denied(ip.parse().unwrap()).is_some(), "{ip} must be denied");
        }
        for ip in [
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:93.184.216.34",
            "2002:5db8:d822::1",
            "198.20.0.1",
            "192.0.3.1",
        ] {
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
        let allow =
            AllowList::parse(&["127.0.0.1:8080".into(), "localhost".into()], CALLBACK).unwrap();
        assert!(check_url("http://127.0.0.1:8080/x", &allow).is_ok());
        assert!(check_url("http://127.0.0.1:8081/x", &allow).is_err());
        assert!(allow.permits("localhost", 1));
    }

    #[test]
    fn allow_list_entries_in_every_form() {
        let allow = AllowList::parse(
            &[
                "::1".into(),
                "[::2]:9000".into(),
                "[0:0::3]".into(),
                "Example.COM:8443".into(),
            ],
            CALLBACK,
        )
        .unwrap();
        assert!(check_url("http://[::1]:7000/", &allow).is_ok());
        assert!(check_url("http://[::2]:9000/", &allow).is_ok());
        assert!(check_url("http://[::2]:9001/", &allow).is_err());
        assert!(allow.permits("[::3]", 80));
        assert!(allow.permits("example.com", 8443));
        for bad in ["::1:x", "[nope]", "host:port", ":80"] {
            assert!(AllowList::parse(&[bad.into()], CALLBACK).is_err(), "{bad}");
        }
    }
}
