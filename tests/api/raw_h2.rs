//! gRPC below the client library: tonic's client enforces a `grpc-timeout`
//! itself (answering CANCELLED before the server can say anything) and
//! never opens more streams than the server allows, so the tests that need
//! the server's own answer speak HTTP/2 with the h2 crate, or in frames.

use std::net::SocketAddr;

use prost::bytes::Bytes;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// The gRPC status code and message the server answered a unary call with,
/// sent with the extra `headers` and never timed out by the client.
pub async fn unary(
    addr: SocketAddr,
    path: &str,
    message: &impl prost::Message,
    headers: &[(&str, &str)],
) -> (i32, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, mut stream) = send.send_request(request.body(()).unwrap(), false).unwrap();
    let encoded = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    stream.send_data(Bytes::from(frame), true).unwrap();

    let (head, mut body) = response.await.unwrap().into_parts();
    let status_in = |headers: &http::HeaderMap| {
        let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        let message = headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Some((code, message))
    };
    if let Some(status) = status_in(&head.headers) {
        return status;
    }
    while let Some(data) = body.data().await {
        data.unwrap();
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    status_in(&trailers).expect("a grpc-status trailer")
}

/// One HTTP/2 frame as read off the wire.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const REFUSED_STREAM: u32 = 0x7;

/// A plaintext HTTP/2 connection driven frame by frame.
pub struct RawConnection {
    tcp: TcpStream,
}

impl RawConnection {
    /// Connects and sends the preface and an empty SETTINGS.
    pub async fn open(addr: SocketAddr) -> Self {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut connection = Self { tcp };
        connection.send(SETTINGS, 0, 0, &[]).await;
        connection
    }

    pub async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let length = (payload.len() as u32).to_be_bytes();
        let mut frame = vec![length[1], length[2], length[3], kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.tcp.write_all(&frame).await.unwrap();
    }

    pub async fn read(&mut self) -> Frame {
        self.read_or_closed()
            .await
            .expect("the server closed the connection")
    }

    /// The next frame, or `None` once the server has closed the connection.
    pub async fn read_or_closed(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        if self.tcp.read_exact(&mut head).await.is_err() {
            return None;
        }
        let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; length];
        self.tcp.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Opens `stream` with a gRPC request's headers and no body yet, so it
    /// stays open (END_HEADERS, not END_STREAM).
    pub async fn open_stream(&mut self, stream: u32, path: &str) {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            literal(&mut block, name, value);
        }
        self.send(HEADERS, 0x4, stream, &block).await;
    }
}

/// HPACK "literal header field without indexing, new name", no Huffman.
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    assert!(
        name.len() < 127 && value.len() < 127,
        "one-byte lengths only"
    );
    block.push(0x00);
    block.push(name.len() as u8);
    block.extend_from_slice(name.as_bytes());
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

/// The settings a SETTINGS frame carries, as (identifier, value).
pub fn settings(frame: &Frame) -> Vec<(u16, u32)> {
    frame
        .payload
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect()
}
