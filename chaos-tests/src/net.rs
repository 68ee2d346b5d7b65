//! The drill's network: one namespace per node, joined by a bridge in a hub namespace, plus a
//! veth from the harness's own namespace so that the workload reaches every node.
//!
//! ```text
//!   harness (this process)          hub namespace              node namespaces
//!   rptcNNNNc 10.213.S.254 ─── veth ─── hc ┐
//!                                          br0 ── h1 ─── veth ─── eth0 10.213.S.1  (node 1)
//!                                              ── h2 ─── veth ─── eth0 10.213.S.2  (node 2)
//! ```
//!
//! Faults are routes: a one-way cut from A to B is a blackhole route to B's address inside A's
//! namespace, so A's packets to B vanish while B's still reach A (which, for TCP, starves the
//! connection both ways as a real asymmetric cut does). Isolating a node cuts it both ways from
//! every other host, the harness included. Nothing here needs a firewall or `tc netem`.
//!
//! Everything is created by [`Net::create`] and removed by [`Net::destroy`] (also on drop);
//! namespaces left behind by a drill that was killed are removed by the next one
//! ([`remove_stale`]). Traffic goes only to the addresses made here.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

/// The harness's side of the network, as a host index for [`Net::cut`].
pub const HARNESS: usize = 0;

/// Prefix of every namespace and interface a drill makes.
const PREFIX: &str = "rptc";

/// A failure of an `ip` command.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `ip` could not be started at all.
    #[error("could not run `ip {args}`: {source} (drills need iproute2 and root)")]
    Spawn {
        /// The arguments.
        args: String,
        /// Why.
        source: std::io::Error,
    },
    /// `ip` ran and failed.
    #[error("`ip {args}` failed: {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// What it printed.
        stderr: String,
    },
    /// No free subnet for the drill's addresses.
    #[error("no free 10.213.x.0/24 subnet for the drill network")]
    NoSubnet,
}

/// Runs `ip` with `args`.
fn ip(args: &[&str]) -> Result<String, NetError> {
    let joined = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetError::Failed {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Namespaces named by drills whose process is gone, removed.
pub fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            // Node processes of a drill that was killed outlive it; they go with their namespace.
            if let Ok(pids) = ip(&["netns", "pids", name]) {
                for pid in pids.split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            let _ = ip(&["netns", "del", name]);
            let _ = ip(&["link", "del", &format!("{PREFIX}{pid}c")]);
        }
    }
}

/// The drill's network. Host 0 is the harness; hosts 1..=n are the nodes.
#[derive(Debug)]
pub struct Net {
    tag: String,
    subnet: u8,
    nodes: usize,
    cuts: BTreeSet<(usize, usize)>,
    destroyed: bool,
}

impl Net {
    /// Creates the hub, `nodes` node namespaces and the harness's link.
    pub fn create(nodes: usize) -> Result<Net, NetError> {
        remove_stale();
        let tag = format!("{PREFIX}{}", std::process::id());
        let routes = ip(&["-4", "route", "show"])?;
        let start = std::process::id() % 240;
        let subnet = (0..240u32)
            .map(|i| ((start + i) % 240 + 10) as u8)
            .find(|s| !routes.contains(&format!("10.213.{s}.")))
            .ok_or(NetError::NoSubnet)?;
        let mut net = Net {
            tag,
            subnet,
            nodes,
            cuts: BTreeSet::new(),
            destroyed: false,
        };
        net.build()?;
        Ok(net)
    }

    fn build(&mut self) -> Result<(), NetError> {
        let hub = self.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for node in 1..=self.nodes {
            let ns = self.namespace(node);
            let port = format!("h{node}");
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &hub, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("{}/24", self.addr(node));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        let outer = self.harness_link();
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", "hc", "netns", &hub,
        ])?;
        ip(&["-n", &hub, "link", "set", "hc", "master", "br0", "up"])?;
        let addr = format!("{}/24", self.addr(HARNESS));
        ip(&["addr", "add", &addr, "dev", &outer])?;
        ip(&["link", "set", &outer, "up"])?;
        Ok(())
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.tag)
    }

    fn harness_link(&self) -> String {
        format!("{}c", self.tag)
    }

    /// The namespace of node `node` (1-based), for `ip netns exec`.
    pub fn namespace(&self, node: usize) -> String {
        format!("{}-n{node}", self.tag)
    }

    /// The address of host `host`: the harness (0) or a node.
    pub fn addr(&self, host: usize) -> Ipv4Addr {
        let last = if host == HARNESS { 254 } else { host as u8 };
        Ipv4Addr::new(10, 213, self.subnet, last)
    }

    /// Drops every packet `from` sends to `to` until [`Net::heal`]. Hosts are [`HARNESS`] or
    /// node numbers.
    pub fn cut(&mut self, from: usize, to: usize) -> Result<(), NetError> {
        if !self.cuts.insert((from, to)) {
            return Ok(());
        }
        self.blackhole("add", from, to)
    }

    /// Adds or deletes (`op`) the blackhole route to `to` in `from`'s namespace.
    fn blackhole(&self, op: &str, from: usize, to: usize) -> Result<(), NetError> {
        let dest = format!("{}/32", self.addr(to));
        let ns = self.namespace(from);
        let mut args = Vec::new();
        if from != HARNESS {
            args.extend(["-n", ns.as_str()]);
        }
        args.extend(["route", op, "blackhole", dest.as_str()]);
        ip(&args).map(|_| ())
    }

    /// Cuts `node` off from every other host, the harness included, both ways.
    pub fn isolate(&mut self, node: usize) -> Result<(), NetError> {
        for other in (0..=self.nodes).filter(|&h| h != node) {
            self.cut(node, other)?;
            self.cut(other, node)?;
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&mut self) -> Result<(), NetError> {
        let cuts = std::mem::take(&mut self.cuts);
        for (from, to) in cuts {
            self.blackhole("del", from, to)?;
        }
        Ok(())
    }

    /// Removes every namespace and link this network made. Safe to call twice.
    pub fn destroy(&mut self) {
        if self.destroyed {
            return;
        }
        self.destroyed = true;
        let _ = self.heal();
        let _ = ip(&["link", "del", &self.harness_link()]);
        for node in 1..=self.nodes {
            let _ = ip(&["netns", "del", &self.namespace(node)]);
        }
        let _ = ip(&["netns", "del", &self.hub()]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.destroy();
    }
}
