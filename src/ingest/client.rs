//! A small blocking HTTP/1.1 client for the ingest routes: one kept-alive connection,
//! reopened once when the server closed it. What the load generator and the benchmark post
//! with; it reads only what the ingest answers (a `Content-Length` body).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0} is not a URL like http://127.0.0.1:9465")]
    Url(String),
    #[error("{addr}: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("{addr}: malformed answer: {detail}")]
    Answer { addr: String, detail: String },
}

/// An answer: its status, its `Retry-After` (seconds) if any, and its body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: String,
}

/// A connection to one ingest server.
pub struct Client {
    /// `host:port`.
    addr: String,
    /// Prepended to every path (a URL's own path, without its trailing `/`).
    base: String,
    /// The `Authorization` header's value, if any.
    authorization: Option<String>,
    stream: Option<BufReader<TcpStream>>,
}

impl Client {
    /// A client for `url` (`http://host:port[/base]`), sending `token` as a bearer token.
    pub fn new(url: &str, token: Option<&str>) -> Result<Client, ClientError> {
        let rest = url.strip_prefix("http://").ok_or_else(|| ClientError::Url(url.to_owned()))?;
        let (addr, base) = rest.split_once('/').map_or((rest, ""), |(a, b)| (a, b));
        if addr.is_empty() {
            return Err(ClientError::Url(url.to_owned()));
        }
        let base = if base.is_empty() { String::new() } else { format!("/{}", base.trim_end_matches('/')) };
        let authorization = token.map(|t| format!("Bearer {t}"));
        Ok(Client { addr: addr.to_owned(), base, authorization, stream: None })
    }

    /// Posts `body` to `path`; a connection the server closed meanwhile is reopened once.
    pub fn post(&mut self, path: &str, content_type: &str, body: &[u8]) -> Result<Answer, ClientError> {
        let reused = self.stream.is_some();
        match self.exchange(path, content_type, body) {
            Err(ClientError::Io { .. }) if reused => {
                self.stream = None;
                self.exchange(path, content_type, body)
            }
            other => other,
        }
    }

    fn exchange(&mut self, path: &str, content_type: &str, body: &[u8]) -> Result<Answer, ClientError> {
        let result = self.try_exchange(path, content_type, body);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn try_exchange(&mut self, path: &str, content_type: &str, body: &[u8]) -> Result<Answer, ClientError> {
        let addr = self.addr.clone();
        let io = |source| ClientError::Io { addr: addr.clone(), source };
        let mut head = format!(
            "POST {}{path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            self.base,
            body.len()
        );
        if let Some(auth) = &self.authorization {
            head.push_str(&format!("Authorization: {auth}\r\n"));
        }
        head.push_str("\r\n");
        let stream = self.connection().map_err(io)?;
        let socket = stream.get_mut();
        socket.write_all(head.as_bytes()).map_err(io)?;
        socket.write_all(body).map_err(io)?;
        read_answer(stream).map_err(|e| match e {
            Parse::Io(source) => ClientError::Io { addr: addr.clone(), source },
            Parse::Bad(detail) => ClientError::Answer { addr: addr.clone(), detail },
        })
    }

    fn connection(&mut self) -> std::io::Result<&mut BufReader<TcpStream>> {
        if self.stream.is_none() {
            let socket = TcpStream::connect(&self.addr)?;
            socket.set_nodelay(true)?;
            socket.set_read_timeout(Some(Duration::from_secs(60)))?;
            self.stream = Some(BufReader::new(socket));
        }
        Ok(self.stream.as_mut().expect("just opened"))
    }
}

enum Parse {
    Io(std::io::Error),
    Bad(String),
}

impl From<std::io::Error> for Parse {
    fn from(e: std::io::Error) -> Parse {
        Parse::Io(e)
    }
}

/// Reads a status line, headers and a `Content-Length` body.
fn read_answer(stream: &mut BufReader<TcpStream>) -> Result<Answer, Parse> {
    let mut line = String::new();
    if stream.read_line(&mut line)? == 0 {
        return Err(Parse::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    let status = status.ok_or_else(|| Parse::Bad(format!("status line {line:?}")))?;
    let (mut length, mut retry_after) = (0usize, None);
    loop {
        line.clear();
        stream.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else { continue };
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().map_err(|_| Parse::Bad(header.to_owned()))?,
            "retry-after" => retry_after = value.trim().parse().ok(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    Ok(Answer { status, retry_after, body: String::from_utf8_lossy(&body).into_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_url() {
        let c = Client::new("http://127.0.0.1:9465", Some("t")).unwrap();
        assert_eq!((c.addr.as_str(), c.base.as_str()), ("127.0.0.1:9465", ""));
        assert_eq!(c.authorization.as_deref(), Some("Bearer t"));
        let c = Client::new("http://lb:80/pulsewatch/", None).unwrap();
        assert_eq!((c.addr.as_str(), c.base.as_str()), ("lb:80", "/pulsewatch"));
        assert!(Client::new("https://x", None).is_err() && Client::new("http://", None).is_err());
    }
}
