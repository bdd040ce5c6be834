//! A minimal SSE client for tests: raw frames from a streaming response,
//! comments included (heartbeats are checked on the raw bytes).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

/// One SSE message: its `id:` (if any), its `data:` and whether it was a
/// comment-only frame.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub id: Option<String>,
    pub data: Option<String>,
    pub retry: Option<u64>,
    pub comment: Option<String>,
}

impl Message {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().unwrap_or("null")).expect("data is JSON")
    }
}

/// The `payload.propertyId` of each message, in order: what the tests
/// compare against the rows they inserted.
pub fn property_ids(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            m.json()["payload"]["propertyId"]
                .as_str()
                .expect("a propertyId")
                .to_owned()
        })
        .collect()
}

pub struct SseClient {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body_text: String,
    stream: Option<futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    buf: String,
}

impl SseClient {
    /// GET `url` with optional bearer token and extra headers.
    pub async fn connect(url: &str, token: Option<&str>, headers: &[(&str, &str)]) -> SseClient {
        let client = reqwest::Client::new();
        let mut req = client.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = tokio::time::timeout(Duration::from_secs(15), req.send())
            .await
            .expect("response within 15 s")
            .expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        if status != 200 {
            let body_text = resp.text().await.unwrap_or_default();
            return SseClient {
                status,
                headers,
                body_text,
                stream: None,
                buf: String::new(),
            };
        }
        SseClient {
            status,
            headers,
            body_text: String::new(),
            stream: Some(resp.bytes_stream().boxed()),
            buf: String::new(),
        }
    }

    /// The next message, or `None` when the stream ended (or nothing came
    /// within `within`: `Err`).
    pub async fn next(&mut self, within: Duration) -> Result<Option<Message>, ()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let raw: String = self.buf.drain(..end + 2).collect();
                let mut m = Message::default();
                for line in raw.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        m.id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        m.data = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        m.retry = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix(':') {
                        m.comment = Some(v.trim().to_owned());
                    }
                }
                return Ok(Some(m));
            }
            let Some(stream) = self.stream.as_mut() else {
                return Ok(None);
            };
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => return Err(()),
                Ok(None) | Ok(Some(Err(_))) => {
                    self.stream = None;
                    return Ok(None);
                }
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
            }
        }
    }

    /// The next message that carries an event (`id:` set), skipping
    /// heartbeats and data-only messages.
    pub async fn next_event(&mut self, within: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Ok(Some(m)) if m.id.is_some() => return Some(m),
                Ok(Some(_)) => continue,
                Ok(None) | Err(()) => return None,
            }
        }
    }

    /// Collects events until `n` arrived or `within` passed.
    pub async fn events(&mut self, n: usize, within: Duration) -> Vec<Message> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(m) => out.push(m),
                None => break,
            }
        }
        out
    }

    /// Whether the server ended the stream within `within`.
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Ok(None) => return true,
                Ok(Some(_)) => continue,
                Err(()) => return false,
            }
        }
    }
}
