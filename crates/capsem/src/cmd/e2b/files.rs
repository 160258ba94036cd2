//! envd's HTTP routes: `GET /files` (a file's bytes), `POST /files` (an
//! upload, multipart or octet-stream) and `GET /health`. A file goes
//! through `cat` in the guest, streamed both ways: nothing of it is held
//! whole on the host.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
use super::fs::{MAX_STDERR, Refusal, refusal, resolve};
use super::process::{only_root, user_of};
use super::{ApiError, Server, call, route};
use crate::cmd::guest::{self, Captured, MUST_EXIST, Output, Sink, Source};

/// The most bytes a multipart upload's headers and preamble may take: the
/// parser holds them whole until it finds their end.
const MAX_PART_HEAD: u64 = 64 * 1024;

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
            Refusal::TimedOut(_) => StatusCode::GATEWAY_TIMEOUT,
            Refusal::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::Unavailable(_) => StatusCode::BAD_GATEWAY,
        };
        ApiError(status, refusal.message())
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

fn start_of(script: String, path: &str) -> ExecStart {
    let argv = vec!["sh".into(), "-c".into(), script, "sh".into(), path.into()];
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
    let script = format!(
        "{MUST_EXIST}test -d \"$1\" && {{ printf '%s: is a directory\\n' \"$1\" >&2; exit 21; }}; \
         exec cat -- \"$1\""
    );
    let (_sink, mut source) = guest::open(&sandbox.name, &start_of(script, &path))
        .await
        .map_err(Refusal::Unavailable)?;
    let mut stderr = Captured::new(MAX_STDERR);
    // The status is known at the first byte of the file, or at the end of
    // a command that wrote none (an empty file: the body ends there).
    let (first, rest) = loop {
        match guest::next(&mut source)
            .await
            .map_err(Refusal::Unavailable)?
        {
            Some(Output::Stdout(data)) => break (data, Some(source)),
            Some(Output::Stderr(data)) => stderr.push(&data),
            Some(Output::End(ServerMsg::Exited { code: Some(0), .. })) => {
                break (Bytes::new(), None);
            }
            Some(Output::End(end)) => return Err(refusal(end, &stderr.data).into()),
            None => return Err(Refusal::Unavailable("the sandbox ended the copy".into()).into()),
        }
    };
    let body = futures::stream::once(std::future::ready(Ok(first))).chain(rest_of(rest));
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(body),
    )
        .into_response())
}

