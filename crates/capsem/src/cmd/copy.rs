//! `capsem cp`: files between the host and a running sandbox, as tar
//! streams through the service. The host side packs and unpacks here, in
//! the user's own process; what comes out of the guest is checked by
//! [`capsem_service::archive::unpack`].

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use capsem_proto::blocking::{QueueReader, QueueWriter};
use capsem_service::archive::{self, CopyError, Unpack};
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::Method;
use hyper::body::Frame;

use crate::cmd::sandbox::{encode, service};
use crate::exit::Failure;

/// Chunks queued between the tar thread and the connection.
const QUEUE: usize = 8;

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// A host path, or `-`.
    Host(String),
    /// `NAME:PATH` in a sandbox (PATH made absolute).
    Guest { name: String, path: String },
}

fn parse(arg: &str) -> End {
    match arg.split_once(':') {
        // A host path with a colon needs a slash before it (./a:b).
        Some((name, path)) if !name.is_empty() && !name.contains('/') => {
            let path = if path.starts_with('/') {
                path.to_owned()
            } else {
                format!("/root/{path}")
            };
            End::Guest {
                name: name.to_owned(),
                path,
            }
        }
        _ => End::Host(arg.to_owned()),
    }
}

/// The last component of `path`, the name a copy travels under.
pub fn base_name(path: &str) -> Result<String, Failure> {
    Path::new(path.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Failure::new(format!("{path} has no name to copy under")))
}

/// Runs `capsem cp SRC DEST`.
pub async fn run(src: &str, dest: &str, follow: bool) -> Result<i32, Failure> {
    match (parse(src), parse(dest)) {
        (End::Host(from), End::Guest { name, path }) => put(&from, &name, &path, follow).await,
        (End::Guest { name, path }, End::Host(to)) => get(&name, &path, &to).await,
        (End::Host(_), End::Host(_)) => Err(Failure::new(
            "one side of capsem cp must be a sandbox path, NAME:PATH",
        )),
        (End::Guest { .. }, End::Guest { .. }) => Err(Failure::new(
            "capsem cp copies between the host and one sandbox, not between two",
        )),
    }
}

async fn put(from: &str, name: &str, path: &str, follow: bool) -> Result<i32, Failure> {
    let top = if from == "-" {
        base_name(path)?
    } else {
        base_name(from)?
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(QUEUE);
    let source = from.to_owned();
    let packed_top = top.clone();
    let pack = tokio::task::spawn_blocking(move || {
        let out = QueueWriter::new(tx);
        if source == "-" {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut data)?;
            archive::pack_bytes(&data, &packed_top, out)
        } else {
            archive::pack(Path::new(&source), &packed_top, follow, out)
        }
    });
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(Frame::data(Bytes::from(chunk))), rx))
    });
    let route = route_in(name, path, &top);
    let sent = service()
        .await?
        .stream(
            Method::PUT,
            &route,
            Some("application/x-tar"),
            StreamBody::new(chunks),
        )
        .await;
    // A packing error (an unreadable file) explains a refused copy best,
    // unless it only says the connection went away.
    match (sent, pack.await) {
        (_, Ok(Err(e))) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::new(format!("reading {from}: {e}")))
        }
        (Err(e), _) => Err(Failure::new(e)),
        (Ok(_), Ok(Ok(()))) => Ok(0),
        (Ok(_), Ok(Err(e))) => Err(Failure::new(format!("reading {from}: {e}"))),
        (Ok(_), Err(e)) => Err(Failure::new(e)),
    }
}

async fn get(name: &str, path: &str, to: &str) -> Result<i32, Failure> {
    let top = base_name(path)?;
    let settings = crate::cmd::run::load_settings()?;
    let max_bytes = settings.sandbox().max_copy_bytes;
    let target = target_of(to, &top);
    pull(name, path, move |input| match &target {
        None => to_stdout(input, &top, max_bytes),
        Some(target) => archive::unpack(
            input,
            &Unpack {
                target,
                top: &top,
                max_bytes,
            },
        )
        .map(|_| ()),
    })
    .await?;
    Ok(0)
}

