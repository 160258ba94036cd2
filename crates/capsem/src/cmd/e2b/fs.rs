//! envd's `filesystem.Filesystem` service: each call a short shell command
//! in the guest (`find`, `mkdir`, `mv`, `rm`), whose exit code says what
//! went wrong and whose listing is parsed as the guest's, never trusted.

use std::time::Duration;

use capsem_proto::Command;
use capsem_service::api::ServerMsg;
use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};

use super::proto::filesystem::*;
use super::sandbox_of;
use crate::cmd::guest::{self, MUST_EXIST, Stat};

/// A filesystem command's time limit.
const TIMEOUT: Duration = Duration::from_secs(60);
/// The most of a listing read.
const MAX_LISTING: usize = 16 << 20;
/// The most of a command's stderr kept for its error.
pub const MAX_STDERR: usize = 4096;
/// Where a relative path starts: root's home, as envd's is the user's.
pub const HOME: &str = "/root";

/// Exit codes the scripts use for what the client is told apart.
const NOT_FOUND: u8 = 2;
const EXISTS: u8 = 17;
const NOT_DIR: u8 = 20;
const IS_DIR: u8 = 21;

/// Why a guest command failed, as a client sees it.
#[derive(Debug)]
pub enum Refusal {
    NotFound(String),
    Exists(String),
    Invalid(String),
    TooLarge(String),
    TimedOut(String),
    Failed(String),
    Unavailable(String),
}

impl From<Refusal> for ConnectError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotFound(m) => ConnectError::not_found(m),
            Refusal::Exists(m) => ConnectError::already_exists(m),
            Refusal::Invalid(m) => ConnectError::invalid_argument(m),
            Refusal::TooLarge(m) => ConnectError::resource_exhausted(m),
            Refusal::TimedOut(m) => ConnectError::deadline_exceeded(m),
            Refusal::Failed(m) => ConnectError::internal(m),
            Refusal::Unavailable(m) => ConnectError::unavailable(m),
        }
    }
}

impl Refusal {
    /// What it says.
    pub fn message(self) -> String {
        match self {
            Refusal::NotFound(m)
            | Refusal::Exists(m)
            | Refusal::Invalid(m)
            | Refusal::TooLarge(m)
            | Refusal::TimedOut(m)
            | Refusal::Failed(m)
            | Refusal::Unavailable(m) => m,
        }
    }
}

/// The refusal a script's exit code (and stderr) means.
pub fn refusal(end: ServerMsg, stderr: &[u8]) -> Refusal {
    let said = String::from_utf8_lossy(stderr).trim().to_owned();
    match end {
        ServerMsg::Exited {
            code: Some(NOT_FOUND),
            ..
        } => Refusal::NotFound(said),
        ServerMsg::Exited {
            code: Some(EXISTS), ..
        } => Refusal::Exists(said),
        ServerMsg::Exited {
            code: Some(NOT_DIR | IS_DIR),
            ..
        } => Refusal::Invalid(said),
        ServerMsg::Error { message } => Refusal::Unavailable(message),
        ServerMsg::TimedOut => {
            Refusal::TimedOut("the command ran past its time limit in the sandbox".into())
        }
        _ if said.is_empty() => Refusal::Failed("the command failed in the sandbox".into()),
        _ => Refusal::Failed(said),
    }
}

/// `path` in the guest: a relative one from [`HOME`], checked as
/// [`guest::guest_path`] checks.
pub fn resolve(path: &str) -> Result<String, Refusal> {
    let path = match path {
        "" => return Err(Refusal::Invalid("give a path".into())),
        p if p.starts_with('/') => p.to_owned(),
        p => format!("{HOME}/{p}"),
    };
    guest::guest_path(&path).map_err(Refusal::Invalid)?;
    Ok(path)
}

/// Runs `script` with `args` as `$1...` in the sandbox `name`.
async fn sh(name: &str, script: &str, args: &[&str]) -> Result<(), Refusal> {
    let mut argv: Vec<String> = ["sh", "-c", script, "sh"].map(String::from).to_vec();
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    run(name, Command::Argv(argv), 0).await.map(drop)
}

