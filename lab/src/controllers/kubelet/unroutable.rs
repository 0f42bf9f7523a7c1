//! Unroutable Pod addresses (real cluster tier, `--unroutable-pods`): the
//! node advertises each Pod at an IPv6 address of the discard-only prefix
//! `100::/64` (RFC 6666), while its processes listen on their loopback
//! address. A client dialling `status.podIP` from the host cannot connect
//! (no route, or packets dropped until the connect times out), as a prober
//! outside a cluster's network cannot; the API server reaches the Pods
//! through the lab's egress proxy (`crate::real::egress`), which maps each
//! advertised address back here.
//!
//! Why not an IPv4 range such as TEST-NET or 198.18.0.0/15: on hosts behind
//! a transparent proxy (CI sandboxes) every IPv4 destination off the local
//! subnet is answered by the proxy, so a "direct" connect would succeed.
//! kube-apiserver proxies only to global-unicast Pod IPs (not loopback,
//! link-local or multicast), which `100::/64` is.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

/// The advertised address of each Pod's real (loopback) address.
#[derive(Debug, Default)]
pub struct UnroutablePods {
    real_of: Mutex<HashMap<IpAddr, Ipv4Addr>>,
}

impl UnroutablePods {
    /// The address advertised for the Pod listening on `real`
    /// (`127.X.Y.Z` -> `100::Y:Z`: one lab uses one `X`, so it is unique).
    pub fn advertise(&self, real: Ipv4Addr) -> IpAddr {
        let [_, _, y, z] = real.octets();
        let shown = IpAddr::V6(Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, y.into(), z.into()));
        if let Ok(mut m) = self.real_of.lock() {
            m.insert(shown, real);
        }
        shown
    }

    /// The real address of an advertised one, if it is one.
    pub fn resolve(&self, shown: IpAddr) -> Option<Ipv4Addr> {
        self.real_of.lock().ok()?.get(&shown).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_addresses_map_back_and_are_global_unicast() {
        let u = UnroutablePods::default();
        let real = Ipv4Addr::new(127, 40, 7, 9);
        let shown = u.advertise(real);
        assert_eq!(shown.to_string(), "100::7:9");
        assert!(!shown.is_loopback() && !shown.is_multicast() && !shown.is_unspecified());
        assert_eq!(u.resolve(shown), Some(real));
        assert_eq!(u.resolve("100::7:10".parse().unwrap()), None);
    }
}
