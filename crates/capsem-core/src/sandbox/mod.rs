//! One sandboxed run, from verified assets to a destroyed VM.
//!
//! [`Sandbox::run`] verifies the assets, picks the accelerator, creates the
//! session, boots the VM, waits for the agent's hello, runs the command,
//! and always tears the VM down, whatever happened in between. Each phase is
//! timed from the start of the capsem process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capsem_proto::{Command, ExitStatus, GuestFile, TtySize};
use serde::Serialize;
use std::os::unix::net::UnixStream as StdUnixStream;

use tokio::net::UnixStream;

use crate::assets::{self, AssetError, Manifest};
use crate::channel::{self, Channel, ChannelError, ExecIo, ExecSpec, Recording};
use crate::net::{Ca, CaError, Network, SettingsLoader, UpstreamError};
use crate::session::EventLog;
use crate::session::events::ms;
use crate::session::store::{self, NewSession, Status};
use crate::session::transcript::{TRANSCRIPT_FILE, Transcript};
use crate::session::{Session, SessionError, log_tail};
use crate::settings::{SessionSettings, VmSettings};
use crate::vm::{Accel, Backend, KvmUnavailable, VmConfig, VmError, VmExit};

mod record;
mod vm;

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
    /// Kill the VM if the command runs longer than this.
    pub timeout: Option<Duration>,
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
    /// Agent hello received.
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
}

impl Sandbox {
    /// Runs `req` in a fresh VM. `notice` receives messages for the user
    /// (the TCG fallback, a recording problem, a switched-off provider the
    /// guest asked for); phases are logged at `info`
    /// level. The session is recorded in the index and its event database.
    pub async fn run(
        &self,
        req: RunRequest,
        io: ExecIo,
        notice: Notice,
    ) -> Result<RunReport, RunError> {
        let told = notice.clone();
        let notice: &(dyn Fn(&str) + Sync) = &*told;
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
                command: req.command.to_string(),
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
        let transcript = req
            .tty
            .and_then(|_| open_transcript(&session, recorder.budget(), notice));
        let result = self
            .boot_and_exec(
                &session,
                assets,
                choice.accel,
                Job {
                    notice: told.clone(),
                    transcript: transcript.as_ref(),
                    req,
                    io,
                    events: recorder.events(),
                    ca,
                },
                &mut phases,
            )
            .await;
        let (status, exit_code) = match &result {
            Ok(Outcome::Exited(status)) => (Status::Exited, Some(i32::from(status.shell_code()))),
            Ok(Outcome::TimedOut) => (Status::TimedOut, None),
            Ok(Outcome::Interrupted(signal)) => (Status::Killed, Some(128 + i32::from(*signal))),
            Err(_) => (Status::Failed, None),
        };
        let (notices, phases) = recorder
            .finish(FinalState {
                status,
                exit_code,
                error: result.as_ref().err().map(ToString::to_string),
                accel: choice.accel.name(),
                phases,
                transcript_cut_bytes: transcript.as_ref().map_or(0, Transcript::cut_bytes),
            })
            .await;
        notices.iter().for_each(|n| notice(n));
        result.map(|outcome| RunReport {
            session: session.id().to_owned(),
            outcome,
            accel: choice.accel.name(),
            phases,
        })
    }

    fn mark(&self, phase: &str) -> Duration {
        let at = self.started.elapsed();
        tracing::info!("{phase} at {:.3} s", at.as_secs_f64());
        at
    }

    async fn boot_and_exec(
        &self,
        session: &Session,
        assets: assets::VerifiedAssets,
        accel: Accel,
        mut job: Job<'_>,
        phases: &mut Phases,
    ) -> Result<Outcome, RunError> {
        let io_err = |what: &str| {
            let what = what.to_owned();
            move |source| RunError::Io { what, source }
        };
        let (channel_host, channel_vm) =
            StdUnixStream::pair().map_err(io_err("creating the channel socket pair"))?;
        let (console_host, console_vm) =
            StdUnixStream::pair().map_err(io_err("creating the console socket pair"))?;
        let boot_log = crate::fsutil::create_private(&session.boot_log())
            .map_err(io_err("creating the boot log"))?;
        let config = VmConfig {
            name: format!("capsem-{}", session.id()),
            assets,
            accel,
            cpus: self.vm.cpus,
            memory_mib: self.vm.memory_mib,
            root: self.vm.root,
            channel: channel_vm.into(),
            console: console_vm.into(),
            monitor_log: crate::fsutil::create_private(&session.monitor_log())
                .map_err(io_err("creating the QEMU log"))?,
        };
        tracing::info!(
            "starting the VM: {} vCPUs, {} MiB, {}",
            config.cpus,
            config.memory_mib,
            accel.name()
        );
        let handle = self.backend.launch(config)?;
        let mut vm = RunningVm::new(handle, console_host, boot_log)
            .map_err(io_err("reading the VM console"))?;
        phases.vm_spawned = Some(self.mark("VM monitor started"));

        let socket = to_tokio(channel_host).map_err(io_err("preparing the channel"))?;
        let ca_pem = job.ca.cert_pem().to_owned();
        let booted = tokio::select! {
            booted = self.boot(session, socket, &mut vm, ca_pem) => booted,
            signal = signalled(&mut job.io.controls, &mut job.req.tty) => {
                kill(&mut vm).await;
                phases.vm_gone = Some(self.mark("VM gone: interrupted during boot"));
                return Ok(Outcome::Interrupted(signal));
            }
        };
        let (mut channel, inbound) = booted?;
        let network = Network::new(
            job.ca.clone(),
            self.settings.clone(),
            job.events.clone(),
            job.notice.clone(),
        );
        let network = match network {
            Ok(network) => network.start(inbound),
            Err(e) => {
                kill(&mut vm).await;
                return Err(e.into());
            }
        };
        let ready = self.mark("guest agent ready");
        let hello = channel.hello();
        let kernel = ready.saturating_sub(Duration::from_nanos(hello.ready_ns));
        phases.kernel_started = Some(kernel);
        phases.init_started = Some(kernel + Duration::from_nanos(hello.init_started_ns));
        phases.agent_ready = Some(ready);
        tracing::info!(
            "guest kernel reached /init after {:.3} s, agent ready after {:.3} s (guest clock)",
            Duration::from_nanos(hello.init_started_ns).as_secs_f64(),
            Duration::from_nanos(hello.ready_ns).as_secs_f64()
        );

        let outcome = self.exec(session, &mut channel, &mut vm, job).await;
        phases.command_done = Some(self.mark("command finished"));
        if matches!(outcome, Ok(Outcome::Exited(_))) {
            // The guest powers off at once; it is killed if it does not.
            let _ = tokio::time::timeout(Duration::from_secs(1), channel.shutdown()).await;
            stop(&mut vm).await;
        } else {
            kill(&mut vm).await;
        }
        phases.vm_gone = Some(self.mark("VM gone"));
        network.finish(NETWORK_GRACE).await;
        outcome
    }

