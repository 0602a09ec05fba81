//! An egress proxy for `--egress`: CONNECT tunnels on loopback, on the bench runtime (the
//! load generator's CPU, so its work is not counted as the proxy's).

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Starts the egress proxy; it runs until the bench exits.
pub async fn start() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(tunnel(client));
        }
    });
    Ok(addr)
}

/// Reads `CONNECT host:port HTTP/1.1` and its head, connects, answers 200, then copies both
/// ways until either side closes.
async fn tunnel(mut client: TcpStream) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 || client.read_buf(&mut head).await? == 0 {
            return Ok(());
        }
    }
    let line = String::from_utf8_lossy(&head);
    let authority = line.split(' ').nth(1).unwrap_or("").to_string();
    let mut upstream = TcpStream::connect(authority.as_str()).await?;
    let _ = upstream.set_nodelay(true);
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}
