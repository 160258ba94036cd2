//! envd's HTTP routes: `GET /files` (a file's bytes), `POST /files` (an
//! upload, multipart or octet-stream) and `GET /health`. A file goes
//! through `cat` in the guest, streamed both ways: nothing of it is held
//! whole on the host.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};
use capsem_proto::Command;
use capsem_service::api::{ClientMsg, ExecStart, ServerMsg, State as VmState};
use futures::{SinkExt, Stream, StreamExt};
use hyper::Method;
use serde::{Deserialize, Serialize};

use super::control::Sandbox;
use super::fs::{Refusal, refusal, resolve};
use super::process::{only_root, user_of};
use super::{ApiError, Server, call, route};
use crate::cmd::guest::{self, Output, Sink};

/// The most of a failing command's stderr kept for its error.
const MAX_STDERR: usize = 4096;

pub fn routes() -> Router<Arc<Server>> {
    Router::new()
        // An upload streams into the guest: no body limit to hold it to.
        .route(
            "/files",
            get(download)
                .post(upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/health", get(health))
}

#[derive(Deserialize)]
struct FileQuery {
    path: Option<String>,
    username: Option<String>,
}

#[derive(Serialize)]
struct Written {
    name: String,
    r#type: &'static str,
    path: String,
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let status = match &refusal {
            Refusal::NotFound(_) => StatusCode::NOT_FOUND,
            Refusal::Exists(_) => StatusCode::CONFLICT,
            Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
            Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::Unavailable(_) => StatusCode::BAD_GATEWAY,
        };
        let (Refusal::NotFound(m)
        | Refusal::Exists(m)
        | Refusal::Invalid(m)
        | Refusal::TooLarge(m)
        | Refusal::Failed(m)
        | Refusal::Unavailable(m)) = refusal;
        ApiError(status, m)
    }
}

/// The user a request asks for, by query or by envd's basic header.
fn check_user(query: &FileQuery, request: &Request) -> Result<(), ApiError> {
    let header = request.headers().get(header::AUTHORIZATION);
    let user = query
        .username
        .clone()
        .or_else(|| user_of(header.and_then(|v| v.to_str().ok())));
    only_root(user).map_err(ApiError::bad)
}

fn start_of(script: &str, path: &str) -> ExecStart {
    let argv = ["sh", "-c", script, "sh", path].map(String::from).to_vec();
    ExecStart {
        command: Command::Argv(argv),
        env: Vec::new(),
        tty: None,
        timeout_ms: None,
    }
}

async fn download(
    Extension(sandbox): Extension<Arc<Sandbox>>,
    Query(query): Query<FileQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    check_user(&query, &request)?;
    let path = resolve(query.path.as_deref().unwrap_or(""))?;
    let script = "test -e \"$1\" || { echo \"$1: no such file or directory\" >&2; exit 2; }; \
                  test -d \"$1\" && { echo \"$1: is a directory\" >&2; exit 21; }; exec cat -- \"$1\"";
    let (_sink, mut source) = guest::open(&sandbox.name, &start_of(script, &path))
        .await
        .map_err(Refusal::Unavailable)?;
    let mut stderr = guest::Captured::new(MAX_STDERR);
    // The status is known at the first byte of the file, or at the end of
    // a command that wrote none.
    let first = loop {
        match guest::next(&mut source)
            .await
            .map_err(Refusal::Unavailable)?
        {
            Some(Output::Stdout(data)) => break data,
            Some(Output::Stderr(data)) => stderr.push(&data),
            Some(Output::End(ServerMsg::Exited { code: Some(0), .. })) => break Bytes::new(),
            Some(Output::End(end)) => return Err(refusal(end, &stderr.data).into()),
            None => return Err(Refusal::Unavailable("the sandbox ended the copy".into()).into()),
        }
    };
    let rest = futures::stream::unfold(Some(source), |source| async move {
        let mut source = source?;
        loop {
            match guest::next(&mut source).await {
                Ok(Some(Output::Stdout(data))) => return Some((Ok(data), Some(source))),
                Ok(Some(Output::Stderr(_))) => {}
                Ok(Some(Output::End(ServerMsg::Exited { code: Some(0), .. }))) => return None,
                // A copy cut short ends the body with an error: the client
                // sees a broken transfer, not a shorter file.
                Ok(_) => {
                    return Some((
                        Err(std::io::Error::other("the copy failed in the sandbox")),
                        None,
                    ));
                }
                Err(e) => return Some((Err(std::io::Error::other(e)), None)),
            }
        }
    });
    let body =
        futures::stream::once(std::future::ready(Ok::<_, std::io::Error>(first))).chain(rest);
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(body),
    )
        .into_response())
}

