//! Free TCP ports on 127.0.0.1 for local clusters (the playground, tests that run node
//! processes): ports whose number has to be written into a topology before the node binds it.

/// The kernel's range of ephemeral ports (what `connect` and `bind` to port 0 hand out).
pub fn ephemeral_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>().ok());
    Some((it.next()??, it.next()??))
}

/// `n` distinct ports that are free now. They are taken below the ephemeral range when it
/// leaves room: a port from that range, once released, can be handed to any process's next
/// outgoing connection before the node binds it (or while a test has the node stopped).
pub fn free_local_ports(n: usize) -> std::io::Result<Vec<u16>> {
    const LOW: u16 = 10_000;
    let mut ports = Vec::with_capacity(n);
    if let Some((start, _)) = ephemeral_range().filter(|&(s, _)| s > LOW + 1000) {
        for _ in 0..1000 {
            if ports.len() == n {
                break;
            }
            let p = rand::Rng::gen_range(&mut rand::thread_rng(), LOW..start);
            if !ports.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
                ports.push(p);
            }
        }
    }
    while ports.len() < n {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let p = l.local_addr()?.port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let ports = free_local_ports(8).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ports.len(), 8);
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 8, "{ports:?}");
        if let Some((start, end)) = ephemeral_range().filter(|&(s, _)| s > 11_000) {
            for p in &ports {
                assert!(!(start..=end).contains(p), "{p} in {start}..={end}");
            }
        }
        let held: Vec<_> = ports
            .iter()
            .map(|p| std::net::TcpListener::bind(("127.0.0.1", *p)))
            .collect();
        assert!(held.iter().all(Result::is_ok), "{held:?}");
    }
}