/// Runs `command`; its stdout, at most `cap` bytes of it.
async fn run(name: &str, command: Command, cap: usize) -> Result<guest::Captured, Refusal> {
    let (end, out, err) = guest::run(name, command, b"", TIMEOUT, (cap, MAX_STDERR))
        .await
        .map_err(Refusal::Unavailable)?;
    match end {
        ServerMsg::Exited { code: Some(0), .. } => Ok(out),
        end => Err(refusal(end, &err.data)),
    }
}

/// Stats of `path` down to `depth` (0: the path itself).
async fn list(name: &str, path: &str, depth: u32) -> Result<Vec<EntryInfo>, Refusal> {
    let min = u32::from(depth > 0);
    let listing = run(name, guest::listing(path, min, depth), MAX_LISTING).await?;
    if listing.total > MAX_LISTING as u64 {
        return Err(Refusal::TooLarge(format!(
            "{path} lists more than {} MiB of entries; list it less deep",
            MAX_LISTING >> 20
        )));
    }
    Ok(guest::entries(&listing.data)
        .into_iter()
        .map(entry)
        .collect())
}

async fn stat(name: &str, path: &str) -> Result<EntryInfo, Refusal> {
    list(name, path, 0)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Refusal::NotFound(format!("{path}: no such file or directory")))
}

/// Seconds since the epoch as a protobuf `Timestamp`; none for a time it
/// cannot hold (the guest sets its files' times).
fn timestamp(seconds: f64) -> Option<buffa_types::google::protobuf::Timestamp> {
    // 0001-01-01 and 9999-12-31, the bounds of a protobuf Timestamp.
    let whole = seconds.floor();
    if !(-62_135_596_800.0..=253_402_300_799.0).contains(&whole) {
        return None;
    }
    let nanos = ((seconds - whole) * 1e9) as i32;
    buffa_types::google::protobuf::Timestamp::from_unix_checked(
        whole as i64,
        nanos.min(999_999_999),
    )
}

fn entry(stat: Stat) -> EntryInfo {
    let kind = match stat.kind {
        'f' => FileType::FILE_TYPE_FILE,
        'd' => FileType::FILE_TYPE_DIRECTORY,
        'l' => FileType::FILE_TYPE_SYMLINK,
        _ => FileType::FILE_TYPE_UNSPECIFIED,
    };
    EntryInfo {
        permissions: permissions(stat.kind, stat.mode),
        r#type: kind.into(),
        size: i64::try_from(stat.size).unwrap_or(i64::MAX),
        mode: stat.mode,
        modified_time: timestamp(stat.modified).into(),
        symlink_target: (stat.kind == 'l').then_some(stat.target),
        name: stat.name,
        path: stat.path,
        owner: stat.owner,
        group: stat.group,
        ..Default::default()
    }
}

/// `ls -l`'s spelling of a kind and permission bits: `drwxr-xr-x`.
fn permissions(kind: char, mode: u32) -> String {
    let first = match kind {
        'd' | 'l' => kind,
        _ => '-',
    };
    let bits = (0..9).rev().map(|bit| {
        let letter = ['x', 'w', 'r'][bit % 3];
        if mode & (1 << bit) != 0 { letter } else { '-' }
    });
    std::iter::once(first).chain(bits).collect()
}

/// The `filesystem.Filesystem` service.
pub struct Files;

// The trait's `impl Trait` answers are spelled as the concrete types.
#[allow(refining_impl_trait)]
impl Filesystem for Files {
    async fn stat(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, StatRequest>,
    ) -> ServiceResult<StatResponse> {
        let path = resolve(request.path)?;
        let entry = stat(&sandbox_of(&ctx)?.name, &path).await?;
        Response::ok(StatResponse {
            entry: entry.into(),
            ..Default::default()
        })
    }

    async fn make_dir(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, MakeDirRequest>,
    ) -> ServiceResult<MakeDirResponse> {
        let path = resolve(request.path)?;
        let name = sandbox_of(&ctx)?.name.clone();
        let script = "test -e \"$1\" && { printf '%s: already exists\\n' \"$1\" >&2; exit 17; }; \
                      mkdir -p -- \"$1\"";
        sh(&name, script, &[&path]).await?;
        Response::ok(MakeDirResponse {
            entry: stat(&name, &path).await?.into(),
            ..Default::default()
        })
    }

