//! A client of the service's (or a supervisor's) API on its unix socket.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio_tungstenite::WebSocketStream;

use crate::api::ErrorBody;

/// Largest answer body read (a listing of many sandboxes fits).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error("cannot reach {socket}: {source}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("talking to {socket}: {message}")]
    Http {
        /// The socket.
        socket: PathBuf,
        /// What failed.
        message: String,
    },
    /// The API answered with an error.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The API's message.
        message: String,
    },
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A WebSocket to an API route.
pub type Socket = WebSocketStream<UnixStream>;

/// Talks to one socket; each request opens a connection of its own.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the API on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
        }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn connect(&self) -> Result<UnixStream, ClientError> {
        UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                socket: self.socket.clone(),
                source,
            })
    }

    fn http(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Http {
            socket: self.socket.clone(),
            message: e.to_string(),
        }
    }

    /// `GET path`, decoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// `method path` with a JSON body (or none), the answer decoded.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body).map_err(|e| self.http(e))?),
            None => Bytes::new(),
        };
        let json = Some("application/json");
        let response = self.stream(method, path, json, Full::new(body)).await?;
        let bytes = self.body_bytes(response).await?;
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map_err(|e| self.http(format!("a bad answer: {e}")))
    }

    /// `method path` with a streamed body of `content_type`; the answer as
    /// it comes (an error status already turned into [`ClientError::Api`]).
    pub async fn stream<B>(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: B,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.http(e))?;
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let request = request.body(body).map_err(|e| self.http(e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.http(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        Err(api_error(status, &self.body_bytes(response).await?))
    }

    /// A whole answer body, at most [`MAX_BODY_BYTES`].
    async fn body_bytes(
        &self,
        response: hyper::Response<hyper::body::Incoming>,
    ) -> Result<Bytes, ClientError> {
        let limited = http_body_util::Limited::new(response.into_body(), MAX_BODY_BYTES);
        Ok(limited
            .collect()
            .await
            .map_err(|e| self.http(e))?
            .to_bytes())
    }

    /// Opens a WebSocket on `path`.
    pub async fn websocket(&self, path: &str) -> Result<Socket, ClientError> {
        let stream = self.connect().await?;
        let url = format!("ws://localhost{path}");
        match tokio_tungstenite::client_async(url, stream).await {
            Ok((socket, _)) => Ok(socket),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response.body().clone().unwrap_or_default();
                Err(api_error(response.status(), &body))
            }
            Err(e) => Err(self.http(e)),
        }
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map_or_else(|_| format!("the API answered {status}"), |body| body.error);
    ClientError::Api {
        status: status.as_u16(),
        message,
    }
}