async fn upload(
    Extension(sandbox): Extension<Arc<Sandbox>>,
    Query(query): Query<FileQuery>,
    request: Request,
) -> Result<Json<Vec<Written>>, ApiError> {
    check_user(&query, &request)?;
    let encoded = request
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    if encoded {
        return Err(ApiError::bad(
            "capsem's E2B server takes uploads uncompressed (leave gzip off)",
        ));
    }
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !multipart {
        let path = resolve(query.path.as_deref().unwrap_or(""))?;
        let body = request.into_body().into_data_stream();
        write(&sandbox, &path, body.map(|c| c.map_err(|e| e.to_string()))).await?;
        return Ok(Json(vec![written(path)]));
    }
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad(format!("a bad multipart upload: {e}")))?;
    let mut done = Vec::new();
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| ApiError::bad(format!("a bad multipart upload: {e}")))?
    {
        let named = field.file_name().map(str::to_owned);
        let path = match (&query.path, named) {
            (Some(path), _) if done.is_empty() => resolve(path)?,
            (_, Some(name)) => resolve(&name)?,
            (_, None) => return Err(ApiError::bad("a multipart file without a path")),
        };
        let chunks = futures::stream::unfold(field, |mut field| async move {
            match field.chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), field)),
                Ok(None) => None,
                Err(e) => Some((Err(e.to_string()), field)),
            }
        });
        write(&sandbox, &path, chunks).await?;
        done.push(written(path));
    }
    Ok(Json(done))
}

fn written(path: String) -> Written {
    let name = path.rsplit('/').next().unwrap_or("").to_owned();
    Written {
        name,
        r#type: "file",
        path,
    }
}

/// Streams `chunks` into `path` in the guest (its directories made).
async fn write(
    sandbox: &Sandbox,
    path: &str,
    chunks: impl Stream<Item = Result<Bytes, String>>,
) -> Result<(), ApiError> {
    let script = "test -d \"$1\" && { echo \"$1: is a directory\" >&2; exit 21; }; \
                  mkdir -p -- \"$(dirname -- \"$1\")\" && exec cat > \"$1\"";
    let (mut sink, mut source) = guest::open(&sandbox.name, &start_of(script, path))
        .await
        .map_err(Refusal::Unavailable)?;
    let fed = feed(&mut sink, chunks).await;
    let mut stderr = guest::Captured::new(MAX_STDERR);
    let end = loop {
        match guest::next(&mut source)
            .await
            .map_err(Refusal::Unavailable)?
        {
            Some(Output::Stderr(data)) => stderr.push(&data),
            Some(Output::Stdout(_)) => {}
            Some(Output::End(end)) => break end,
            None => return Err(Refusal::Unavailable("the sandbox ended the copy".into()).into()),
        }
    };
    if let Err(e) = fed {
        return Err(ApiError::bad(format!(
            "the upload was cut short ({e}); {path} is incomplete"
        )));
    }
    match end {
        ServerMsg::Exited { code: Some(0), .. } => Ok(()),
        end => Err(refusal(end, &stderr.data).into()),
    }
}

/// Feeds every chunk, then stdin's end; a broken upload kills the writer
/// instead of ending stdin, so a partial file is not taken for whole.
async fn feed(
    sink: &mut Sink,
    chunks: impl Stream<Item = Result<Bytes, String>>,
) -> Result<(), String> {
    let mut chunks = std::pin::pin!(chunks);
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) => guest::feed(sink, &chunk).await?,
            Err(e) => {
                let _ = sink
                    .send(guest::control(ClientMsg::Signal { signal: 9 }))
                    .await;
                return Err(e);
            }
        }
    }
    sink.send(guest::control(ClientMsg::StdinEof))
        .await
        .map_err(|e| e.to_string())
}

/// 204 while the sandbox runs; a stopped one is "paused" to E2B.
async fn health(Extension(sandbox): Extension<Arc<Sandbox>>) -> Result<StatusCode, ApiError> {
    let info: capsem_service::api::SandboxInfo =
        call(Method::GET, &route(&sandbox.name, ""), None::<&()>).await?;
    match info.state {
        VmState::Running => Ok(StatusCode::NO_CONTENT),
        _ => Err(ApiError(
            StatusCode::BAD_GATEWAY,
            format!(
                "sandbox {} is paused; Sandbox.connect resumes it",
                sandbox.id
            ),
        )),
    }
}
