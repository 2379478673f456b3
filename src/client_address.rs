//! Who the client is: the peer address, or, when the peer is one of our own
//! proxies (`TRUSTED_PROXIES`), the address it forwarded in
//! `X-Forwarded-For`. A header from anyone else is ignored: it is the
//! client's to forge.

use std::net::{IpAddr, Ipv4Addr};

use actix_web::HttpRequest;
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed: addresses or CIDR ranges.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

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
            .map(TrustedProxies)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
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
}
