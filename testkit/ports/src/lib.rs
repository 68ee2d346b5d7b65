//! riptide-test-ports: ports on 127.0.0.1 for the servers tests start, that no other test
//! process on the machine is handed and no outgoing connection takes.
//!
//! Binding port 0 and closing the socket again gives a port from the kernel's ephemeral range,
//! the range outgoing connections take their local ports from. Between that probe and the
//! server's own bind (or a node's restart on the same port), a connection made by this test or
//! by a test running beside it can take the port, and the server fails with "address already
//! in use". So the ports come from outside the ephemeral range, and each is claimed by binding
//! a Unix socket with an abstract name (`riptide-test-port-N`) that this process holds until it
//! exits. The kernel refuses a second bind of the same name, so test processes running at once
//! never claim the same port, and it drops the claim when the process exits, however it exits;
//! there are no files to clean up.
//!
//! Every test suite that starts servers (the node, the `riptide` binary, raft and the delivery
//! daemon) takes its ports from this crate, a dev-dependency of each, so that all test
//! processes share one set of claims. It depends on nothing but std (Linux: abstract Unix
//! socket names).

use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::sync::Mutex;

/// Ports below this are left to services with well-known ports (PostgreSQL, NATS, the dev
/// cluster's defaults, ...).
const LOWEST: u16 = 20_000;
const HIGHEST: u16 = 65_000;

/// The claims of this process, held until it exits.
static HELD: Mutex<Vec<UnixListener>> = Mutex::new(Vec::new());

/// One free port, claimed for the life of this process.
pub fn free_port() -> u16 {
    consecutive(1)
}

/// The first of `n` consecutive free ports, all claimed for the life of this process.
pub fn consecutive(n: u16) -> u16 {
    assert!(n >= 1, "at least one port");
    let (eph_low, eph_high) = ephemeral_range();
    let bases: Vec<u16> = (LOWEST..=HIGHEST - (n - 1))
        .filter(|b| b + (n - 1) < eph_low || *b > eph_high)
        .collect();
    assert!(
        !bases.is_empty(),
        "no ports in {LOWEST}..={HIGHEST} outside the ephemeral range {eph_low}..={eph_high}"
    );
    // Start somewhere else in every process, so that a port one test process just let go of
    // (and a straggling peer may still be calling) is not the next one handed out.
    let start = seed() % bases.len();
    for i in 0..bases.len() {
        let base = bases[(start + i) % bases.len()];
        let Some(claims) = (base..base + n).map(claim).collect::<Option<Vec<_>>>() else {
            continue;
        };
        // Something outside the tests may listen there; skip such ports.
        if (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            HELD.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .extend(claims);
            return base;
        }
    }
    panic!("no {n} consecutive free ports in {LOWEST}..={HIGHEST} outside {eph_low}..={eph_high}");
}

/// Claims `port` among test processes; `None` when another process holds it.
fn claim(port: u16) -> Option<UnixListener> {
    let name = format!("riptide-test-port-{port}");
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).ok()?;
    UnixListener::bind_addr(&addr).ok()
}

/// The kernel's ephemeral port range, Linux's default when it cannot be read.
fn ephemeral_range() -> (u16, u16) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text.split_whitespace().map(|s| s.parse::<u16>());
    match (it.next(), it.next()) {
        (Some(Ok(low)), Some(Ok(high))) if low <= high => (low, high),
        _ => (32_768, 60_999),
    }
}

fn seed() -> usize {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (std::process::id() as usize).wrapping_mul(7_919) ^ nanos as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_ports_are_outside_the_ephemeral_range_and_never_handed_out_twice() {
        let (eph_low, eph_high) = ephemeral_range();
        let outside = |p: u16| (LOWEST..=HIGHEST).contains(&p) && (p < eph_low || p > eph_high);
        let base = consecutive(3);
        let single = free_port();
        for p in [base, base + 1, base + 2, single] {
            assert!(
                outside(p),
                "port {p} in the ephemeral range {eph_low}..={eph_high}"
            );
            // Claimed by this process: another claim of the same port fails.
            assert!(claim(p).is_none(), "port {p} is not claimed");
        }
        assert!(
            !(base..base + 3).contains(&single),
            "{single} handed out twice"
        );
    }
}
