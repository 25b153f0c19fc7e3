//! `cluster.toml`: every address of a running system with what it is for, written by
//! `ledgerbus demo` and read by the tools (`--cluster FILE`), so nobody has to look
//! for a port. It holds no secret: the tools take their keys from the environment.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;

/// The addresses of one system.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterFile {
    /// Gateway, HTTP/JSON API (clients).
    pub gateway_http: SocketAddr,
    /// Gateway, TCP/SBE API (clients, `bench e2e --gateway`).
    pub gateway_tcp: SocketAddr,
    /// Sequencer, TCP port for gateways.
    pub sequencer_gateway: SocketAddr,
    /// Sequencer, UDP port for NAKs and status messages (`replay nak --sequencer`).
    pub sequencer_control: SocketAddr,
    /// Sequencer, TCP bulk replay (`replay --from-sequencer`).
    pub sequencer_replay: SocketAddr,
    /// Sequencer, HTTP `/status` and `/metrics`.
    pub sequencer_status: SocketAddr,
    /// Memory consumer, UDP stream.
    pub memory_consumer_udp: SocketAddr,
    /// Memory consumer, HTTP query API, `/status` and `/metrics`.
    pub memory_consumer_http: SocketAddr,
    /// Disk consumer, UDP stream.
    pub disk_consumer_udp: SocketAddr,
    /// Disk consumer, HTTP `/status` and `/metrics`.
    pub disk_consumer_http: SocketAddr,
}

impl ClusterFile {
    /// Reads a cluster file.
    pub fn load(path: &Path) -> anyhow::Result<ClusterFile> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not a ledgerbus cluster file", path.display()))
    }

    /// The file behind a `--cluster` flag, if one was given.
    pub fn load_if(path: Option<&Path>) -> anyhow::Result<Option<ClusterFile>> {
        path.map(ClusterFile::load).transpose()
    }

    /// Writes it, with a comment per address.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let line =
            |name: &str, address: SocketAddr, what: &str| format!("{name} = \"{address}\"  # {what}\n");
        let text = [
            "# Every address of a ledgerbus system, written by `ledgerbus demo`.\n".to_string(),
            "# The tools take it with --cluster FILE; keys come from the environment.\n".to_string(),
            line("gateway_http", self.gateway_http, "gateway HTTP/JSON API"),
            line("gateway_tcp", self.gateway_tcp, "gateway TCP/SBE API (bench e2e --gateway)"),
            line("sequencer_gateway", self.sequencer_gateway, "sequencer: gateways connect here"),
            line("sequencer_control", self.sequencer_control, "sequencer: NAKs and status, UDP (replay nak)"),
            line(
                "sequencer_replay",
                self.sequencer_replay,
                "sequencer: bulk replay (replay --from-sequencer)",
            ),
            line("sequencer_status", self.sequencer_status, "sequencer: HTTP /status and /metrics"),
            line("memory_consumer_udp", self.memory_consumer_udp, "memory consumer: the stream, UDP"),
            line(
                "memory_consumer_http",
                self.memory_consumer_http,
                "memory consumer: query API, /status and /metrics",
            ),
            line("disk_consumer_udp", self.disk_consumer_udp, "disk consumer: the stream, UDP"),
            line("disk_consumer_http", self.disk_consumer_http, "disk consumer: /status and /metrics"),
        ]
        .concat();
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_reads_back() {
        let address = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let cluster = ClusterFile {
            gateway_http: address(1),
            gateway_tcp: address(2),
            sequencer_gateway: address(3),
            sequencer_control: address(4),
            sequencer_replay: address(5),
            sequencer_status: address(6),
            memory_consumer_udp: address(7),
            memory_consumer_http: address(8),
            disk_consumer_udp: address(9),
            disk_consumer_http: address(10),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        cluster.write(&path).unwrap();
        assert_eq!(ClusterFile::load(&path).unwrap(), cluster);
        std::fs::write(&path, "gateway_http = 3").unwrap();
        assert!(ClusterFile::load(&path).unwrap_err().to_string().contains("not a ledgerbus cluster file"));
    }
}