/// The file's bytes after the first; a copy cut short ends the body with
/// an error, so the client sees a broken transfer, not a shorter file.
fn rest_of(source: Option<Source>) -> impl Stream<Item = std::io::Result<Bytes>> {
    futures::stream::unfold(source, |source| async move {
        let mut source = source?;
        loop {
            match guest::next(&mut source).await {
                Ok(Some(Output::Stdout(data))) => return Some((Ok(data), Some(source))),
                Ok(Some(Output::Stderr(_))) => {}
                Ok(Some(Output::End(ServerMsg::Exited { code: Some(0), .. }))) => return None,
                Ok(_) => {
                    return Some((
                        Err(std::io::Error::other("the copy failed in the sandbox")),
                        None,
                    ));
                }
                Err(e) => return Some((Err(std::io::Error::other(e)), None)),
            }
        }
    })
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
    let (parts, body) = request.into_parts();
    let heads = Arc::new(HeadBound::default());
    let counted = {
        let heads = heads.clone();
        body.into_data_stream().map(move |chunk| heads.count(chunk))
    };
    let request = Request::from_parts(parts, Body::from_stream(counted));
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad(format!("a bad multipart upload: {e}")))?;
    let mut done = Vec::new();
    loop {
        heads.reading.store(true, Ordering::Relaxed);
        heads.since.store(0, Ordering::Relaxed);
        let next = form.next_field().await;
        heads.reading.store(false, Ordering::Relaxed);
        let Some(field) =
            next.map_err(|e| ApiError::bad(format!("a bad multipart upload: {e}")))?
        else {
            break;
        };
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

/// Counts what a multipart body gives while its parser looks for a part's
/// headers, and cuts it past [`MAX_PART_HEAD`].
#[derive(Default)]
struct HeadBound {
    reading: AtomicBool,
    since: AtomicU64,
}

impl HeadBound {
    fn count(&self, chunk: Result<Bytes, axum::Error>) -> Result<Bytes, std::io::Error> {
        let chunk = chunk.map_err(std::io::Error::other)?;
        if self.reading.load(Ordering::Relaxed) {
            let read = self.since.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if read + chunk.len() as u64 > MAX_PART_HEAD {
                return Err(std::io::Error::other(format!(
                    "a part's headers run past {} KiB",
                    MAX_PART_HEAD >> 10
                )));
            }
        }
        Ok(chunk)
    }
}

fn written(path: String) -> Written {
    let name = path.rsplit('/').next().unwrap_or("").to_owned();
    Written {
        name,
        r#type: "file",
        path,
    }
}

/// Streams `chunks` into `path` in the guest (its directories made),
/// through a file beside it that replaces it only when whole.
async fn write(
    sandbox: &Sandbox,
    path: &str,
    chunks: impl Stream<Item = Result<Bytes, String>>,
) -> Result<(), ApiError> {
    let script = "test -d \"$1\" && { printf '%s: is a directory\\n' \"$1\" >&2; exit 21; }; \
                  mkdir -p -- \"$(dirname -- \"$1\")\" || exit 1; \
                  part=\"$1.capsem-upload.$$\"; trap 'rm -f -- \"$part\"' EXIT; trap 'exit 1' TERM; \
                  cat > \"$part\" && mv -f -- \"$part\" \"$1\"";
    let (mut sink, mut source) = guest::open(&sandbox.name, &start_of(script.into(), path))
        .await
        .map_err(Refusal::Unavailable)?;
    let mut stderr = Captured::new(MAX_STDERR);
    // Output is read while the upload goes: a command that writes while it
    // reads would otherwise wait on a reader that waits on it.
    let receive = async {
        loop {
            match guest::next(&mut source)
                .await
                .map_err(Refusal::Unavailable)?
            {
                Some(Output::Stderr(data)) => stderr.push(&data),
                Some(Output::Stdout(_)) => {}
                Some(Output::End(end)) => return Ok::<_, Refusal>(end),
                None => return Err(Refusal::Unavailable("the sandbox ended the copy".into())),
            }
        }
    };
    let mut fed = None;
    let end = {
        let mut receive = pin!(receive);
        tokio::select! {
            end = &mut receive => end,
            result = feed(&mut sink, chunks) => {
                fed = Some(result);
                receive.await
            }
        }
    }?;
    match (end, fed) {
        (ServerMsg::Exited { code: Some(0), .. }, Some(Ok(()))) => Ok(()),
        (ServerMsg::Exited { code: Some(0), .. }, _) => Err(ApiError::bad(format!(
            "the upload ended before its body did; {path} is unchanged"
        ))),
        (_, Some(Err(e))) if e.starts_with("the client:") => Err(ApiError::bad(format!(
            "the upload was cut short ({e}); {path} is unchanged"
        ))),
        (end, _) => Err(refusal(end, &stderr.data).into()),
    }
}

/// Feeds every chunk, then stdin's end; a broken upload stops the writer
/// (SIGTERM: its part file is removed) instead of ending stdin, so a
/// partial file is not taken for whole.
async fn feed(
    sink: &mut Sink,
    chunks: impl Stream<Item = Result<Bytes, String>>,
) -> Result<(), String> {
    let mut chunks = pin!(chunks);
    while let Some(chunk) = chunks.next().await {
        match chunk {
            Ok(chunk) => guest::feed(sink, &chunk).await?,
            Err(e) => {
                let _ = sink
                    .send(guest::control(ClientMsg::Signal { signal: 15 }))
                    .await;
                return Err(format!("the client: {e}"));
            }
        }
    }
    sink.send(guest::control(ClientMsg::StdinEof))
        .await
        .map_err(|e| e.to_string())
}

/// 204 while the sandbox runs; 502 "was not found" (the SDKs' words for
/// killed) when its capsem sandbox is gone, 502 "paused" when stopped.
async fn health(Extension(sandbox): Extension<Arc<Sandbox>>) -> Result<StatusCode, ApiError> {
    let info: Result<capsem_service::api::SandboxInfo, _> =
        call(Method::GET, &route(&sandbox.name, ""), None::<&()>).await;
    match info {
        Ok(info) => match info.state {
            VmState::Running => Ok(StatusCode::NO_CONTENT),
            VmState::Starting => Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("sandbox {} is starting", sandbox.id),
            )),
            VmState::Suspended | VmState::Stopped => Err(ApiError(
                StatusCode::BAD_GATEWAY,
                format!(
                    "sandbox {} is paused; Sandbox.connect resumes it",
                    sandbox.id
                ),
            )),
        },
        Err(ApiError(StatusCode::NOT_FOUND, _)) => Err(ApiError(
            StatusCode::BAD_GATEWAY,
            format!("The sandbox {} was not found", sandbox.id),
        )),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parts_headers_are_cut_past_their_bound_and_its_data_is_not() {
        let bound = HeadBound::default();
        let chunk = || Ok(Bytes::from(vec![b'x'; 16 * 1024]));
        bound.reading.store(true, Ordering::Relaxed);
        for _ in 0..4 {
            assert!(bound.count(chunk()).is_ok());
        }
        assert!(
            bound
                .count(chunk())
                .unwrap_err()
                .to_string()
                .contains("64 KiB")
        );
        bound.reading.store(false, Ordering::Relaxed);
        for _ in 0..100 {
            assert!(bound.count(chunk()).is_ok());
        }
    }
}