    async fn r#move(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, MoveRequest>,
    ) -> ServiceResult<MoveResponse> {
        let (from, to) = (resolve(request.source)?, resolve(request.destination)?);
        let name = sandbox_of(&ctx)?.name.clone();
        let script = format!(
            "{MUST_EXIST}mkdir -p -- \"$(dirname -- \"$2\")\" && mv -f -T -- \"$1\" \"$2\""
        );
        sh(&name, &script, &[&from, &to]).await?;
        Response::ok(MoveResponse {
            entry: stat(&name, &to).await?.into(),
            ..Default::default()
        })
    }

    async fn list_dir(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, ListDirRequest>,
    ) -> ServiceResult<ListDirResponse> {
        let path = resolve(request.path)?;
        let depth = request.depth.max(1);
        let entries = list(&sandbox_of(&ctx)?.name, &path, depth).await?;
        Response::ok(ListDirResponse {
            entries,
            ..Default::default()
        })
    }

    async fn remove(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, RemoveRequest>,
    ) -> ServiceResult<RemoveResponse> {
        let path = resolve(request.path)?;
        let script = format!("{MUST_EXIST}rm -rf -- \"$1\"");
        sh(&sandbox_of(&ctx)?.name, &script, &[&path]).await?;
        Response::ok(RemoveResponse::default())
    }

    async fn watch_dir(
        &self,
        _ctx: RequestContext,
        _request: ServiceRequest<'_, WatchDirRequest>,
    ) -> ServiceResult<ServiceStream<WatchDirResponse>> {
        Err::<Response<ServiceStream<WatchDirResponse>>, _>(not_watching())
    }

    async fn create_watcher(
        &self,
        _ctx: RequestContext,
        _request: ServiceRequest<'_, CreateWatcherRequest>,
    ) -> ServiceResult<CreateWatcherResponse> {
        Err(not_watching())
    }

    async fn get_watcher_events(
        &self,
        _ctx: RequestContext,
        _request: ServiceRequest<'_, GetWatcherEventsRequest>,
    ) -> ServiceResult<GetWatcherEventsResponse> {
        Err(not_watching())
    }

    async fn remove_watcher(
        &self,
        _ctx: RequestContext,
        _request: ServiceRequest<'_, RemoveWatcherRequest>,
    ) -> ServiceResult<RemoveWatcherResponse> {
        Err(not_watching())
    }
}

fn not_watching() -> ConnectError {
    ConnectError::unimplemented("capsem's E2B server does not watch directories (docs/e2b.md)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_as_ls_spells_them() {
        assert_eq!(permissions('d', 0o755), "drwxr-xr-x");
        assert_eq!(permissions('f', 0o640), "-rw-r-----");
        assert_eq!(permissions('l', 0o777), "lrwxrwxrwx");
    }

    #[test]
    fn times_a_timestamp_cannot_hold_are_dropped() {
        let before_1970 = timestamp(-0.5).unwrap();
        assert_eq!((before_1970.seconds, before_1970.nanos), (-1, 500_000_000));
        assert!(timestamp(1e300).is_none());
        assert!(timestamp(-1e300).is_none());
        assert_eq!(timestamp(1_700_000_000.25).unwrap().nanos, 250_000_000);
    }

    #[test]
    fn relative_paths_start_at_home_and_traversal_is_refused() {
        assert_eq!(resolve("a.txt").unwrap(), "/root/a.txt");
        assert_eq!(resolve("/etc/hosts").unwrap(), "/etc/hosts");
        assert!(matches!(resolve(""), Err(Refusal::Invalid(_))));
        assert!(matches!(resolve("../../etc"), Err(Refusal::Invalid(_))));
        assert!(matches!(resolve("/a\0b"), Err(Refusal::Invalid(_))));
    }

    #[test]
    fn exit_codes_become_the_errors_the_sdks_branch_on() {
        let exit = |code| ServerMsg::Exited {
            code: Some(code),
            signal: None,
        };
        assert!(
            matches!(refusal(exit(2), b"x: no such file"), Refusal::NotFound(m) if m == "x: no such file")
        );
        assert!(matches!(refusal(exit(17), b""), Refusal::Exists(_)));
        assert!(matches!(refusal(exit(1), b""), Refusal::Failed(_)));
    }
}
