//! The HTTP listeners' limits, over raw sockets: a client that stalls
//! inside its request head is disconnected, a body over the cap is answered
//! 413, and one address opening the link pages too often gets 429.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

use crate::helpers::{http_request, spawn_app_with};

/// Whether the server closes `stream` within 10 s (EOF or reset).
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // A 408 or similar before closing is fine.
                Ok(_) => continue,
            }
        }
    });
    read.await.is_ok()
}

#[tokio::test]
async fn a_client_that_stalls_inside_its_request_head_is_disconnected() {
    let app = spawn_app_with(|args| args.limits.http_header_timeout_seconds = 1).await;
    for addr in [app.http_addr, app.admin_addr] {
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(b"GET /u/abc HTT").await.unwrap();
        assert!(
            closed_by_server(&mut stalled).await,
            "{addr}: half a request line"
        );

        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_by_server(&mut idle).await,
            "{addr}: nothing sent at all"
        );
    }
    // A whole request in time is still served.
    let (status, _) = crate::helpers::http_get(app.admin_addr, "/healthz").await;
    assert_eq!(status, 200);
}

/// A POST of `body` to `path` with chunked transfer encoding (no declared
/// length); the response's status.
async fn post_chunked(addr: SocketAddr, path: &str, body: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.as_bytes().chunks(256) {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
        // The server may answer and close before all of it is sent.
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let raw = String::from_utf8_lossy(&raw);
    raw.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_body_over_the_cap_is_answered_413_declared_or_not() {
    let app = spawn_app_with(|args| args.limits.http_max_body_bytes = 1024).await;
    let big = format!("List-Unsubscribe=One-Click&pad={}", "x".repeat(2000));

    let declared = http_request(app.http_addr, "POST", "/u/not-a-token", &[], &big).await;
    assert_eq!(declared.status, 413);
    assert_eq!(
        post_chunked(app.http_addr, "/u/not-a-token", &big).await,
        413
    );
    assert_eq!(
        post_chunked(app.http_addr, "/p/not-a-token", &big).await,
        413
    );

    // Under the cap, the same request reaches the page (which refuses the token).
    let small = http_request(
        app.http_addr,
        "POST",
        "/u/not-a-token",
        &[],
        "List-Unsubscribe=One-Click",
    )
    .await;
    assert_eq!(small.status, 400);
}

/// A GET of `path` from the local address `from`; the status and the
/// Retry-After header.
async fn get_from(from: IpAddr, addr: SocketAddr, path: &str) -> (u16, Option<String>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw);
    let status = raw.split(' ').nth(1).unwrap().parse().unwrap();
    let retry_after = raw
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("retry-after:")
                .map(str::to_string)
        })
        .map(|value| value.trim().to_string());
    (status, retry_after)
}

#[tokio::test]
async fn one_address_opening_link_pages_too_often_gets_429_with_retry_after() {
    let app = spawn_app_with(|args| args.limits.unsubscribe_rate_limit_per_address = 2).await;
    let one = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    let addr = app.http_addr;
    assert_eq!(get_from(one, addr, "/u/not-a-token").await.0, 400);
    assert_eq!(get_from(one, addr, "/p/not-a-token").await.0, 400);

    let (status, retry_after) = get_from(one, addr, "/u/not-a-token").await;
    assert_eq!(status, 429);
    assert_eq!(
        retry_after.as_deref(),
        Some("30"),
        "2 a minute: one every 30 s"
    );
    assert_eq!(get_from(one, addr, "/p/not-a-token").await.0, 429);
    // The stylesheet every page loads is not counted.
    assert_eq!(get_from(one, addr, "/p/style.css").await.0, 200);

    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(get_from(other, addr, "/u/not-a-token").await.0, 400);
}
