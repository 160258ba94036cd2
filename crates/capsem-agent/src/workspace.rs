//! The workspace in the guest: a read-only FUSE mount of the host's
//! project, under an overlay that takes every write.
//!
//! The FUSE file system forwards each lookup, listing and read to the host
//! ([`FsRequest`]s on streams of its own) and answers the kernel when the
//! host has; it keeps only a map of inode numbers to paths. Nothing here
//! is trusted by the host: it opens every path again beneath the project,
//! read-only (see `capsem_core::workspace::export`). The overlay's upper
//! layer is what [`export`] sends back: the guest's changes, deletions as
//! OCI whiteouts.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use capsem_proto::blocking::QueueWriter;
use capsem_proto::limits::MAX_WORKSPACE_STREAMS;
use capsem_proto::mux::Opener;
use capsem_proto::workspace::{
    BUNDLE_ENTRY, CHANGES_FILES, FsAttr, FsKind, FsReply, FsRequest, MAX_READ_BYTES, OPAQUE_MARKER,
    Upper, WHITEOUT_PREFIX, WorkspaceMount,
};
use capsem_proto::{GuestCodec, GuestToHost, HostToGuest};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};
use futures::{SinkExt, StreamExt};
use nix::mount::{MsFlags, mount};
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use crate::exec::Channel;

/// Where the workspace's layers live (a tmpfs of their own).
const BASE: &str = "/run/capsem-workspace";
/// The sandbox's own disk, when it has one (see `init`).
pub const DISK: &str = "/run/capsem-disk";
/// How long the kernel may trust what the host said of a file.
const TTL: Duration = Duration::from_secs(10);

/// The workspace, once mounted; a second mount is refused.
static MOUNTED: OnceLock<Mounted> = OnceLock::new();

struct Mounted {
    upper: String,
    target: String,
    _session: fuser::BackgroundSession,
}

/// The workspace's directory, once mounted: commands start there.
pub fn workdir() -> Option<&'static str> {
    MOUNTED.get().map(|m| m.target.as_str())
}

/// Environment for commands once a workspace is mounted (the command's
/// own comes after and wins). git compares an index entry's device,
/// inode, owner and change time with the file's; through the mount those
/// are the guest's, not the ones the host's git recorded, so every
/// `git status` would read every file again. Size and modification time
/// are the host's own.
pub fn env() -> &'static [(&'static str, &'static str)] {
    const GIT: &[(&str, &str)] = &[
        ("GIT_CONFIG_COUNT", "2"),
        ("GIT_CONFIG_KEY_0", "core.checkStat"),
        ("GIT_CONFIG_VALUE_0", "minimal"),
        ("GIT_CONFIG_KEY_1", "core.trustctime"),
        ("GIT_CONFIG_VALUE_1", "false"),
    ];
    if MOUNTED.get().is_some() { GIT } else { &[] }
}

/// Mounts the workspace at `/root/NAME` and answers on `channel`.
pub async fn mount_workspace(mut channel: Channel, req: WorkspaceMount, opener: Opener) {
    let reply = match mount_now(&req, opener).await {
        Ok(()) => GuestToHost::Done,
        Err(e) => GuestToHost::Refused(format!("mounting the workspace: {e:#}")),
    };
    let _ = channel.send(reply).await;
}

async fn mount_now(req: &WorkspaceMount, opener: Opener) -> Result<()> {
    capsem_proto::workspace::validate_mount(req)?;
    if MOUNTED.get().is_some() {
        bail!("a workspace is mounted already");
    }
    make_dir(BASE)?;
    mount_fs("tmpfs", BASE, "tmpfs", Some("mode=0700"))?;
    let layers = match req.upper {
        Upper::Memory => BASE.to_owned(),
        Upper::Disk => format!("{DISK}/workspace"),
    };
    let (lower, upper, work) = (
        format!("{BASE}/lower"),
        format!("{layers}/upper"),
        format!("{layers}/work"),
    );
    for dir in [&lower, &upper, &work] {
        fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    }
    let fs = Remote::new(tokio::runtime::Handle::current(), opener);
    let session = tokio::task::spawn_blocking({
        let lower = lower.clone();
        move || mount_fuse(&lower, fs)
    })
    .await??;
    let target = format!("/root/{}", req.name);
    fs::create_dir_all(&target).with_context(|| format!("creating {target}"))?;
    let options = format!(
        "lowerdir={lower},upperdir={upper},workdir={work},redirect_dir=off,index=off,xino=off,metacopy=off"
    );
    mount_fs("overlay", &target, "overlay", Some(&options))?;
    tracing::info!("workspace mounted at {target}");
    let _ = MOUNTED.set(Mounted {
        upper,
        target,
        _session: session,
    });
    Ok(())
}