/// Copies `path` out of the sandbox `name`: its tar stream goes to
/// `consume` on a blocking thread.
pub async fn pull<T: Send + 'static>(
    name: &str,
    path: &str,
    consume: impl FnOnce(QueueReader) -> Result<T, CopyError> + Send + 'static,
) -> Result<T, Failure> {
    let route = format!("/v1/sandboxes/{}/files?path={}", encode(name), encode(path));
    let response = service()
        .await?
        .stream(
            Method::GET,
            &route,
            None,
            http_body_util::Empty::<Bytes>::new(),
        )
        .await
        .map_err(Failure::new)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(QUEUE);
    let unpack = tokio::task::spawn_blocking(move || consume(QueueReader::new(rx)));
    let mut body = response.into_body().into_data_stream();
    let mut cut = None;
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => {
                // The unpacking ended (refused): stop reading.
                if tx.send(chunk.to_vec()).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                cut = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let unpacked = unpack.await.map_err(Failure::new)?;
    if let Some(e) = cut {
        return Err(Failure::new(format!(
            "the copy was cut short ({e}); nothing was written"
        )));
    }
    unpacked.map_err(Failure::new)
}

/// Copies `data` into the sandbox `name` as `path` (or `path/top`
/// when `path` is a directory there).
pub async fn push(name: &str, path: &str, top: &str, data: &[u8]) -> Result<(), Failure> {
    let mut tar = Vec::new();
    archive::pack_bytes(data, top, &mut tar).map_err(Failure::new)?;
    let route = route_in(name, path, top);
    service()
        .await?
        .stream(
            Method::PUT,
            &route,
            Some("application/x-tar"),
            http_body_util::Full::new(Bytes::from(tar)),
        )
        .await
        .map_err(Failure::new)?;
    Ok(())
}

fn route_in(name: &str, path: &str, top: &str) -> String {
    format!(
        "/v1/sandboxes/{}/files?path={}&name={}",
        encode(name),
        encode(path),
        encode(top)
    )
}

/// Where a copy out lands: `to`, or `to/top` when `to` is a directory;
/// `None` for stdout.
fn target_of(to: &str, top: &str) -> Option<PathBuf> {
    if to == "-" {
        return None;
    }
    let to = PathBuf::from(to);
    Some(if to.is_dir() { to.join(top) } else { to })
}

/// Writes the archive's one regular file to stdout.
fn to_stdout(input: QueueReader, top: &str, max_bytes: u64) -> Result<(), CopyError> {
    let mut stdout = std::io::stdout().lock();
    one_file(input, top, max_bytes, &mut stdout).map_err(|e| match e {
        CopyError::NotAFile { path } => CopyError::Hostile(format!(
            "{path} is not a regular file: copy it to a host path instead of -"
        )),
        other => other,
    })?;
    stdout.flush().map_err(|source| CopyError::Io {
        what: "writing to stdout".into(),
        source,
    })
}

/// Writes the archive's one regular file, named `top`, to `out`; what
/// `capsem cp NAME:FILE -` and `capsem mcp`'s `read_file` take out of a
/// guest.
pub fn one_file(
    input: impl std::io::Read,
    top: &str,
    max_bytes: u64,
    mut out: impl Write,
) -> Result<(), CopyError> {
    let mut archive = tar::Archive::new(input);
    let refused = |why: String| CopyError::Hostile(why);
    let mut entries = archive.entries().map_err(|e| refused(e.to_string()))?;
    let mut entry = entries
        .next()
        .ok_or_else(|| refused("an empty archive".into()))?
        .map_err(|e| refused(e.to_string()))?;
    let is_file = entry.header().entry_type() == tar::EntryType::Regular;
    let named = entry.path().is_ok_and(|p| p == Path::new(top));
    if !is_file || !named {
        return Err(CopyError::NotAFile { path: top.into() });
    }
    let copied = std::io::copy(
        &mut std::io::Read::take(&mut entry, max_bytes + 1),
        &mut out,
    )
    .map_err(|source| CopyError::Io {
        what: "writing the file out".into(),
        source,
    })?;
    if copied > max_bytes {
        return Err(CopyError::TooLarge { limit: max_bytes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_are_told_apart_and_guest_paths_made_absolute() {
        assert_eq!(
            parse("web:/root/x"),
            End::Guest {
                name: "web".into(),
                path: "/root/x".into()
            }
        );
        assert_eq!(
            parse("web:src"),
            End::Guest {
                name: "web".into(),
                path: "/root/src".into()
            }
        );
        assert_eq!(parse("./a:b"), End::Host("./a:b".into()));
        assert_eq!(parse("-"), End::Host("-".into()));
        assert_eq!(parse("/tmp/x"), End::Host("/tmp/x".into()));
    }
}
