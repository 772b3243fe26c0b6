//! A private network for the nodes of one run: each node in a network namespace of its own,
//! joined to a bridge in the harness's namespace by a veth pair. The harness (the workload's
//! clients) reaches every node through the bridge; faults between nodes are blackhole routes
//! inside a node's namespace (`ip route add blackhole PEER/32`): the node's packets to that
//! peer are dropped silently, as a cut link or a lost switch port drops them.

use std::net::Ipv4Addr;
use std::process::Command;

use super::{sh, HarnessError};

/// The namespaces, veths and bridge of one run; removed when dropped.
#[derive(Debug)]
pub struct Net {
    tag: String,
    bridge: String,
    subnet: [u8; 3],
    nodes: usize,
    /// (from, to): `from` drops what it sends to `to`.
    cut: Vec<(usize, usize)>,
}

/// Names a run's objects carry: `mc<pid>`, so a later run removes what a killed one left.
const PREFIX: &str = "mc";

impl Net {
    /// Creates the bridge and one namespace per node (1-based ids).
    pub fn create(nodes: usize) -> Result<Net, HarnessError> {
        if nodes == 0 || nodes > 200 {
            return Err(HarnessError::Setup(format!("{nodes} nodes: use 1 to 200")));
        }
        remove_stale();
        let pid = std::process::id();
        let tag = format!("{PREFIX}{pid}");
        // 10.A.B.0/24 with A.B from the pid: runs side by side get different subnets.
        let subnet = [10, 100 + (pid % 100) as u8, ((pid / 100) % 250) as u8];
        let net = Net {
            bridge: format!("{tag}b"),
            tag,
            subnet,
            nodes,
            cut: Vec::new(),
        };
        let br = net.bridge.clone();
        sh("ip", &["link", "add", &br, "type", "bridge"])?;
        sh(
            "ip",
            &["addr", "add", &format!("{}/24", net.host_ip()), "dev", &br],
        )?;
        sh("ip", &["link", "set", &br, "up"])?;
        for i in 1..=nodes {
            let ns = net.ns(i);
            let (outer, inner) = (format!("{}h{i}", net.tag), format!("{}n{i}", net.tag));
            sh("ip", &["netns", "add", &ns])?;
            sh(
                "ip",
                &[
                    "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                ],
            )?;
            sh("ip", &["link", "set", &inner, "netns", &ns])?;
            sh("ip", &["link", "set", &outer, "master", &br, "up"])?;
            sh(
                "ip",
                &[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", net.ip(i)),
                    "dev",
                    &inner,
                ],
            )?;
            sh("ip", &["-n", &ns, "link", "set", &inner, "up"])?;
            sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// Node `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.tag)
    }

    /// Node `i`'s address.
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, i as u8)
    }

    /// The harness's address on the bridge.
    pub fn host_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 254)
    }

    /// A command that runs `program` inside node `i`'s namespace (`ip netns exec` replaces
    /// itself with the program: the child's pid is the program's).
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(i)]).arg(program);
        c
    }

    /// Node `from` stops reaching `to` (one direction; TCP needs both, so a connection
    /// either of them opens fails, but `to` keeps sending into the void).
    pub fn cut(&mut self, from: usize, to: usize) -> Result<(), HarnessError> {
        if from == to || self.cut.contains(&(from, to)) {
            return Ok(());
        }
        sh(
            "ip",
            &[
                "-n",
                &self.ns(from),
                "route",
                "add",
                "blackhole",
                &format!("{}/32", self.route_target(to)),
            ],
        )?;
        self.cut.push((from, to));
        Ok(())
    }

    /// Cuts both directions between every node of `a` and every node of `b`.
    pub fn split(&mut self, a: &[usize], b: &[usize]) -> Result<(), HarnessError> {
        for &x in a {
            for &y in b {
                self.cut(x, y)?;
                self.cut(y, x)?;
            }
        }
        Ok(())
    }

    /// Node `i` stops reaching the harness (its clients) and the harness stops reaching it.
    pub fn cut_host(&mut self, i: usize) -> Result<(), HarnessError> {
        self.cut(i, 0)
    }

    /// Removes every cut.
    pub fn heal(&mut self) -> Result<(), HarnessError> {
        for (from, to) in std::mem::take(&mut self.cut) {
            let ip = self.route_target(to);
            sh(
                "ip",
                &[
                    "-n",
                    &self.ns(from),
                    "route",
                    "del",
                    "blackhole",
                    &format!("{ip}/32"),
                ],
            )?;
        }
        Ok(())
    }

    /// The cuts in place, as (from, to).
    pub fn cuts(&self) -> &[(usize, usize)] {
        &self.cut
    }

    /// Node count.
    pub fn nodes(&self) -> usize {
        self.nodes
    }
}

impl Net {
    fn route_target(&self, to: usize) -> Ipv4Addr {
        if to == 0 {
            self.host_ip()
        } else {
            self.ip(to)
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 1..=self.nodes {
            let _ = sh("ip", &["netns", "del", &self.ns(i)]);
        }
        let _ = sh("ip", &["link", "del", &self.bridge]);
    }
}

/// Removes the namespaces and bridges of runs whose process is gone.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut dead = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sh("ip", &["netns", "del", name]);
            dead.insert(pid.to_string());
        }
    }
    for pid in dead {
        let _ = sh("ip", &["link", "del", &format!("{PREFIX}{pid}b")]);
    }
}
