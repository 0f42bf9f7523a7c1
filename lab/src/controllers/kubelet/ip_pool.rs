//! Pod addresses on loopback.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use rand::Rng;

/// Pod addresses: `127.X.Y.2..=254` for a random `X.Y` per lab, so labs
/// running side by side on one machine rarely share a block, and every
/// address is checked free by binding its ports before use. `127.X.Y.1` is
/// kept as the decoy address nothing listens on (`canary-unreachable`).
#[derive(Debug)]
pub struct IpPool {
    pub(super) x: u8,
    pub(super) y: u8,
    pub(super) used: HashSet<u8>,
    pub(super) next: u8,
    /// Addresses taken in the overflow blocks, as (third octet, fourth octet).
    pub(super) overflow: HashSet<(u8, u8)>,
}

/// Blocks after `127.X.Y.0/24` (`127.X.Y+1.0/24`, ...) a pool overflows into
/// once the first is full, so the benchmarks can run a thousand Pods. Until
/// then only the first block is used.
pub(super) const OVERFLOW_BLOCKS: u8 = 7;

impl IpPool {
    /// A pool in a random block.
    pub fn random() -> IpPool {
        let mut rng = rand::rng();
        IpPool::new(rng.random_range(16..=250), rng.random())
    }

    /// A pool in block `127.x.y.0/24`.
    pub fn new(x: u8, y: u8) -> IpPool {
        IpPool {
            x,
            y,
            used: HashSet::new(),
            next: 2,
            overflow: HashSet::new(),
        }
    }

    pub(super) fn describe(&self) -> String {
        format!("127.{}.{}.0/24", self.x, self.y)
    }

    /// The address nothing listens on.
    pub fn decoy(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, self.x, self.y, 1)
    }

    /// A free address where every port in `ports` can be bound.
    pub fn allocate(&mut self, ports: &[u16]) -> Option<Ipv4Addr> {
        for _ in 0..253 {
            let z = self.next;
            self.next = if self.next >= 254 { 2 } else { self.next + 1 };
            if self.used.contains(&z) {
                continue;
            }
            let ip = Ipv4Addr::new(127, self.x, self.y, z);
            let free = ports
                .iter()
                .all(|p| TcpListener::bind(SocketAddr::from((ip, *p))).is_ok());
            if free {
                self.used.insert(z);
                return Some(ip);
            }
        }
        for k in 1..=OVERFLOW_BLOCKS {
            let y = self.y.wrapping_add(k);
            for z in 2..=254u8 {
                if self.overflow.contains(&(y, z)) {
                    continue;
                }
                let ip = Ipv4Addr::new(127, self.x, y, z);
                let free = ports
                    .iter()
                    .all(|p| TcpListener::bind(SocketAddr::from((ip, *p))).is_ok());
                if free {
                    self.overflow.insert((y, z));
                    return Some(ip);
                }
            }
        }
        None
    }

    /// Give an address back.
    pub fn release(&mut self, ip: Ipv4Addr) {
        let o = ip.octets();
        if o[2] == self.y {
            self.used.remove(&o[3]);
        } else {
            self.overflow.remove(&(o[2], o[3]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_pool_allocates_distinct_addresses_and_skips_busy_ones() {
        let mut pool = IpPool::random();
        let a = pool.allocate(&[8080]).unwrap();
        // Occupy the next address's port: the pool must skip it.
        let mut probe = IpPool::new(a.octets()[1], a.octets()[2]);
        probe.next = a.octets()[3] + 1;
        let busy_ip = Ipv4Addr::new(127, a.octets()[1], a.octets()[2], a.octets()[3] + 1);
        let _hold = TcpListener::bind((busy_ip, 8080)).unwrap();
        let b = pool.allocate(&[8080]).unwrap();
        assert_ne!(a, b);
        assert_ne!(b, busy_ip);
        assert_ne!(a, pool.decoy());
        pool.release(a);
        assert!(!pool.used.contains(&a.octets()[3]));
    }

    #[test]
    fn ip_pool_overflows_into_the_next_block_when_full() {
        let mut pool = IpPool::random();
        let ips: HashSet<Ipv4Addr> = (0..300).map(|_| pool.allocate(&[8080]).unwrap()).collect();
        assert_eq!(ips.len(), 300);
        assert!(ips.iter().filter(|ip| ip.octets()[2] == pool.y).count() >= 250);
        let later = *ips.iter().find(|ip| ip.octets()[2] != pool.y).unwrap();
        pool.release(later);
        assert!(!pool
            .overflow
            .contains(&(later.octets()[2], later.octets()[3])));
    }
}
