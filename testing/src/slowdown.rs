//! A throttled S3, in front of a real one.
//!
//! S3 answers an overloaded client with `503 SlowDown`. The proxy listens on loopback; while
//! it has throttles left, each new connection gets its first request answered with that error
//! and `Connection: close` (the client opens a new connection for the next attempt); after
//! that, connections are passed through to the server untouched. The S3 backend's own error
//! parsing and retry layer therefore see exactly what a throttled S3 sends, and no production
//! type carries a switch for it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

const SLOW_DOWN_XML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
    <Message>Please reduce your request rate.</Message><RequestId>injected</RequestId></Error>";

/// A loopback proxy to `upstream` that throttles on demand; stopped on drop.
#[derive(Debug)]
pub struct SlowDownProxy {
    port: u16,
    throttles: Arc<AtomicU64>,
    throttled: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl SlowDownProxy {
    /// Proxy to `127.0.0.1:upstream_port`.
    ///
    /// # Panics
    /// When no loopback port can be bound (the test cannot run).
    pub fn start(upstream_port: u16) -> SlowDownProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("bound address").port();
        let proxy = SlowDownProxy {
            port,
            throttles: Arc::new(AtomicU64::new(0)),
            throttled: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (throttles, throttled, stop) = (
            Arc::clone(&proxy.throttles),
            Arc::clone(&proxy.throttled),
            Arc::clone(&proxy.stop),
        );
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let throttle = throttles
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if throttle {
                    throttled.fetch_add(1, Ordering::SeqCst);
                    thread::spawn(move || slow_down(client));
                } else {
                    thread::spawn(move || pass_through(client, upstream_port));
                }
            }
        });
        proxy
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answer the first request of each of the next `times` connections with `503 SlowDown`.
    pub fn throttle_next(&self, times: u64) {
        self.throttles.fetch_add(times, Ordering::SeqCst);
    }

    /// Requests answered with `503 SlowDown` so far.
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::SeqCst)
    }
}

impl Drop for SlowDownProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Read the request head, answer 503 SlowDown, then drain what the client still sends until it
/// closes (closing first could reset the connection before the client reads the answer).
fn slow_down(mut client: TcpStream) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let response = format!(
        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{SLOW_DOWN_XML}",
        SLOW_DOWN_XML.len()
    );
    if client.write_all(response.as_bytes()).is_err() {
        return;
    }
    let _ = client.flush();
    let _ = client.shutdown(Shutdown::Write);
    let mut sink = [0u8; 8192];
    while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
}

fn pass_through(client: TcpStream, upstream_port: u16) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
        return;
    };
    let (Ok(mut client_read), Ok(mut server_write)) = (client.try_clone(), server.try_clone())
    else {
        return;
    };
    let upload = thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut server_write);
        let _ = server_write.shutdown(Shutdown::Write);
    });
    let (mut server_read, mut client_write) = (server, client);
    let _ = std::io::copy(&mut server_read, &mut client_write);
    let _ = client_write.shutdown(Shutdown::Write);
    let _ = upload.join();
}