/// Mounts the FUSE file system at `lower`, read-only, and starts serving
/// it on a thread of its own.
fn mount_fuse(lower: &str, fs: Remote) -> Result<fuser::BackgroundSession> {
    let device: OwnedFd = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("opening /dev/fuse")?
        .into();
    let options = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions",
        device.as_raw_fd()
    );
    mount(
        Some("capsem-workspace"),
        lower,
        Some("fuse.capsem"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .context("mounting the workspace's FUSE file system")?;
    let config = fuser::Config::default();
    let session = fuser::Session::from_fd(fs, device, fuser::SessionACL::All, config)
        .context("starting the FUSE session")?;
    session.spawn().context("serving the FUSE session")
}

fn make_dir(dir: &str) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))
}

fn mount_fs(source: &str, target: &str, fstype: &str, data: Option<&str>) -> Result<()> {
    let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    mount(Some(source), target, Some(fstype), flags, data)
        .with_context(|| format!("mounting {fstype} on {target}"))
}

type Conn = Framed<Compat<capsem_proto::mux::Stream>, GuestCodec>;

/// The FUSE file system: every answer comes from the host.
struct Remote(Arc<Inner>);

struct Inner {
    runtime: tokio::runtime::Handle,
    opener: Opener,
    /// Open streams to the host, each free for the next request.
    idle: Mutex<Vec<Conn>>,
    /// At most [`MAX_WORKSPACE_STREAMS`] requests at once.
    slots: Semaphore,
    inodes: Mutex<Inodes>,
    /// Open directories, by handle.
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    /// The latest listing of each directory, by path: lookups and
    /// attributes are answered from it while it is fresh.
    listings: Mutex<HashMap<Vec<u8>, Arc<Listing>>>,
    next_handle: AtomicU64,
}

/// Paths by inode number and back. Inode numbers are never reused while
/// the VM lives, so the kernel never confuses two files.
#[derive(Default)]
struct Inodes {
    paths: HashMap<u64, Vec<u8>>,
    numbers: HashMap<Vec<u8>, u64>,
}

impl Inodes {
    fn path(&self, ino: INodeNo) -> Option<Vec<u8>> {
        if ino == INodeNo::ROOT {
            return Some(Vec::new());
        }
        self.paths.get(&u64::from(ino)).cloned()
    }

