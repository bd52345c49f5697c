//! How simulated devices reach the cloud: each over its own HTTP/2 connection, as phones do
//! (or, past what one process may hold, several devices multiplexed on one connection), with the
//! client sockets spread over several loopback source addresses so one cloud port can take more
//! connections than one source address has ephemeral ports.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};

/// Why the fleet cannot be connected as asked.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url:?} is not a device-plane URL: {source}")]
    BadUrl {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(
        "{devices} devices on {connections} connections need about {needed} file descriptors, but this process may open at most {limit} (`ulimit -Hn`); use --devices-per-connection {suggested}, or run several simulators"
    )]
    TooFewFileDescriptors {
        devices: usize,
        connections: usize,
        needed: u64,
        limit: u64,
        suggested: usize,
    },
}

/// File descriptors the simulator keeps for itself (stdio, the runtime, the HTTP client).
const SPARE_FDS: u64 = 256;

/// Where and how devices connect: one entry per cloud replica, each device's channels.
pub struct Connector {
    endpoints: Vec<Endpoint>,
    sources: Vec<IpAddr>,
    per_connection: usize,
    /// Shared channels when several devices share a connection: `[replica][connection]`.
    shared: Vec<Vec<Channel>>,
}

impl Connector {
    /// Prepares connections to `urls` (one per replica) for `devices` devices,
    /// `per_connection` of them on each HTTP/2 connection, the client sockets bound to `sources`
    /// in turn (none given: the system picks). Raises this process's open-file limit as far as
    /// it may go and refuses a fleet that would not fit under it.
    pub fn new(
        urls: &[String],
        devices: usize,
        per_connection: usize,
        sources: Vec<IpAddr>,
    ) -> Result<Connector, ConnectError> {
        let per_connection = per_connection.max(1);
        let endpoints = urls
            .iter()
            .map(|url| {
                Endpoint::from_shared(url.clone())
                    .map(|e| e.tcp_nodelay(true).connect_timeout(Duration::from_secs(10)))
                    .map_err(|source| ConnectError::BadUrl {
                        url: url.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let connections = devices.div_ceil(per_connection);
        let limit = walle_cloud::limits::raise_open_file_limit();
        // A device moving between replicas briefly holds two sockets; allow a tenth more.
        let needed = connections as u64 + connections as u64 / 10 + SPARE_FDS;
        if needed > limit {
            let room = (limit.saturating_sub(SPARE_FDS) * 10 / 11).max(1) as usize;
            return Err(ConnectError::TooFewFileDescriptors {
                devices,
                connections,
                needed,
                limit,
                suggested: devices.div_ceil(room),
            });
        }
        let mut connector = Connector {
            endpoints,
            sources,
            per_connection,
            shared: Vec::new(),
        };
        if per_connection > 1 {
            connector.shared = (0..connector.endpoints.len())
                .map(|replica| {
                    (0..connections)
                        .map(|c| connector.open(replica, c))
                        .collect()
                })
                .collect();
        }
        Ok(connector)
    }

    /// Number of replicas devices may connect to.
    pub fn replicas(&self) -> usize {
        self.endpoints.len()
    }

    /// The channel device `index` uses to reach `replica`: its own (connected on first use and
    /// reconnected after a loss), or the one it shares with its neighbours.
    pub fn channel(&self, replica: usize, index: usize) -> Channel {
        let replica = replica % self.endpoints.len();
        match self.shared.get(replica) {
            Some(shared) => shared[(index / self.per_connection) % shared.len()].clone(),
            None => self.open(replica, index),
        }
    }

    fn open(&self, replica: usize, slot: usize) -> Channel {
        let source = (!self.sources.is_empty()).then(|| self.sources[slot % self.sources.len()]);
        self.endpoints[replica].connect_with_connector_lazy(BoundConnector { source })
    }
}

/// The loopback source addresses to spread `connections` over: one per 20,000 connections
/// (an ephemeral port range holds about 28,000), when the cloud is on loopback.
pub fn default_sources(urls: &[String], connections: usize) -> Vec<IpAddr> {
    let loopback = urls
        .iter()
        .all(|u| u.contains("://127.") || u.contains("://localhost"));
    if !loopback {
        return Vec::new();
    }
    let count = connections.div_ceil(20_000).clamp(1, 250) as u8;
    (0..count)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i)))
        .collect()
}

/// Opens TCP connections from a chosen source address.
#[derive(Clone)]
struct BoundConnector {
    source: Option<IpAddr>,
}

impl tower::Service<Uri> for BoundConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let source = self.source;
        Box::pin(async move {
            let host = uri.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']);
            let port = uri.port_u16().unwrap_or(80);
            let mut addrs = tokio::net::lookup_host((host, port)).await?;
            let target = addrs
                .find(|a| source.is_none_or(|s| s.is_ipv4() == a.is_ipv4()))
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::AddrNotAvailable,
                        format!("{host}:{port} has no address of the source's family"),
                    )
                })?;
            let socket = if target.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(source) = source {
                socket.bind(SocketAddr::new(source, 0))?;
            }
            let stream = socket.connect(target).await?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}
