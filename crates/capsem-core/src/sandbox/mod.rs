//! One sandboxed run, from verified assets to a destroyed VM.
//!
//! [`Sandbox::open`] verifies the assets, picks the accelerator and opens
//! the session; [`Sandbox::boot`] starts the VM and waits for the agent's
//! hello, giving a [`Live`] VM that runs commands ([`Live::exec`], any
//! number at once) until [`Live::stop`]. A one-shot run
//! ([`Sandbox::run`]) is those steps in a row, and always tears the VM
//! down whatever happened in between; a named sandbox's supervisor holds
//! the [`Live`] VM open. Each phase is timed from the start of the
//! process.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsem_proto::{Command, ExitStatus, GuestFile, TtySize};
use serde::Serialize;
use std::os::unix::net::UnixStream as StdUnixStream;

use tokio::net::UnixStream;

use crate::assets::{self, AssetError, Manifest};
use crate::channel::{self, Channel, ChannelError, Ended, ExecIo, ExecSpec, Recording};
use crate::net::{Ca, CaError, Network, SettingsLoader, UpstreamError};
use crate::session::EventLog;
use crate::session::events::ms;
use crate::session::store::{self, NewSession, Status};
use crate::session::transcript::{TRANSCRIPT_FILE, Transcript};
use crate::session::{Session, SessionError, log_tail};
use crate::settings::{SessionSettings, VmSettings};
use crate::vm::{Accel, Backend, KvmUnavailable, VmConfig, VmError, VmExit};

mod record;
mod template;
mod vm;

pub use template::{KEEP as TEMPLATES_KEPT, Key as TemplateKey};
pub use vm::SuspendError;

use record::{FinalState, RecordSpec, Recorder};
use vm::RunningVm;

/// How long a powered-off guest may take to end its VM before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long the network may take, once the VM is gone, to record the
/// requests that were in flight (and again once the rest is cancelled).
const NETWORK_GRACE: Duration = Duration::from_secs(1);
/// Lines of the boot log shown when a boot fails.
const BOOT_LOG_LINES: usize = 20;

