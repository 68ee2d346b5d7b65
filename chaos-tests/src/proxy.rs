//! A TCP proxy that delays traffic by where it comes from: latency between regions without
//! `tc netem`.
//!
//! With `--region-rtt-ms`, each node listens on 127.0.0.1 inside its namespace and a proxy in
//! the same namespace takes the node's address. Bytes of a connection from a node of another
//! region are held for half the round trip on the way in and half on the way out, so every
//! connection between two regions, whichever side opened it, gets the round trip added once.
//! Traffic from the node's own region and from the harness passes without delay.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Chunks in flight per direction of one connection before reading waits for writing.
const QUEUE: usize = 1024;

/// Accepts on `listen` and relays every connection to `to`, delaying both directions by the
/// delay of the connecting address in `delays` (none when absent). Runs until the process ends.
pub async fn run(
    listen: SocketAddr,
    to: SocketAddr,
    delays: HashMap<IpAddr, Duration>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (inbound, peer) = listener.accept().await?;
        let delay = delays.get(&peer.ip()).copied().unwrap_or_default();
        tokio::spawn(async move {
            // A backend that is down closes the accepted connection at once.
            let Ok(outbound) = TcpStream::connect(to).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::join!(
                relay(in_read, out_write, delay),
                relay(out_read, in_write, delay)
            );
        });
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read.
async fn relay(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// Parses `IP=MS` pairs, as the harness passes them.
pub fn parse_delays(pairs: &[String]) -> Result<HashMap<IpAddr, Duration>, String> {
    let mut out = HashMap::new();
    for pair in pairs {
        let (ip, ms) = pair
            .split_once('=')
            .ok_or_else(|| format!("--delay {pair}: expected IP=MILLISECONDS"))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|e| format!("--delay {pair}: bad address: {e}"))?;
        let ms: u64 = ms
            .parse()
            .map_err(|e| format!("--delay {pair}: bad milliseconds: {e}"))?;
        out.insert(ip, Duration::from_millis(ms));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // On tokio's paused clock: the delays are the proxy's timers, so the round trip measured on
    // that clock is exactly what the proxy added, however busy the machine is.
    #[tokio::test(start_paused = true)]
    async fn delays_each_direction_of_a_delayed_source_only() {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let backend = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 16];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let listen = probe.local_addr().expect("addr");
        drop(probe);
        let delays = parse_delays(&["127.0.0.1=100".to_string()]).expect("delays");
        tokio::spawn(run(listen, backend, delays));
        let mut conn = None;
        for _ in 0..50 {
            if let Ok(c) = TcpStream::connect(listen).await {
                conn = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut conn = conn.expect("proxy listening");
        let started = Instant::now();
        conn.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.expect("echo");
        assert_eq!(&buf, b"ping");
        let rtt = started.elapsed();
        assert!(
            rtt >= Duration::from_millis(200),
            "the echo came back after {rtt:?}, before both directions' 100 ms"
        );
        assert!(parse_delays(&["127.0.0.1".to_string()]).is_err());
        assert!(parse_delays(&["nowhere=5".to_string()]).is_err());
    }
}
