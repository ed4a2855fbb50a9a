//! Where a stack's hosts live. Only the local backend exists so far; a
//! docker or kind backend implements the same [`HostNetwork`] surface so
//! that `Stack`, and everything above it, stays unchanged.

pub mod docker;
pub mod local;

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Opening connections *from* a named host of a stack, as a process on that
/// host would. Probes use it to reach loopback-only endpoints such as the
/// proxy API.
pub trait HostNetwork: Send + Sync {
    fn connect_from(
        &self,
        host: &str,
        addr: SocketAddr,
    ) -> impl std::future::Future<Output = std::io::Result<TcpStream>> + Send;
}