/// A run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An asset is missing or does not match the build.
    #[error(transparent)]
    Assets(#[from] AssetError),
    /// `vm.accel = "kvm"` where KVM is unusable.
    #[error(transparent)]
    Kvm(#[from] KvmUnavailable),
    /// The VM monitor could not start.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The session directories could not be made.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The interception CA cannot be used.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The upstream side of the network cannot be set up.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The VM stopped before its agent was ready.
    #[error("the VM stopped during boot ({exit}); boot log {boot_log}:\n{tail}")]
    BootFailed {
        /// How the monitor ended.
        exit: String,
        /// The full log.
        boot_log: PathBuf,
        /// Its last lines, and QEMU's own complaint if it had one.
        tail: String,
    },
    /// The agent did not say hello in time.
    #[error("the guest agent did not answer within {secs} s; boot log {boot_log}:\n{tail}")]
    BootTimeout {
        /// The limit (`vm.boot_timeout_secs`).
        secs: u32,
        /// The full log.
        boot_log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// The channel failed; the VM was stopped.
    #[error("{source}; the VM was stopped (boot log {boot_log})")]
    Channel {
        /// What went wrong.
        source: ChannelError,
        /// The full log.
        boot_log: PathBuf,
    },
    /// The VM died while the command ran.
    #[error("the VM stopped before the command finished ({exit}); boot log {boot_log}:\n{tail}")]
    VmDied {
        /// How the monitor ended.
        exit: String,
        /// The full log.
        boot_log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// The workspace could not be exported or mounted.
    #[error(transparent)]
    Workspace(#[from] crate::workspace::WorkspaceError),
    /// Host-side I/O around the VM failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl RunError {
    /// One line saying what the user can do about it, if anything useful.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            RunError::Assets(AssetError::Missing { .. }) => {
                Some("build the assets with `cargo xtask build-assets`")
            }
            RunError::Assets(AssetError::Mismatch {
                role: template::ROLE,
                ..
            }) => Some("remove that boot template's directory; the next run builds it again"),
            RunError::Assets(AssetError::Mismatch { .. }) => Some(
                "rebuild the assets with `cargo xtask build-assets` (and capsem with them), or point CAPSEM_ASSETS_DIR at the assets of this build",
            ),
            RunError::Kvm(_) => Some("set vm.accel = \"auto\" or \"tcg\" in ~/.capsem/user.toml"),
            RunError::BootTimeout { .. } => {
                Some("a loaded host boots slowly under TCG: raise vm.boot_timeout_secs")
            }
            _ => None,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// The command.
    pub command: Command,
    /// Extra environment for it.
    pub env: Vec<(String, String)>,
    /// Run it on a terminal of this size (its transcript is kept in the
    /// session).
    pub tty: Option<TtySize>,
    /// Files written into the guest before the command starts.
    pub files: Vec<GuestFile>,
    /// Kill the VM if the command runs longer than this (its process
    /// group is killed first).
    pub timeout: Option<Duration>,
    /// The project the command works on.
    pub workspace: Option<WorkspaceSpec>,
}

/// A workspace to mount in the guest.
#[derive(Debug, Clone)]
pub struct WorkspaceSpec {
    /// The project.
    pub workspace: crate::workspace::Workspace,
    /// `workspace.exclude`.
    pub exclude: Vec<String>,
    /// Where the guest keeps its changes.
    pub upper: capsem_proto::workspace::Upper,
    /// Most bytes of changes the host keeps (`sandbox.max_copy_bytes`).
    pub max_changes_bytes: u64,
    /// The directory its records are kept in (a named sandbox's); `None`
    /// for the session's.
    pub records: Option<PathBuf>,
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// It exited or was killed by a signal inside the guest.
    Exited(ExitStatus),
    /// It ran past its timeout and the VM was destroyed.
    TimedOut,
    /// A signal came (Ctrl-C, SIGTERM) before the command started; the
    /// boot was cancelled and the VM destroyed.
    Interrupted(u8),
}

/// When each phase was reached, since the capsem process started; in
/// JSON, `NAME_ms` in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    /// Assets verified.
    #[serde(
        rename = "assets_verified_ms",
        serialize_with = "ms::from_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub assets_verified: Option<Duration>,
    /// VM monitor process running.
    #[serde(
        rename = "vm_spawned_ms",
        serialize_with = "ms::from_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub vm_spawned: Option<Duration>,
    /// Guest kernel started (from the guest's boot clock).
    #[serde(
        rename = "kernel_started_ms",
        serialize_with = "ms::from_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub kernel_started: Option<Duration>,
    /// Kernel handed over to `/init` (from the guest's boot clock).
    #[serde(
        rename = "init_started_ms",
        serialize_with = "ms::from_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub init_started: Option<Duration>,
    /// Boot template found and verified (or built): the VM resumes it
    /// instead of booting. Absent on a cold boot.
    #[serde(
        rename = "template_ready_ms",
        serialize_with = "ms::from_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub template_ready: Option<Duration>,
    /// Agent ready: the handshake is done.
    #[serde(
        rename = "agent_ready_ms",
        serialize_with = "ms::from_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub agent_ready: Option<Duration>,
    /// Command's exit status received.
    #[serde(
        rename = "command_done_ms",
        serialize_with = "ms::from_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub command_done: Option<Duration>,
    /// VM monitor process gone.
    #[serde(
        rename = "vm_gone_ms",
        serialize_with = "ms::from_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub vm_gone: Option<Duration>,
    /// Time spent recording the session (index and events) on the run's
    /// critical path; a duration, not a point in time.
    #[serde(
        rename = "recording_ms",
        serialize_with = "ms::from_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub recording: Option<Duration>,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The session id.
    pub session: String,
    /// How the command ended.
    pub outcome: Outcome,
    /// Accelerator used.
    pub accel: &'static str,
    /// Phase timings.
    pub phases: Phases,
}

/// Where a run's messages for the user go (one line each, without
/// `capsem: `); shared with the network, which reports from its tasks.
pub type Notice = Arc<dyn Fn(&str) + Send + Sync>;

/// Boots sandboxes with fixed settings and assets.
pub struct Sandbox {
    /// VM settings.
    pub vm: VmSettings,
    /// Session retention, applied at the start of each run.
    pub sessions: SessionSettings,
    /// Hashes the assets must match.
    pub manifest: Manifest,
    /// Where the assets are.
    pub asset_dir: PathBuf,
    /// The VM monitor.
    pub backend: Arc<dyn Backend>,
    /// Capsem's state directory (`~/.capsem`).
    pub home: PathBuf,
    /// The instant phases are measured from.
    pub started: Instant,
    /// The settings in effect at each network decision.
    pub settings: SettingsLoader,
    /// Where boot templates are kept ([`crate::paths::templates`]).
    pub templates: PathBuf,
}

impl Sandbox {
    /// Runs `req` in a fresh VM: [`Sandbox::open`], [`Sandbox::boot`],
    /// [`Live::exec`], [`Live::stop`], and the session's record closed
    /// whatever happened. `notice` receives messages for the user (the TCG
    /// fallback, a recording problem, a switched-off provider the guest
    /// asked for); phases are logged at `info` level.
    pub async fn run(
        &self,
        req: RunRequest,
        mut io: ExecIo,
        notice: Notice,
    ) -> Result<RunReport, RunError> {
        let (mut opened, assets) = self.open(&req.command.to_string(), &notice)?;
        let mut tty = req.tty;
        let transcript = tty.and_then(|_| opened.open_transcript(&*notice));
        let boot = BootSpec {
            assets,
            home_disk: None,
            files: req.files,
            workspace: req.workspace,
        };
        let booted = self
            .boot(
                &mut opened,
                boot,
                notice.clone(),
                signalled(&mut io.controls, &mut tty),
            )
            .await;
        let (result, live) = match booted {
            Ok(Booted::Ready(live)) => {
                let spec = ExecSpec {
                    command: req.command,
                    env: req.env,
                    tty,
                    timeout: req.timeout,
                };
                let outcome = live.exec(spec, io, transcript.as_ref()).await;
                opened.phases.command_done = Some(self.mark("command finished"));
                if let Err(e) = live.save_changes().await {
                    notice(&format!("workspace: {e}"));
                }
                live.stop(matches!(outcome, Ok(Outcome::Exited(_)))).await;
                opened.phases.vm_gone = Some(self.mark("VM gone"));
                (outcome, Some(live))
            }
            Ok(Booted::Interrupted(signal)) => {
                opened.phases.vm_gone = Some(self.mark("VM gone: interrupted during boot"));
                (Ok(Outcome::Interrupted(signal)), None)
            }
            Err(e) => (Err(e), None),
        };
        let cut = transcript.as_ref().map_or(0, Transcript::cut_bytes);
        let (session, accel) = (opened.session.id().to_owned(), opened.accel.name());
        let end = End {
            live,
            result: result.as_ref(),
            transcript_cut_bytes: cut,
        };
        let phases = opened.close(end, &*notice).await;
        result.map(|outcome| RunReport {
            session,
            outcome,
            accel,
            phases,
        })
    }

    /// Verifies the assets, picks the accelerator, loads the CA and opens
    /// a session recorded as running `command`.
    pub fn open(
        &self,
        command: &str,
        notice: &Notice,
    ) -> Result<(Opened, assets::VerifiedAssets), RunError> {
        let mut phases = Phases::default();
        let cache = self.home.join("asset-hashes.json");
        let assets = assets::verify(&self.manifest, &self.asset_dir, Some(&cache))?;
        phases.assets_verified = Some(self.mark("assets verified"));
        let choice = crate::vm::accel::choose(self.vm.accel)?;
        let ca = Arc::new(Ca::load_or_create(&self.home)?);
        if let Some(text) = &choice.notice {
            notice(text);
        }
        let session = Session::create(&self.home)?;
        let (recorder, notices) = Recorder::start(RecordSpec {
            home: self.home.clone(),
            retention: self.sessions.clone(),
            row: NewSession {
                id: session.id().to_owned(),
                started_at_ms: store::now_ms(),
                command: command.to_owned(),
                cpus: self.vm.cpus,
                memory_mib: self.vm.memory_mib,
                assets: [
                    self.manifest.kernel.blake3.clone(),
                    self.manifest.initramfs.blake3.clone(),
                    self.manifest.rootfs.blake3.clone(),
                ],
            },
            events_db: session.events_db(),
        });
        notices.iter().for_each(|n| notice(n));
        let opened = Opened {
            session,
            recorder,
            accel: choice.accel,
            ca,
            phases,
        };
        Ok((opened, assets))
    }

    fn mark(&self, phase: &str) -> Duration {
        let at = self.started.elapsed();
        tracing::info!("{phase} at {:.3} s", at.as_secs_f64());
        at
    }

    /// Boots the VM of `opened` and waits for its agent, unless `cancel`
    /// yields a signal first (the VM is then destroyed). The guest's
    /// network is served from the hello on.
    pub async fn boot(
        &self,
        opened: &mut Opened,
        spec: BootSpec,
        notice: Notice,
        cancel: impl Future<Output = u8>,
    ) -> Result<Booted, RunError> {
        let io_err = |what: &str| {
            let what = what.to_owned();
            move |source| RunError::Io { what, source }
        };
        let (channel_host, channel_vm) =
            StdUnixStream::pair().map_err(io_err("creating the channel socket pair"))?;
        let (console_host, console_vm) =
            StdUnixStream::pair().map_err(io_err("creating the console socket pair"))?;
        let template = if self.vm.snapshot_start {
            let disk_bytes = spec
                .home_disk
                .as_ref()
                .map(|disk| disk.read_only.metadata().map(|m| m.len()))
                .transpose()
                .map_err(io_err("reading the sandbox's disk"))?;
            self.template(opened.accel, &spec.assets, disk_bytes, &notice)
                .await?
        } else {
            None
        };
        if template.is_some() {
            opened.phases.template_ready = Some(self.mark("boot template ready"));
        }
        let greeting = channel::Greeting {
            ca_pem: opened.ca.cert_pem().to_owned(),
            home_disk: spec.home_disk.is_some(),
            start: match template {
                Some(_) => channel::Start::Restored,
                None => channel::Start::Boot,
            },
        };
        let session = &opened.session;
        let boot_log = crate::fsutil::create_private(&session.boot_log())
            .map_err(io_err("creating the boot log"))?;
        let mut config = VmConfig {
            name: format!("capsem-{}", session.id()),
            assets: spec.assets,
            accel: opened.accel,
            cpus: self.vm.cpus,
            memory_mib: self.vm.memory_mib,
            root: self.vm.root,
            home_disk: spec.home_disk,
            channel: channel_vm.into(),
            console: console_vm.into(),
            control: None,
            incoming: template.map(|state| state.file),
            monitor_log: crate::fsutil::create_private(&session.monitor_log())
                .map_err(io_err("creating the QEMU log"))?,
        };
        tracing::info!(
            "starting the VM: {} vCPUs, {} MiB, {}",
            config.cpus,
            config.memory_mib,
            opened.accel.name()
        );
        // A named sandbox can be suspended: it keeps the VM's descriptors
        // and a QMP socket to its monitor.
        let relaunch = if config.home_disk.is_some() {
            let kit = self.relaunch_kit(&mut config);
            Some(kit.map_err(io_err("keeping the VM's descriptors"))?)
        } else {
            None
        };
        let handle = self.backend.launch(config)?;
        let mut vm = RunningVm::new(handle, console_host, boot_log)
            .map_err(io_err("reading the VM console"))?;
        if let Some(relaunch) = relaunch {
            vm = vm.suspendable(relaunch);
        }
        opened.phases.vm_spawned = Some(self.mark("VM monitor started"));

        let socket = to_tokio(channel_host).map_err(io_err("preparing the channel"))?;
        let (channel, inbound) = tokio::select! {
            booted = self.handshake(session, socket, &vm, greeting) => booted?,
            signal = cancel => {
                kill(&vm).await;
                return Ok(Booted::Interrupted(signal));
            }
        };
        let events = opened.recorder.events().clone();
        let export = match spec.workspace.as_ref().map(export).transpose() {
            Ok(export) => export,
            Err(e) => {
                kill(&vm).await;
                return Err(e);
            }
        };
        let network = match Network::new(
            opened.ca.clone(),
            self.settings.clone(),
            events.clone(),
            notice,
        ) {
            Ok(network) => network.start(inbound, export),
            Err(e) => {
                kill(&vm).await;
                return Err(e.into());
            }
        };
        self.mark_ready(&mut opened.phases, &channel);
        let mut live = Live {
            session: session.clone(),
            vm,
            channel,
            network,
            events,
            workspace: None,
            turn: tokio::sync::Mutex::new(()),
        };
        if let Err(err) = live.prepare(spec.files, spec.workspace).await {
            live.stop(false).await;
            live.network.finish(NETWORK_GRACE).await;
            return Err(err);
        }
        Ok(Booted::Ready(Box::new(live)))
    }

    /// Gives `config` a QMP socket, and returns what a resume of its VM
    /// takes.
    fn relaunch_kit(&self, config: &mut VmConfig) -> std::io::Result<vm::Relaunch> {
        let kept = config.try_clone()?;
        let (host, vm) = StdUnixStream::pair()?;
        config.control = Some(vm.into());
        Ok(vm::Relaunch {
            backend: self.backend.clone(),
            config: kept,
            control: Some(vm::Control::Socket(host)),
        })
    }

    /// Records when the agent was ready and, on a cold boot, when the
    /// kernel and `/init` were reached.
    fn mark_ready(&self, phases: &mut Phases, channel: &Channel) {
        let ready = self.mark("guest agent ready");
        phases.agent_ready = Some(ready);
        let Some(hello) = channel.hello() else {
            return;
        };
        let kernel = ready.saturating_sub(Duration::from_nanos(channel.ready().ready_ns));
        phases.kernel_started = Some(kernel);
        phases.init_started = Some(kernel + Duration::from_nanos(hello.init_started_ns));
        tracing::info!(
            "guest kernel reached /init after {:.3} s, agent ready after {:.3} s (guest clock)",
            Duration::from_nanos(hello.init_started_ns).as_secs_f64(),
            Duration::from_nanos(channel.ready().ready_ns).as_secs_f64()
        );
    }

    /// Waits for the agent's hello on the channel.
    async fn handshake(
        &self,
        session: &Session,
        socket: UnixStream,
        vm: &RunningVm,
        greeting: channel::Greeting,
    ) -> Result<(Channel, channel::Inbound), RunError> {
        let secs = self.vm.boot_timeout_secs;
        let limit = Duration::from_secs(secs.into());
        let booted = tokio::select! {
            hello = tokio::time::timeout(limit, Channel::handshake(socket, greeting)) => match hello {
                Ok(Ok(opened)) => return Ok(opened),
                Ok(Err(source)) => Handshake::Failed(source),
                Err(_) => Handshake::TimedOut,
            },
            exit = vm.wait() => Handshake::Exited(exit),
        };
        let err = match booted {
            Handshake::Failed(source) => explain(session, vm, source, Stage::Boot).await,
            Handshake::TimedOut => RunError::BootTimeout {
                secs,
                boot_log: session.boot_log(),
                tail: log_tail(&session.boot_log(), BOOT_LOG_LINES),
            },
            Handshake::Exited(exit) => Stage::Boot.died(session, exit),
        };
        kill(vm).await;
        Err(err)
    }
}

/// What a VM boots with.
pub struct BootSpec {
    /// The verified assets ([`Sandbox::open`] gives them).
    pub assets: assets::VerifiedAssets,
    /// A named sandbox's disk for `/root`.
    pub home_disk: Option<crate::vm::DiskFiles>,
    /// Small files written into the guest once its agent is ready.
    pub files: Vec<GuestFile>,
    /// The project, mounted once the files are written.
    pub workspace: Option<WorkspaceSpec>,
}

/// How a boot ended without an error.
pub enum Booted {
    /// The agent is ready.
    Ready(Box<Live>),
    /// A signal came first; the VM was destroyed.
    Interrupted(u8),
}

/// A session opened for a VM: its record, and what the VM boots with.
pub struct Opened {
    session: Session,
    recorder: Recorder,
    accel: Accel,
    ca: Arc<Ca>,
    /// When each phase was reached.
    pub phases: Phases,
}

impl Opened {
    /// The session's id.
    pub fn id(&self) -> &str {
        self.session.id()
    }

    /// The transcript of a terminal session; a failure to create it is a
    /// notice, not a reason to refuse the session.
    fn open_transcript(&self, notice: &(dyn Fn(&str) + Sync)) -> Option<Transcript> {
        let path = self.session.dir().join(TRANSCRIPT_FILE);
        Transcript::create(&path, self.recorder.budget())
            .inspect_err(|e| notice(&format!("this session has no transcript: {e}")))
            .ok()
    }

    /// Records how the session ended; returns its phases as recorded.
    /// The stopped VM's network records what was in flight first, and the
    /// VM's hold on the event log goes with it: the record can only be
    /// closed once nothing else can write to it.
    pub async fn close(self, end: End<'_>, notice: &(dyn Fn(&str) + Sync)) -> Phases {
        let End {
            live,
            result,
            transcript_cut_bytes,
        } = end;
        if let Some(live) = live {
            live.network.finish(NETWORK_GRACE).await;
        }
        let (status, exit_code) = match result {
            Ok(Outcome::Exited(status)) => (Status::Exited, Some(i32::from(status.shell_code()))),
            Ok(Outcome::TimedOut) => (Status::TimedOut, None),
            Ok(Outcome::Interrupted(signal)) => (Status::Killed, Some(128 + i32::from(*signal))),
            Err(_) => (Status::Failed, None),
        };
        let (notices, phases) = self
            .recorder
            .finish(FinalState {
                status,
                exit_code,
                error: result.err().map(ToString::to_string),
                accel: self.accel.name(),
                phases: self.phases,
                transcript_cut_bytes,
            })
            .await;
        notices.iter().for_each(|n| notice(n));
        phases
    }
}

/// How a session ended, for [`Opened::close`].
pub struct End<'a> {
    /// The VM, stopped, when one booted.
    pub live: Option<Box<Live>>,
    /// The outcome, or what went wrong.
    pub result: Result<&'a Outcome, &'a RunError>,
    /// Terminal bytes the transcript could not keep.
    pub transcript_cut_bytes: u64,
}

/// A VM whose agent is ready: commands run in it, any number at once,
/// until it is stopped or dies.
pub struct Live {
    session: Session,
    vm: RunningVm,
    channel: Channel,
    network: crate::net::Running,
    events: EventLog,
    /// Where the workspace's changes are kept, and how many bytes of them.
    workspace: Option<Mounted>,
    /// One suspend or resume at a time.
    turn: tokio::sync::Mutex<()>,
}

/// The host's side of a workspace: its files, served read-only.
fn export(spec: &WorkspaceSpec) -> Result<Arc<crate::workspace::Export>, RunError> {
    let export = crate::workspace::Export::new(&spec.workspace.root, &spec.exclude)?;
    Ok(Arc::new(export))
}

impl Live {
    /// Writes `files` into the guest and mounts the workspace.
    async fn prepare(
        &mut self,
        files: Vec<GuestFile>,
        workspace: Option<WorkspaceSpec>,
    ) -> Result<(), RunError> {
        if !files.is_empty()
            && let Err(source) = self.channel.write_files(files).await
        {
            return Err(self.explain(source, Stage::Exec).await);
        }
        let Some(spec) = workspace else {
            return Ok(());
        };
        let records = spec.records.as_deref().unwrap_or(self.session.dir());
        let stored = crate::workspace::Stored::new(records);
        let mounted = crate::workspace::changes::Mounted {
            root: spec.workspace.root.clone(),
            name: spec.workspace.name.clone(),
            mounted_at_ns: now_ns(),
            exclude: spec.exclude.clone(),
        };
        if stored.mounted().is_none() {
            stored
                .record_mount(&mounted)
                .map_err(|source| RunError::Io {
                    what: "recording the workspace".into(),
                    source,
                })?;
        }
        let mount = capsem_proto::workspace::WorkspaceMount {
            name: spec.workspace.name,
            upper: spec.upper,
        };
        if let Err(source) = self.channel.mount_workspace(mount).await {
            return Err(self.explain(source, Stage::Exec).await);
        }
        self.workspace = Some(Mounted {
            stored,
            limit: spec.max_changes_bytes,
            name: mounted.name,
        });
        Ok(())
    }

    /// Keeps what the guest changed in its workspace with the session
    /// (replacing what was kept before); nothing without a workspace.
    pub async fn save_changes(&self) -> Result<(), RunError> {
        let Some(ws) = &self.workspace else {
            return Ok(());
        };
        self.bundle_commits(&ws.name).await;
        let chunks = self
            .channel
            .export_workspace()
            .await
            .map_err(|source| RunError::Channel {
                source,
                boot_log: self.session.boot_log(),
            })?;
        ws.stored.save_changes(chunks, ws.limit).await?;
        Ok(())
    }

    /// Has the guest bundle the commits made in the workspace `name`, for
    /// the export to carry; a failure leaves them out, and says so.
    async fn bundle_commits(&self, name: &str) {
        let script = crate::workspace::git::BUNDLE_SCRIPT;
        let argv = ["bash", "-c", script, "capsem-bundle", name];
        if let Err(e) = self.run_quietly(&argv, BUNDLE_TIMEOUT).await {
            tracing::warn!("bundling the workspace's commits: {e}");
        }
    }

    /// Runs `argv` in the guest with no input and its output dropped; an
    /// exit other than 0 is an error.
    async fn run_quietly(&self, argv: &[&str], timeout: Duration) -> Result<(), String> {
        let spec = ExecSpec {
            command: Command::Argv(argv.iter().map(|a| (*a).to_owned()).collect()),
            env: Vec::new(),
            tty: None,
            timeout: Some(timeout),
        };
        let io = ExecIo {
            stdin: None,
            stdout: Box::new(tokio::io::sink()),
            stderr: Box::new(tokio::io::sink()),
            controls: tokio::sync::mpsc::channel(1).1,
        };
        match self.exec(spec, io, None).await {
            Ok(Outcome::Exited(ExitStatus::Code(0))) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }

    /// Runs a command, racing it against the VM's death. A command past
    /// its timeout has its process group killed ([`Outcome::TimedOut`]);
    /// the VM goes on.
    pub async fn exec(
        &self,
        spec: ExecSpec,
        io: ExecIo,
        transcript: Option<&Transcript>,
    ) -> Result<Outcome, RunError> {
        let recording = Recording {
            events: &self.events,
            transcript,
        };
        let ended = tokio::select! {
            result = channel::exec(&self.channel, spec, io, recording) => match result {
                Ok(Ended::Exited(status)) => Ok(Outcome::Exited(status)),
                Ok(Ended::TimedOut) => Ok(Outcome::TimedOut),
                Err(source) => Err(Ok(source)),
            },
            exit = self.vm.wait() => Err(Err(Stage::Exec.died(&self.session, exit))),
        };
        if let Some(transcript) = transcript {
            transcript.finish();
        }
        match ended {
            Ok(outcome) => Ok(outcome),
            Err(Ok(source)) => Err(self.explain(source, Stage::Exec).await),
            Err(Err(died)) => Err(died),
        }
    }

    async fn explain(&self, source: ChannelError, stage: Stage) -> RunError {
        explain(&self.session, &self.vm, source, stage).await
    }

    /// Waits until the VM has ended.
    pub async fn wait(&self) -> VmExit {
        self.vm.wait().await
    }

    /// The VM monitor's process id.
    pub fn vm_pid(&self) -> Option<u32> {
        self.vm.pid()
    }

    /// The channel to the guest agent (copies use it directly).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// How the VM ended, if it has.
    pub fn wait_now(&self) -> Option<VmExit> {
        self.vm.try_exit()
    }

    /// The error for a VM that ended on its own, with the guest's last
    /// words.
    pub fn died(&self, exit: VmExit) -> RunError {
        Stage::Exec.died(&self.session, exit)
    }

    /// Writes the VM's memory and device state to `state` and ends its
    /// monitor; everything on the host's side (commands' streams, network
    /// connections) waits for [`Live::resume`]. A failed suspend leaves the
    /// VM running.
    pub async fn suspend(&self, state: std::fs::File) -> Result<(), SuspendError> {
        // The whole sequence is one turn: a second suspend must neither
        // exec in a VM that is going away nor open the gate of another's.
        let _turn = self.turn.lock().await;
        if self.vm.is_suspended() {
            return Err(SuspendError::Wrong("suspended already"));
        }
        // What the guest wrote reaches its disk first: a sandbox stopped
        // while suspended keeps its disk as it was at the suspend.
        if let Err(e) = self.run_quietly(&["sync"], SYNC_TIMEOUT).await {
            tracing::warn!("syncing the guest's disk before the suspend: {e}");
        }
        self.channel.hold_writes(DRAIN_LIMIT).await?;
        let suspended = self.vm.suspend(state, SUSPEND_LIMIT).await;
        if suspended.is_err() {
            self.channel.release_writes();
        }
        suspended
    }

    /// Resumes the VM from `state` and sets its clock, behind by the pause.
    /// A failed resume leaves it suspended.
    pub async fn resume(&self, state: std::fs::File) -> Result<(), SuspendError> {
        let _turn = self.turn.lock().await;
        self.vm.resume(state, SUSPEND_LIMIT).await?;
        self.channel.release_writes();
        if let Err(e) = self.channel.set_clock().await {
            tracing::warn!("setting the resumed guest's clock: {e}");
        }
        Ok(())
    }

    /// Whether the VM is suspended.
    pub fn is_suspended(&self) -> bool {
        self.vm.is_suspended()
    }

    /// Ends the VM: asks the guest to power off (it syncs its disk) and
    /// waits for that when `graceful`, else kills it. A suspended VM is
    /// discarded: its disk is as the suspend left it.
    pub async fn stop(&self, graceful: bool) {
        if self.vm.is_suspended() {
            kill(&self.vm).await;
        } else if graceful {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.channel.shutdown()).await;
            stop(&self.vm).await;
        } else {
            kill(&self.vm).await;
        }
    }
}

/// Turns a channel failure into the error the user should see: when the
/// guest merely went away because the VM stopped, that is the story, told
/// with the guest's last words.
async fn explain(
    session: &Session,
    vm: &RunningVm,
    source: ChannelError,
    stage: Stage,
) -> RunError {
    if source.is_disconnect()
        && let Ok(exit) = tokio::time::timeout(Duration::from_millis(500), vm.wait()).await
    {
        return stage.died(session, exit);
    }
    RunError::Channel {
        source,
        boot_log: session.boot_log(),
    }
}

/// How a handshake that produced no channel ended.
enum Handshake {
    /// It failed (to be explained by the VM's fate).
    Failed(ChannelError),
    /// The agent did not answer in time.
    TimedOut,
    /// The VM ended first.
    Exited(VmExit),
}

/// A named workspace whose changes the guest keeps.
struct Mounted {
    stored: crate::workspace::Stored,
    /// Most bytes of changes kept.
    limit: u64,
    /// Its name under `/root`.
    name: String,
}

/// Longest a suspend may take to write the VM's state, or a resume to
/// load it.
const SUSPEND_LIMIT: Duration = Duration::from_secs(120);
/// Longest the guest's `sync` may take before a suspend.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the guest may take to read what the host sent it before a
/// suspend.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// How long the guest may take to bundle its commits.
const BUNDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Nanoseconds since the epoch, now.
fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// A standard socket, ready for tokio.
fn to_tokio(socket: StdUnixStream) -> std::io::Result<UnixStream> {
    socket.set_nonblocking(true)?;
    UnixStream::from_std(socket)
}

/// Where in a run the VM stopped.
#[derive(Clone, Copy)]
enum Stage {
    Boot,
    Exec,
}

impl Stage {
    /// The error for a VM that ended at this stage.
    fn died(self, session: &Session, exit: VmExit) -> RunError {
        let (exit, boot_log) = (describe(exit), session.boot_log());
        match self {
            Stage::Boot => RunError::BootFailed {
                exit,
                boot_log,
                tail: boot_failure_tail(session),
            },
            Stage::Exec => RunError::VmDied {
                exit,
                tail: log_tail(&boot_log, BOOT_LOG_LINES),
                boot_log,
            },
        }
    }
}

/// Returns the first signal the user sends while the VM boots; a resize
/// meanwhile becomes the terminal's starting size.
async fn signalled(
    controls: &mut tokio::sync::mpsc::Receiver<channel::Control>,
    tty: &mut Option<TtySize>,
) -> u8 {
    loop {
        match controls.recv().await {
            Some(channel::Control::Signal(signal)) => return signal,
            Some(channel::Control::Resize(size)) => {
                if tty.is_some() {
                    *tty = Some(size);
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// Ends the VM: lets a powering-off guest finish, else kills it.
async fn stop(vm: &RunningVm) {
    if tokio::time::timeout(SHUTDOWN_GRACE, vm.wait())
        .await
        .is_err()
    {
        kill(vm).await;
    }
}

/// Kills the VM and waits until its process is gone.
async fn kill(vm: &RunningVm) {
    vm.kill();
    vm.wait().await;
}

fn describe(exit: VmExit) -> String {
    match exit {
        VmExit::Code(0) => "the guest powered off".into(),
        VmExit::Code(code) => format!("QEMU exited with status {code}"),
        VmExit::Signal(sig) => format!("QEMU was killed by signal {sig}"),
    }
}

/// The boot log's tail, plus QEMU's own messages when it wrote any.
fn boot_failure_tail(session: &Session) -> String {
    let boot = log_tail(&session.boot_log(), BOOT_LOG_LINES);
    let qemu = log_tail(&session.monitor_log(), 5);
    match (boot.is_empty(), qemu.is_empty()) {
        (_, true) => boot,
        (true, false) => format!("QEMU said: {qemu}"),
        (false, false) => format!("{boot}\nQEMU said: {qemu}"),
    }
}
