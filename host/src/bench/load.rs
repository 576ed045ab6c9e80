//! A lean HTTP/1.1 load client for the benchmark: one keep-alive TCP connection per simulated
//! client, each request written in one syscall and its answer parsed in place (httparse), all in
//! the calling task: no connection task, no pool, so the load generator costs as little CPU as
//! it can (it shares the machine with the host it measures).

use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection to the host.
pub struct Connection {
    stream: TcpStream,
    host: String,
    /// Bytes read but not yet consumed.
    buf: Vec<u8>,
    /// The request being written.
    out: Vec<u8>,
}

impl Connection {
    /// Opens a connection (TCP_NODELAY) to `addr`.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(4096),
            out: Vec::with_capacity(512),
        })
    }

    /// Sends one request and reads the whole answer: status and body.
    pub async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Bytes)> {
        self.call_with(method, path, "", body).await
    }

    /// Sends one request with extra header lines (each ending in `\r\n`) and reads the answer.
    pub async fn call_with(
        &mut self,
        method: &str,
        path: &str,
        extra_headers: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Bytes)> {
        self.out.clear();
        use std::io::Write;
        write!(
            self.out,
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\n\r\n",
            self.host,
            body.len()
        )?;
        self.out.extend_from_slice(body);
        self.stream.write_all(&self.out).await?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 24];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.buf)? {
                let status = response.code.context("no status code")?;
                let length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .context("the answer has no content-length")
                    .and_then(|h| Ok(std::str::from_utf8(h.value)?.trim().parse::<usize>()?))?;
                while self.buf.len() < head + length {
                    self.fill().await?;
                }
                let body = Bytes::copy_from_slice(&self.buf[head..head + length]);
                self.buf.drain(..head + length);
                return Ok((status, body));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            bail!("the host closed the connection");
        }
        Ok(())
    }

    /// Submits a job; returns its id.
    pub async fn submit(&mut self, function: &str, body: Bytes) -> anyhow::Result<String> {
        let (status, answer) = self
            .call("POST", &format!("/v1/functions/{function}/jobs"), &body)
            .await?;
        anyhow::ensure!(
            status == 202,
            "submit answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
        // {"id":"<26 chars>","status":"queued"}
        let text = std::str::from_utf8(&answer)?;
        let start = text
            .find("\"id\":\"")
            .map(|i| i + 6)
            .ok_or_else(|| anyhow::anyhow!("no id in {text}"))?;
        Ok(text[start..start + 26].to_string())
    }

    /// GETs a path.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        self.call("GET", path, &[]).await
    }
}
