//! A lean HTTP/1.1 load client for the benchmark: one hyper connection per simulated client,
//! kept alive, no pooling or redirects, so the client costs as little CPU as it can.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// One keep-alive connection to the host.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Connection {
    /// Opens a connection (TCP_NODELAY) to `addr`.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection {
            sender,
            host: addr.to_string(),
        })
    }

    /// Sends one request and reads the whole answer.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        self.sender.ready().await?;
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Submits a job; returns its id.
    pub async fn submit(&mut self, function: &str, body: Bytes) -> anyhow::Result<String> {
        let (status, answer) = self
            .call(
                Method::POST,
                &format!("/v1/functions/{function}/jobs"),
                body,
            )
            .await?;
        anyhow::ensure!(
            status == StatusCode::ACCEPTED,
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
    pub async fn get(&mut self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        self.call(Method::GET, path, Bytes::new()).await
    }
}