    /// Waits for the agent's hello on the channel.
    async fn boot(
        &self,
        session: &Session,
        socket: UnixStream,
        vm: &mut RunningVm,
        ca_pem: String,
    ) -> Result<(Channel, channel::Inbound), RunError> {
        let secs = self.vm.boot_timeout_secs;
        let limit = Duration::from_secs(secs.into());
        let booted = tokio::select! {
            hello = tokio::time::timeout(limit, Channel::handshake(socket, ca_pem)) => match hello {
                Ok(Ok(opened)) => return Ok(opened),
                Ok(Err(source)) => Booted::Failed(source),
                Err(_) => Booted::TimedOut,
            },
            exit = vm.wait() => Booted::Exited(exit),
        };
        let err = match booted {
            Booted::Failed(source) => self.explain(session, vm, source, Stage::Boot).await,
            Booted::TimedOut => RunError::BootTimeout {
                secs,
                boot_log: session.boot_log(),
                tail: log_tail(&session.boot_log(), BOOT_LOG_LINES),
            },
            Booted::Exited(exit) => Stage::Boot.died(session, exit),
        };
        kill(vm).await;
        Err(err)
    }

    /// Turns a channel failure into the error the user should see: when the
    /// guest merely went away because the VM stopped, that is the story,
    /// told with the guest's last words.
    async fn explain(
        &self,
        session: &Session,
        vm: &mut RunningVm,
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

    /// Runs the command, racing it against the VM's death and the timeout.
    async fn exec(
        &self,
        session: &Session,
        channel: &mut Channel,
        vm: &mut RunningVm,
        job: Job<'_>,
    ) -> Result<Outcome, RunError> {
        let Job {
            req,
            io,
            events,
            transcript,
            ..
        } = job;
        let spec = ExecSpec {
            command: req.command,
            env: req.env,
            tty: req.tty,
        };
        let recording = Recording { events, transcript };
        let files = req.files;
        let exec = async {
            if !files.is_empty() {
                channel.write_files(files).await?;
            }
            channel::exec(channel, spec, io, recording).await
        };
        let limit = async {
            match req.timeout {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };
        let ended = tokio::select! {
            result = exec => match result {
                Ok(status) => Ok(Outcome::Exited(status)),
                Err(source) => Err(Ok(source)),
            },
            exit = vm.wait() => Err(Err(Stage::Exec.died(session, exit))),
            () = limit => Ok(Outcome::TimedOut),
        };
        if let Some(transcript) = transcript {
            transcript.finish();
        }
        match ended {
            Ok(outcome) => Ok(outcome),
            Err(Ok(source)) => Err(self.explain(session, vm, source, Stage::Exec).await),
            Err(Err(died)) => Err(died),
        }
    }
}

/// The transcript of a terminal session; a failure to create it is a
/// notice, not a reason to refuse the session.
fn open_transcript(
    session: &Session,
    budget: Arc<crate::session::Budget>,
    notice: &(dyn Fn(&str) + Sync),
) -> Option<Transcript> {
    let path = session.dir().join(TRANSCRIPT_FILE);
    Transcript::create(&path, budget)
        .inspect_err(|e| notice(&format!("this session has no transcript: {e}")))
        .ok()
}

/// How a boot that produced no channel ended.
enum Booted {
    /// The handshake failed (to be explained by the VM's fate).
    Failed(ChannelError),
    /// The agent did not answer in time.
    TimedOut,
    /// The VM ended first.
    Exited(VmExit),
}

/// A standard socket, ready for tokio.
fn to_tokio(socket: StdUnixStream) -> std::io::Result<UnixStream> {
    socket.set_nonblocking(true)?;
    UnixStream::from_std(socket)
}

/// The command of a run, its stdio and where its events go.
struct Job<'a> {
    req: RunRequest,
    io: ExecIo,
    events: &'a EventLog,
    transcript: Option<&'a Transcript>,
    /// Tells the user what they should know at once.
    notice: Notice,
    /// The CA the guest trusts and the proxy signs with.
    ca: Arc<Ca>,
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
async fn stop(vm: &mut RunningVm) {
    if tokio::time::timeout(SHUTDOWN_GRACE, vm.wait())
        .await
        .is_err()
    {
        kill(vm).await;
    }
}

/// Kills the VM and waits until its process is gone.
async fn kill(vm: &mut RunningVm) {
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