    fn number(&mut self, path: &[u8]) -> u64 {
        if path.is_empty() {
            return u64::from(INodeNo::ROOT);
        }
        if let Some(&n) = self.numbers.get(path) {
            return n;
        }
        let n = self.paths.len() as u64 + 2;
        self.paths.insert(n, path.to_vec());
        self.numbers.insert(path.to_vec(), n);
        n
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Remote {
    fn new(runtime: tokio::runtime::Handle, opener: Opener) -> Remote {
        Remote(Arc::new(Inner {
            runtime,
            opener,
            idle: Mutex::default(),
            slots: Semaphore::new(MAX_WORKSPACE_STREAMS),
            inodes: Mutex::default(),
            dirs: Mutex::default(),
            listings: Mutex::default(),
            next_handle: AtomicU64::new(1),
        }))
    }

    /// Runs `work` on the agent's runtime; the FUSE thread goes on to the
    /// next request meanwhile.
    fn spawn<F>(&self, work: impl FnOnce(Arc<Inner>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let task = work(self.0.clone());
        self.0.runtime.spawn(task);
    }

    fn path(&self, ino: INodeNo) -> Result<Vec<u8>, Errno> {
        lock(&self.0.inodes).path(ino).ok_or(Errno::ENOENT)
    }
}

impl Inner {
    /// Sends `req` to the host and collects its replies (all the entries
    /// of a listing; one reply otherwise).
    async fn call(&self, req: FsRequest) -> Result<Vec<FsReply>, Errno> {
        let _slot = self.slots.acquire().await.map_err(|_| Errno::EIO)?;
        let idle = lock(&self.idle).pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => {
                let stream = self.opener.clone().open().await.map_err(|_| Errno::EIO)?;
                Framed::new(stream.compat(), GuestCodec::new())
            }
        };
        let listing = matches!(req, FsRequest::List { .. });
        conn.send(GuestToHost::Fs(req))
            .await
            .map_err(|_| Errno::EIO)?;
        let mut replies = Vec::new();
        loop {
            match conn.next().await {
                Some(Ok(HostToGuest::Fs(FsReply::Error(errno)))) => {
                    lock(&self.idle).push(conn);
                    return Err(Errno::from_i32(errno));
                }
                Some(Ok(HostToGuest::Fs(reply))) => {
                    let more = listing && matches!(reply, FsReply::Entries(_));
                    replies.push(reply);
                    if !more {
                        break;
                    }
                }
                _ => return Err(Errno::EIO),
            }
        }
        lock(&self.idle).push(conn);
        Ok(replies)
    }

    /// The attributes of `path`: from its directory's listing (fetched
    /// if none is fresh), which answers a whole `git status` or `find` in
    /// one request per directory; asked of the host alone for the root or
    /// a directory that cannot be listed.
    async fn stat(&self, path: Vec<u8>) -> Result<(u64, FileAttr), Errno> {
        let found = match split(&path) {
            Some((dir, name)) => match self.listing(dir).await {
                Ok(listing) => Some(listing.attr(name).ok_or(Errno::ENOENT)?),
                Err(_) => None,
            },
            None => None,
        };
        let attr = match found {
            Some(attr) => attr,
            None => match self
                .call(FsRequest::Stat { path: path.clone() })
                .await?
                .pop()
            {
                Some(FsReply::Attr(attr)) => attr,
                _ => return Err(Errno::EIO),
            },
        };
        let ino = lock(&self.inodes).number(&path);
        Ok((ino, file_attr(ino, &attr)))
    }

    /// The listing of the directory `dir`, fetched unless a fresh one is
    /// at hand.
    async fn listing(&self, dir: &[u8]) -> Result<Arc<Listing>, Errno> {
        if let Some(listing) = lock(&self.listings).get(dir)
            && listing.at.elapsed() < TTL
        {
            return Ok(listing.clone());
        }
        let replies = self.call(FsRequest::List { path: dir.to_vec() }).await?;
        let entries = replies
            .into_iter()
            .flat_map(|r| match r {
                FsReply::Entries(entries) => entries,
                _ => Vec::new(),
            })
            .map(|e| (e.name, e.attr))
            .collect();
        let listing = Arc::new(Listing {
            at: Instant::now(),
            entries,
        });
        lock(&self.listings).insert(dir.to_vec(), listing.clone());
        Ok(listing)
    }

    async fn data(&self, req: FsRequest) -> Result<Vec<u8>, Errno> {
        match self.call(req).await?.pop() {
            Some(FsReply::Data(data)) => Ok(data),
            _ => Err(Errno::EIO),
        }
    }
}

impl Filesystem for Remote {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let path = match self.path(parent) {
            Ok(dir) => join(&dir, name.as_bytes()),
            Err(e) => return reply.error(e),
        };
        self.spawn(|fs| async move {
            match fs.stat(path).await {
                Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let path = match self.path(ino) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        self.spawn(|fs| async move {
            match fs.stat(path).await {
                Ok((_, attr)) => reply.attr(&TTL, &attr),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let path = match self.path(ino) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        self.spawn(|fs| async move {
            match fs.data(FsRequest::ReadLink { path }).await {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(e),
            }
        });
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The project does not change under the guest's feet often enough
        // to read it again on every open.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let path = match self.path(ino) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        let size = size.min(MAX_READ_BYTES);
        self.spawn(|fs| async move {
            match fs.data(FsRequest::Read { path, offset, size }).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path(ino) {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        self.spawn(|fs| async move {
            match fs.listing(&path).await {
                Ok(listing) => {
                    let handle = fs.next_handle.fetch_add(1, Ordering::Relaxed);
                    lock(&fs.dirs).insert(handle, listing);
                    reply.opened(FileHandle(handle), FopenFlags::empty());
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Ok(dir) = self.path(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let dirs = lock(&self.0.dirs);
        let Some(listing) = dirs.get(&u64::from(fh)) else {
            return reply.error(Errno::EBADF);
        };
        let mut inodes = lock(&self.0.inodes);
        let here = u64::from(ino);
        let dots = [
            (here, FileType::Directory, &b"."[..]),
            (here, FileType::Directory, b".."),
        ];
        let listed = listing.entries.iter().map(|(name, attr)| {
            let ino = inodes.number(&join(&dir, name));
            (ino, file_type(attr.kind), name.as_slice())
        });
        let all: Vec<_> = dots.into_iter().chain(listed).collect();
        for (i, (ino, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: fuser::ReplyEmpty,
    ) {
        lock(&self.0.dirs).remove(&u64::from(fh));
        reply.ok();
    }
}

/// A directory's entries as the host listed them.
struct Listing {
    at: Instant,
    entries: std::collections::BTreeMap<Vec<u8>, FsAttr>,
}

impl Listing {
    fn attr(&self, name: &[u8]) -> Option<FsAttr> {
        self.entries.get(name).copied()
    }
}

/// A path's directory and name; `None` for the root.
fn split(path: &[u8]) -> Option<(&[u8], &[u8])> {
    match path.iter().rposition(|&b| b == b'/') {
        _ if path.is_empty() => None,
        Some(at) => Some((&path[..at], &path[at + 1..])),
        None => Some((&[], path)),
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

fn file_type(kind: FsKind) -> FileType {
    match kind {
        FsKind::File => FileType::RegularFile,
        FsKind::Dir => FileType::Directory,
        FsKind::Symlink => FileType::Symlink,
    }
}

fn file_attr(ino: u64, attr: &FsAttr) -> FileAttr {
    let time = |ns: i64| UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    FileAttr {
        ino: INodeNo(ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: time(attr.mtime_ns),
        mtime: time(attr.mtime_ns),
        ctime: time(attr.ctime_ns),
        crtime: time(attr.mtime_ns),
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Sends the overlay's upper layer on `channel`.
pub async fn export(mut channel: Channel) {
    let Some(upper) = MOUNTED.get().map(|m| m.upper.clone()) else {
        let _ = channel
            .send(GuestToHost::Refused("no workspace is mounted".into()))
            .await;
        return;
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let pack =
        tokio::task::spawn_blocking(move || pack_upper(Path::new(&upper), QueueWriter::new(tx)));
    while let Some(chunk) = rx.recv().await {
        if channel.send(GuestToHost::Data(chunk)).await.is_err() {
            return;
        }
    }
    let reply = match pack.await {
        Ok(Ok(())) => GuestToHost::Done,
        Ok(Err(e)) => GuestToHost::Refused(format!("exporting the workspace: {e}")),
        Err(e) => GuestToHost::Refused(e.to_string()),
    };
    let _ = channel.send(reply).await;
}

/// Archives `upper` under [`CHANGES_FILES`], whiteouts (character devices
/// 0:0) as `.wh.NAME` files and opaque directories with a
/// [`OPAQUE_MARKER`] inside.
fn pack_upper(upper: &Path, out: QueueWriter) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.append_dir(CHANGES_FILES, upper)?;
    pack_dir(&mut builder, upper, Path::new(CHANGES_FILES))?;
    let bundle = Path::new(BASE).join(BUNDLE_ENTRY);
    if bundle.is_file() {
        builder.append_path_with_name(&bundle, BUNDLE_ENTRY)?;
    }
    builder.into_inner()?.flush()
}

fn pack_dir(builder: &mut tar::Builder<QueueWriter>, dir: &Path, name: &Path) -> io::Result<()> {
    if is_opaque(dir) {
        empty_file(builder, &name.join(OPAQUE_MARKER))?;
    }
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let (path, meta) = (entry.path(), entry.metadata()?);
        let inner = name.join(entry.file_name());
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            let mut whiteout = std::ffi::OsString::from(WHITEOUT_PREFIX);
            whiteout.push(entry.file_name());
            empty_file(builder, &name.join(whiteout))?;
        } else if meta.is_dir() {
            builder.append_dir(&inner, &path)?;
            pack_dir(builder, &path, &inner)?;
        } else {
            builder.append_path_with_name(&path, &inner)?;
        }
    }
    Ok(())
}

fn empty_file(builder: &mut tar::Builder<QueueWriter>, name: &Path) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(0);
    header.set_mode(0o600);
    builder.append_data(&mut header, name, io::empty())
}

fn is_opaque(dir: &Path) -> bool {
    let mut value = [0u8; 4];
    rustix::fs::lgetxattr(dir, "trusted.overlay.opaque", &mut value)
        .is_ok_and(|n| &value[..n] == b"y")
}
