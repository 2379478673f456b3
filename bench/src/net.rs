//! The generators' HTTP and WebSocket clients, connected the way a browser
//! connects: `TCP_NODELAY` on every socket.
//!
//! awc's connector leaves Nagle's algorithm on, so a frame written while
//! the server has not yet acknowledged the previous one would wait in the
//! kernel for that ACK, up to the server's delayed-ACK time (40 ms on
//! Linux). A browser's would not: Chromium sets `TCP_NODELAY` on its
//! sockets. A generator that kept Nagle would measure a latency no user
//! sees, most of all where a client sends twice in a row (a read mark,
//! then a message).

use std::net::IpAddr;
use std::time::Duration;

use actix_rt::net::TcpStream;
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use awc::http::Uri;
use futures_util::future::LocalBoxFuture;

/// How long a generator's HTTP clients keep an idle connection for the
/// next request: well under the server's 5 s keep-alive. A request sent on
/// a connection as the server closes it fails (`Connect(Disconnected)`),
/// and awc's default of 15 s left that open to any pause of about 5 s.
pub(crate) const IDLE_CONNECTION: Duration = Duration::from_secs(1);

/// actix-tls's TCP connector, then `TCP_NODELAY` on the connected socket.
#[derive(Clone, Default)]
pub(crate) struct NoDelay {
    tcp: ConnectorService,
}

impl Service<ConnectInfo<Uri>> for NoDelay {
    type Response = Connection<Uri, TcpStream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    // As actix-tls's connector: it never holds a caller back.
    actix_service::always_ready!();

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        let connecting = self.tcp.call(req);
        Box::pin(async move {
            let connection = connecting.await?;
            connection
                .io_ref()
                .set_nodelay(true)
                .map_err(ConnectError::Io)?;
            Ok(connection)
        })
    }
}

/// An HTTP/1.1 client whose connections send without delay, from
/// `source` when given, with `timeout` for each request.
pub(crate) fn client(source: Option<IpAddr>, timeout: Duration) -> awc::Client {
    let mut connector = awc::Connector::new()
        .connector(NoDelay::default())
        .limit(0)
        .conn_keep_alive(IDLE_CONNECTION)
        .timeout(Duration::from_secs(30));
    if let Some(addr) = source {
        connector = connector.local_address(addr);
    }
    awc::Client::builder()
        .connector(connector)
        .timeout(timeout)
        .max_http_version(awc::http::Version::HTTP_11)
        .finish()
}

/// HTTP clients bound to loopback addresses 127.0.0.1, .2, …: each source
/// address has its own ~28k ephemeral ports, so many connections fit.
pub(crate) struct Clients(Vec<awc::Client>);

impl Clients {
    pub(crate) fn new(sources: usize) -> Self {
        let clients = (0..sources.max(1))
            .map(|i| {
                let addr: IpAddr = [127, 0, 0, (1 + i % 250) as u8].into();
                client(Some(addr), Duration::from_secs(60))
            })
            .collect();
        Clients(clients)
    }

    pub(crate) fn get(&self, i: usize) -> &awc::Client {
        &self.0[i % self.0.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connector hands awc a socket that sends without delay.
    #[actix_rt::test]
    async fn connections_send_without_delay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let uri: Uri = format!("http://{addr}/").parse().expect("a valid URI");
        let connection = NoDelay::default()
            .call(ConnectInfo::new(uri))
            .await
            .expect("the listener accepts");
        assert!(connection.io_ref().nodelay().expect("the option reads"));
    }
}
