//! Who the client is: the peer address, or, when the peer is one of our own
//! proxies (`TRUSTED_PROXIES`), the address it forwarded in
//! `X-Forwarded-For`. A header from anyone else is ignored: it is the
//! client's to forge. The per-address limits count an IPv6 client by its
//! network (`IPV6_LIMIT_PREFIX`, a /64 by default), not its full address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use actix_web::HttpRequest;
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed (addresses or CIDR
/// ranges), and how an IPv6 client is counted by the per-address limits.
#[derive(Debug, Clone)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    ipv6_limit_prefix: u8,
}

impl Default for TrustedProxies {
    fn default() -> Self {
        TrustedProxies {
            nets: Vec::new(),
            ipv6_limit_prefix: 64,
        }
    }
}

impl TrustedProxies {
    /// Parses a space- or comma-separated list (`10.0.0.0/8 127.0.0.1 ::1`).
    pub fn parse(raw: &str) -> Result<Self, String> {
        raw.split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("'{item}' is not an IP address or CIDR range"))
            })
            .collect::<Result<_, _>>()
            .map(|nets| TrustedProxies {
                nets,
                ..TrustedProxies::default()
            })
    }

    /// Counts IPv6 clients by their first `bits` bits in the limits.
    pub fn with_ipv6_limit_prefix(mut self, bits: u8) -> Self {
        self.ipv6_limit_prefix = bits.min(128);
        self
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }

    /// Who `req` counts as for the per-address limits (login and password
    /// guessing, registrations, unauthorized sockets): the client's IPv4
    /// address, or its IPv6 network of `IPV6_LIMIT_PREFIX` bits, so a
    /// client rotating through its /64 does not get a fresh allowance with
    /// every address.
    pub fn limit_key(&self, req: &HttpRequest) -> IpAddr {
        network_of(self.client_ip(req), self.ipv6_limit_prefix)
    }

    /// The client's address for `req`.
    pub fn client_ip(&self, req: &HttpRequest) -> IpAddr {
        let peer = req
            .peer_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok());
        self.resolve(peer, forwarded)
    }

    /// Walks the forwarding chain from the nearest hop: the first address
    /// that is not a trusted proxy is the client.
    fn resolve<'a>(&self, peer: IpAddr, forwarded: impl Iterator<Item = &'a str>) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded.flat_map(|h| h.split(',')).collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop.trim().parse::<IpAddr>().map(canonical) {
                Ok(ip) => {
                    client = ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

/// `ip` with every bit past the first `bits` cleared (IPv6 only).
fn network_of(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if bits < 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        other => other,
    }
}

/// An IPv4 address seen through an IPv6 socket (`::ffff:1.2.3.4`) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let none = TrustedProxies::default();
        assert_eq!(
            none.resolve(ip("127.0.0.1"), ["6.6.6.6"].into_iter()),
            ip("127.0.0.1")
        );
        let proxies = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        assert_eq!(
            proxies.resolve(ip("127.0.0.1"), ["1.2.3.4"].into_iter()),
            ip("1.2.3.4")
        );
        // A client that forges a header gets its own address, appended by the proxy.
        assert_eq!(
            proxies.resolve(ip("10.1.1.1"), ["9.9.9.9, 5.6.7.8, 10.2.2.2"].into_iter()),
            ip("5.6.7.8")
        );
        assert_eq!(
            proxies.resolve(ip("8.8.8.8"), ["1.2.3.4"].into_iter()),
            ip("8.8.8.8")
        );
        assert_eq!(
            proxies.resolve(ip("::ffff:127.0.0.1"), ["garbage"].into_iter()),
            ip("127.0.0.1")
        );
        assert!(TrustedProxies::parse("not-an-ip").is_err());
    }

    #[test]
    fn ipv6_clients_are_counted_by_network() {
        assert_eq!(
            network_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(network_of(ip("2001:db8:1:2:3::1"), 48), ip("2001:db8:1::"));
        assert_eq!(network_of(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(network_of(ip("192.0.2.7"), 64), ip("192.0.2.7"));
    }
}
