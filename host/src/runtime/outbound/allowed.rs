//! `allowed_outbound_hosts`: the origins a function's handler may send HTTP requests to, in
//! Spin's syntax: `scheme://host[:port]`, where the scheme may be `*`, the host may start with
//! `*.` (any subdomain) or be `*` (any host), and the port may be `*` (any port; left out, the
//! scheme's default port).

use std::fmt;

/// Most entries one manifest may list.
pub const MAX_ALLOWED_HOSTS: usize = 64;

/// One `allowed_outbound_hosts` entry, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHost {
    /// `http`, `https`, or `None` for `*`.
    scheme: Option<String>,
    host: HostPattern,
    port: PortPattern,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum HostPattern {
    /// This host only (lowercase; an IPv6 address in brackets).
    Exact(String),
    /// Any subdomain of this domain (stored with its leading dot), not the domain itself.
    Subdomains(String),
    /// Any host.
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortPattern {
    /// The request's scheme's default port (80, 443).
    Default,
    Exact(u16),
    Any,
}

/// The default port of `scheme`.
pub fn default_port(scheme: &str) -> u16 {
    if scheme == "http" { 80 } else { 443 }
}

impl AllowedHost {
    /// Parses one entry, e.g. `https://api.example.com`, `http://127.0.0.1:9000`,
    /// `https://*.example.org`, `*://example.com:*`.
    pub fn parse(entry: &str) -> Result<AllowedHost, String> {
        let usage = "write scheme://host[:port], e.g. \"https://api.example.com\", \"http://127.0.0.1:9000\" or \"https://*.example.org\"";
        let lower = entry.trim().to_ascii_lowercase();
        let Some((scheme, rest)) = lower.split_once("://") else {
            return Err(format!(
                "allowed_outbound_hosts entry {entry:?} has no scheme: {usage}"
            ));
        };
        let scheme = match scheme {
            "http" | "https" => Some(scheme.to_string()),
            "*" => None,
            other => {
                return Err(format!(
                    "allowed_outbound_hosts entry {entry:?}: the scheme is http, https or *, not {other:?}"
                ));
            }
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "allowed_outbound_hosts entry {entry:?} names an origin, not a URL: leave out paths, queries and credentials ({usage})"
            ));
        }
        // An IPv6 address is bracketed: its port comes after the bracket.
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or_else(|| {
                format!("allowed_outbound_hosts entry {entry:?}: an IPv6 address ends with ]")
            })?;
            let addr: std::net::Ipv6Addr = addr.parse().map_err(|_| {
                format!("allowed_outbound_hosts entry {entry:?}: {addr} is not an IPv6 address")
            })?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| {
                    format!("allowed_outbound_hosts entry {entry:?}: write [addr]:port")
                })?),
            };
            (format!("[{addr}]"), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        let port = match port {
            None => PortPattern::Default,
            Some("*") => PortPattern::Any,
            Some(p) => PortPattern::Exact(p.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                format!(
                    "allowed_outbound_hosts entry {entry:?}: the port is a number from 1 to 65535 or *"
                )
            })?),
        };
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            check_domain(entry, domain)?;
            HostPattern::Subdomains(format!(".{domain}"))
        } else if host.starts_with('[') {
            HostPattern::Exact(host)
        } else {
            check_domain(entry, &host)?;
            // An IPv4 address in its usual form, whatever was written.
            match host.parse::<std::net::Ipv4Addr>() {
                Ok(v4) => HostPattern::Exact(v4.to_string()),
                Err(_) => HostPattern::Exact(host),
            }
        };
        Ok(AllowedHost { scheme, host, port })
    }

    /// True when a request to `scheme://host:port` is allowed by this entry. `host` is
    /// lowercase, an IPv6 address in brackets.
    pub fn permits(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == scheme);
        let port_ok = match self.port {
            PortPattern::Default => port == default_port(scheme),
            PortPattern::Exact(p) => p == port,
            PortPattern::Any => true,
        };
        let host_ok = match &self.host {
            HostPattern::Exact(h) => h == host,
            HostPattern::Subdomains(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
            HostPattern::Any => true,
        };
        scheme_ok && port_ok && host_ok
    }
}

