//! HTTP helpers: async calls through reqwest (proxies disabled, so loopback never leaves the
//! machine) and a dependency-free blocking probe used while waiting for a process to be ready.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Status code and body text of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build reqwest client")
}

async fn into_response(resp: reqwest::Response) -> Response {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp.text().await.expect("read response body");
    Response {
        status,
        body,
        headers,
    }
}

/// GET `url`; panics only on transport errors.
pub async fn get(url: &str) -> Response {
    let resp = client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    into_response(resp).await
}

/// GET `url` with extra request headers.
pub async fn get_with_headers(url: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    into_response(resp).await
}

/// POST `body` to `url` with the given content type.
pub async fn post(url: &str, content_type: &str, body: impl Into<String>) -> Response {
    let resp = client()
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body.into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    into_response(resp).await
}

/// POST a JSON document to `url`.
pub async fn post_json(url: &str, body: &serde_json::Value) -> Response {
    post(url, "application/json", body.to_string()).await
}

/// Blocking `GET path` on `addr` over plain HTTP/1.1: the status code, or None when nothing
/// answers (connection refused, timeout, garbage). Safe to call from sync code and from inside
/// a Tokio test while a process starts.
pub fn probe_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        match stream.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(_) => break,
        }
        if head[..len].contains(&b'\n') {
            break;
        }
    }
    let line = std::str::from_utf8(&head[..len]).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// The value of one Prometheus sample in a `/metrics` body: the first line for `name` whose
/// labels include every `(label, value)` pair given (other labels are ignored). None if absent.
pub fn prometheus_value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_part, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let end = r.rfind('}')?;
                    (&r[..end], &r[end + 1..])
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let all_match = labels
                .iter()
                .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")));
            if !all_match {
                return None;
            }
            value.split_whitespace().next()?.parse().ok()
        })
}

/// Sum of every sample of `name` whose labels include the given pairs (0 when none).
pub fn prometheus_sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| prometheus_value(l, name, labels))
        .sum()
}

/// An HTTP/1.1 upstream on a loopback port (returned) that answers every request, keep-alive
/// included, with `reply(head)`: `head` is the request line and headers, lower-cased.
pub async fn upstream(reply: fn(&str) -> String) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        buf.drain(..end + 4);
                        if sock.write_all(reply(&head).as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}