fn check_domain(entry: &str, domain: &str) -> Result<(), String> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "allowed_outbound_hosts entry {entry:?}: {domain:?} is not a host name (a wildcard is only `*.` at the start, or `*` alone)"
        ))
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_deref().unwrap_or("*"))?;
        match &self.host {
            HostPattern::Exact(h) => write!(f, "{h}")?,
            HostPattern::Subdomains(s) => write!(f, "*{s}")?,
            HostPattern::Any => write!(f, "*")?,
        }
        match self.port {
            PortPattern::Default => Ok(()),
            PortPattern::Exact(p) => write!(f, ":{p}"),
            PortPattern::Any => write!(f, ":*"),
        }
    }
}

/// Validates a manifest's list and returns it normalised (as [`AllowedHost`] displays).
pub fn validate(entries: &[String]) -> Result<Vec<String>, String> {
    if entries.len() > MAX_ALLOWED_HOSTS {
        return Err(format!(
            "{} allowed_outbound_hosts entries: a function may list at most {MAX_ALLOWED_HOSTS}",
            entries.len()
        ));
    }
    entries
        .iter()
        .map(|e| AllowedHost::parse(e).map(|h| h.to_string()))
        .collect()
}

/// An origin as an `allowed_outbound_hosts` entry that allows exactly it.
pub fn origin(scheme: &str, host: &str, port: u16) -> String {
    if port == default_port(scheme) {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(entry: &str, scheme: &str, host: &str, port: u16) -> bool {
        AllowedHost::parse(entry)
            .unwrap()
            .permits(scheme, host, port)
    }

    #[test]
    fn entries_match_scheme_host_and_port() {
        assert!(allows(
            "https://api.example.com",
            "https",
            "api.example.com",
            443
        ));
        assert!(!allows(
            "https://api.example.com",
            "http",
            "api.example.com",
            80
        ));
        assert!(!allows(
            "https://api.example.com",
            "https",
            "api.example.com",
            8443
        ));
        assert!(!allows(
            "https://api.example.com",
            "https",
            "example.com",
            443
        ));
        assert!(allows("http://127.0.0.1:9000", "http", "127.0.0.1", 9000));
        assert!(!allows("http://127.0.0.1:9000", "http", "127.0.0.1", 9001));
        assert!(allows(
            "https://*.example.org",
            "https",
            "a.b.example.org",
            443
        ));
        assert!(!allows(
            "https://*.example.org",
            "https",
            "example.org",
            443
        ));
        assert!(!allows(
            "https://*.example.org",
            "https",
            "badexample.org",
            443
        ));
        assert!(allows("*://example.com:*", "http", "example.com", 8080));
        assert!(allows("*://*:*", "https", "anything.test", 1));
        assert!(allows("http://[::1]:8080", "http", "[::1]", 8080));
        assert!(allows(
            "HTTPS://API.Example.com/",
            "https",
            "api.example.com",
            443
        ));
    }

    #[test]
    fn bad_entries_say_what_to_write() {
        for bad in [
            "api.example.com",
            "ftp://example.com",
            "https://example.com/path",
            "https://user@example.com",
            "https://exa*mple.com",
            "https://*.",
            "https://example.com:99999",
            "https://example.com:x",
            "http://[::1",
            "http://[nope]",
        ] {
            let e = AllowedHost::parse(bad).unwrap_err();
            assert!(e.contains("allowed_outbound_hosts"), "{bad}: {e}");
        }
        let too_many: Vec<String> = (0..=MAX_ALLOWED_HOSTS)
            .map(|i| format!("https://h{i}.example.com"))
            .collect();
        assert!(validate(&too_many).is_err());
        assert_eq!(
            validate(&["HTTP://[0:0::1]:9000/".into()]).unwrap(),
            vec!["http://[::1]:9000"]
        );
        assert_eq!(
            validate(&["HTTPS://*.Example.org/".into()]).unwrap(),
            vec!["https://*.example.org"]
        );
    }

    #[test]
    fn an_origin_is_the_entry_that_allows_it() {
        let o = origin("http", "127.0.0.1", 9000);
        assert!(allows(&o, "http", "127.0.0.1", 9000));
        assert_eq!(
            origin("https", "api.example.com", 443),
            "https://api.example.com"
        );
    }
}
