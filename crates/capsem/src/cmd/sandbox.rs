//! Named sandboxes: `create`, `exec`, `shell NAME`, `ls`, `start`, `stop`,
//! `rm`, `service`, and the hidden `supervise` the service runs. All but
//! `supervise` and `service run` are clients of the service's API, which
//! they start when it is not running.

use std::path::Path;
use std::time::{Duration, Instant};

use capsem_core::channel::Control;
use capsem_core::{ai, paths};
use capsem_proto::TtySize;
use capsem_service::api::{
    ClientMsg, CreateRequest, ExecStart, STDERR, STDOUT, SandboxInfo, ServerMsg, ServiceInfo, State,
};
use capsem_service::client::Socket;
use capsem_service::{Client, ClientError, SandboxDir, layout, service, supervisor};
use futures::{SinkExt, StreamExt};
use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{CreateArgs, ExecArgs, ServiceAction};
use crate::cmd::run::{self, DEFAULT_SIZE};
use crate::exit::{Failure, TIMED_OUT};
use crate::out::outln;
use crate::terminal::{self, RawMode};

/// How long a service the CLI started may take to answer.
const SERVICE_WAIT: Duration = Duration::from_secs(10);

pub fn api(e: ClientError) -> Failure {
    Failure::new(e)
}

/// A client of the running service, started first when it is not.
pub async fn service() -> Result<Client, Failure> {
    let home = paths::capsem_home();
    let client = Client::new(layout::service_socket(&home));
    match client.get::<ServiceInfo>("/v1/service").await {
        Ok(_) => return Ok(client),
        // Nothing answers: start it. Anything else (a refusal) is the answer.
        Err(ClientError::Connect { .. }) => {}
        Err(e) => return Err(api(e)),
    }
    let log_path = layout::run_dir(&home).join("service.log");
    let mut child = spawn_service(&home, &log_path)?;
    let deadline = Instant::now() + SERVICE_WAIT;
    loop {
        match client.get::<ServiceInfo>("/v1/service").await {
            Ok(_) => return Ok(client),
            // Another service won the race to start: wait for it.
            Err(_) if Instant::now() < deadline => {}
            Err(e) => {
                return Err(
                    Failure::new(format!("the capsem service did not start: {e}"))
                        .hint(format!("its log: {}", log_path.display())),
                );
            }
        }
        if let Ok(Some(status)) = child.try_wait()
            && !status.success()
            && !log_says_running(&log_path)
        {
            let tail = capsem_core::session::log_tail(&log_path, 5);
            return Err(
                Failure::new(format!("the capsem service did not start: {tail}"))
                    .hint(format!("its log: {}", log_path.display())),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_says_running(log: &Path) -> bool {
    capsem_core::session::log_tail(log, 1).contains("running already")
}

/// `capsem service run` in the background: its own process group, output
/// appended to `run/service.log`.
fn spawn_service(home: &Path, log_path: &Path) -> Result<std::process::Child, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    let failed = |e: std::io::Error| Failure::new(format!("starting the capsem service: {e}"));
    layout::private_dir(&layout::run_dir(home)).map_err(failed)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log_path)
        .map_err(failed)?;
    let exe = std::env::current_exe().map_err(failed)?;
    std::process::Command::new(exe)
        .args(["service", "run"])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(failed)?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(failed)
}

/// `capsem create`.
pub async fn create(args: CreateArgs) -> Result<i32, Failure> {
    let request = CreateRequest {
        name: args.name,
        cpus: args.cpus,
        memory_mib: args.memory,
        env: run::user_env(&[], args.env)?,
        workspace: match &args.workspace {
            Some(dir) => Some(
                std::path::absolute(dir)
                    .map_err(|e| Failure::new(format!("{}: {e}", dir.display())))?,
            ),
            None => None,
        },
    };
    let client = service().await?;
    let info: SandboxInfo = client
        .call(Method::POST, "/v1/sandboxes", Some(&request))
        .await
        .map_err(api)?;
    outln!("{}", info.name);
    Ok(0)
}

/// `capsem ls`.
pub async fn list(json: bool) -> Result<i32, Failure> {
    let all: Vec<SandboxInfo> = service().await?.get("/v1/sandboxes").await.map_err(api)?;
    if json {
        for sandbox in &all {
            outln!(
                "{}",
                serde_json::json!({ "type": "sandbox", "data": sandbox })
            );
        }
        return Ok(0);
    }
    outln!(
        "{:<24} {:<9} {:<19} {:>8} {:>4} {:>6} {:>8} {:>9}",
        "NAME",
        "STATE",
        "CREATED",
        "UPTIME",
        "CPUS",
        "MIB",
        "HOST RSS",
        "IDLE"
    );
    let now = capsem_core::session::store::now_ms();
    for s in all {
        let state = match s.state {
            State::Starting => "starting",
            State::Running => "running",
            State::Stopped => "stopped",
            State::Suspended => "suspended",
        };
        let since = |ms: Option<i64>| ms.map_or("-".to_owned(), |ms| ago(now - ms));
        outln!(
            "{:<24} {:<9} {:<19} {:>8} {:>4} {:>6} {:>8} {:>9}",
            s.name,
            state,
            crate::cmd::sessions::local_time(s.created_ms),
            since(s.started_ms),
            s.cpus,
            s.memory_mib,
            s.host_rss_kib
                .map_or("-".to_owned(), |k| format!("{} MiB", k / 1024)),
            since(s.last_activity_ms),
        );
    }
    Ok(0)
}

fn ago(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// `capsem logs`.
pub async fn logs(name: &str, follow: bool) -> Result<i32, Failure> {
    let path = format!("/v1/sandboxes/{}/logs?follow={follow}", encode(name));
    let response = service()
        .await?
        .stream(
            Method::GET,
            &path,
            None,
            http_body_util::Empty::<bytes::Bytes>::new(),
        )
        .await
        .map_err(api)?;
    let mut body = http_body_util::BodyExt::into_data_stream(response.into_body());
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Failure::new(format!("reading the log: {e}")))?;
        crate::out::bytes(&chunk);
    }
    Ok(0)
}

/// `capsem start`, `stop`: the sandbox's name when done.
pub async fn lifecycle(name: &str, action: &str) -> Result<i32, Failure> {
    let path = format!("/v1/sandboxes/{}/{action}", encode(name));
    let info: SandboxInfo = service()
        .await?
        .call(Method::POST, &path, None::<&()>)
        .await
        .map_err(api)?;
    outln!("{}", info.name);
    Ok(0)
}

/// `capsem rm`.
pub async fn remove(name: &str, force: bool) -> Result<i32, Failure> {
    let path = format!("/v1/sandboxes/{}?force={force}", encode(name));
    service()
        .await?
        .call::<()>(Method::DELETE, &path, None::<&()>)
        .await
        .map_err(api)?;
    Ok(0)
}

/// A name or path in a URL: percent-encoded but for unreserved bytes, so
/// nothing in it is taken for URL syntax.
pub fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `capsem exec`, and `capsem shell NAME`.
pub async fn exec(args: ExecArgs) -> Result<i32, Failure> {
    let settings = run::load_settings()?;
    let tty = args.tty.then(|| terminal::size().unwrap_or(DEFAULT_SIZE));
    let mut env = if tty.is_some() {
        run::terminal_env(&settings)
    } else {
        Vec::new()
    };
    env.extend(run::user_env(&args.options.pass_env, args.options.env)?);
    let limit = settings.vm().timeout_secs;
    let timeout = match args.options.timeout {
        Some(limit) => Some(limit).filter(|l| !l.is_zero()),
        None => (limit > 0).then(|| Duration::from_secs(limit.into())),
    };
    let start = ExecStart {
        command: run::command_of(args.command),
        env,
        tty,
        timeout_ms: timeout.map(|t| t.as_millis() as u64),
    };
    let controls = run::forward_controls(tty.is_some())?;
    let client = service().await?;
    let path = format!("/v1/sandboxes/{}/exec", encode(&args.name));
    let mut socket = client.websocket(&path).await.map_err(api)?;
    let text = serde_json::to_string(&start).map_err(Failure::new)?;
    socket
        .send(Message::Text(text.into()))
        .await
        .map_err(|e| Failure::new(format!("sending the command: {e}")))?;
    let raw = match tty {
        Some(_) if terminal::stdin_is_terminal() => Some(
            RawMode::enter()
                .map_err(|e| Failure::new(format!("setting the terminal to raw mode: {e}")))?,
        ),
        _ => None,
    };
    let ended = stream(socket, controls).await;
    drop(raw);
    match ended? {
        ServerMsg::Exited { code, signal } => {
            Ok(code.map_or_else(|| 128 + i32::from(signal.unwrap_or(0)), i32::from))
        }
        ServerMsg::TimedOut => {
            let secs = timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
            eprintln!(
                "capsem: the command ran longer than {secs} s and was killed; the sandbox runs on"
            );
            Ok(TIMED_OUT)
        }
        ServerMsg::Error { message } => Err(Failure::new(message)),
        // Terminals send it; an exec never does.
        ServerMsg::Attached { .. } => Err(Failure::new(
            "the service answered the command with a terminal's message",
        )),
    }
}

/// Carries stdin, signals and resizes to the sandbox and its output back,
/// until the final message.
async fn stream(
    socket: Socket,
    mut controls: tokio::sync::mpsc::Receiver<Control>,
) -> Result<ServerMsg, Failure> {
    let (mut sink, mut source) = socket.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(8);
    tokio::spawn(feed_stdin(tx.clone()));
    let sender = async move {
        loop {
            let msg = tokio::select! {
                Some(msg) = rx.recv() => msg,
                Some(control) = controls.recv() => control_msg(control),
                else => break,
            };
            if sink.send(msg).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    let receiver = async {
        let (mut stdout, mut stderr) = (tokio::io::stdout(), tokio::io::stderr());
        let mut stdout_open = true;
        while let Some(msg) = source.next().await {
            let msg = msg.map_err(|e| Failure::new(format!("the sandbox's stream failed: {e}")))?;
            match msg {
                // Output after a closed stdout is dropped.
                Message::Binary(data) if data.first() == Some(&STDOUT) && stdout_open => {
                    stdout_open = write_all(&mut stdout, &data[1..]).await.is_ok();
                    if !stdout_open {
                        let _ = tx.send(text(&ClientMsg::StdoutClosed)).await;
                    }
                }
                Message::Binary(data) if data.first() == Some(&STDERR) => {
                    let _ = write_all(&mut stderr, &data[1..]).await;
                }
                Message::Text(text) => {
                    return serde_json::from_str::<ServerMsg>(&text)
                        .map_err(|e| Failure::new(format!("a bad message from the sandbox: {e}")));
                }
                _ => {}
            }
        }
        Err(Failure::new(
            "the sandbox ended the command's stream without its exit status",
        ))
    };
    tokio::select! {
        ended = receiver => ended,
        () = sender => unreachable!("the sender never completes"),
    }
}

async fn write_all(
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
    data: &[u8],
) -> std::io::Result<()> {
    out.write_all(data).await?;
    out.flush().await
}

fn text(msg: &ClientMsg) -> Message {
    Message::Text(serde_json::to_string(msg).unwrap_or_default().into())
}

fn control_msg(control: Control) -> Message {
    text(&match control {
        Control::Signal(signal) => ClientMsg::Signal { signal },
        Control::Resize(TtySize { rows, cols }) => ClientMsg::Resize { rows, cols },
    })
}

async fn feed_stdin(tx: tokio::sync::mpsc::Sender<Message>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send(Message::Binary(buf[..n].to_vec().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
    let _ = tx.send(text(&ClientMsg::StdinEof)).await;
}

/// `capsem service [status|start|stop|run]`.
pub async fn service_cmd(action: Option<ServiceAction>) -> Result<i32, Failure> {
    let home = paths::capsem_home();
    let client = Client::new(layout::service_socket(&home));
    match action.unwrap_or(ServiceAction::Status { json: false }) {
        ServiceAction::Status { json } => match client.get::<ServiceInfo>("/v1/service").await {
            Ok(info) if json => {
                outln!("{}", serde_json::json!({ "type": "service", "data": info }));
                Ok(0)
            }
            Ok(info) => {
                outln!(
                    "running: pid {}, {} sandboxes ({} running), socket {}",
                    info.pid,
                    info.sandboxes,
                    info.running,
                    client.socket().display()
                );
                Ok(0)
            }
            Err(_) => {
                outln!("not running (capsem starts it when a command needs it)");
                Ok(3)
            }
        },
        ServiceAction::Start => service().await.map(|_| 0),
        ServiceAction::Stop => {
            match client
                .call::<()>(Method::POST, "/v1/service/stop", None::<&()>)
                .await
            {
                Ok(()) | Err(ClientError::Connect { .. }) => Ok(0),
                Err(e) => Err(api(e)),
            }
        }
        ServiceAction::Run => {
            let exe = std::env::current_exe()
                .map_err(|e| Failure::new(format!("finding capsem's own binary: {e}")))?;
            ignore_hangups();
            service::run(service::Config { home, exe })
                .await
                .map_err(Failure::new)?;
            Ok(0)
        }
    }
}

/// A terminal closing must not end the service or a supervisor.
fn ignore_hangups() {
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(async move { while hup.recv().await.is_some() {} });
    }
}

/// `capsem supervise NAME`: boots the sandbox and serves it until it stops.
pub async fn supervise(name: &str, started: Instant) -> Result<i32, Failure> {
    capsem_service::name::check(name).map_err(Failure::new)?;
    let home = paths::capsem_home();
    let dir = SandboxDir::of(&home, name);
    let meta = dir
        .meta()
        .map_err(|e| Failure::new(format!("reading {}: {e}", dir.meta_path().display())))?;
    let settings = run::load_settings()?;
    let mut vm = settings.vm();
    vm.cpus = meta.cpus;
    vm.memory_mib = meta.memory_mib;
    let sandbox = run::sandbox_for(&settings, vm, started)?;
    let mut env = ai::guest_env(&settings);
    env.extend(
        settings
            .guest_env()
            .map(|(k, v, _)| (k.to_owned(), v.to_owned())),
    );
    env.extend(meta.env);
    let idle = settings.sandbox().idle_timeout_secs;
    let workspace = match &meta.workspace {
        Some(root) => Some(super::workspace::for_sandbox(root, &dir, &settings)?),
        None => None,
    };
    let mut files = ai::guest_files(&settings);
    if let Some(spec) = &workspace {
        ai::trust_project(&mut files, &format!("/root/{}", spec.workspace.name));
    }
    ignore_hangups();
    supervisor::run(supervisor::Spec {
        dir,
        name: name.to_owned(),
        sandbox,
        env,
        files,
        workspace,
        idle_timeout: (idle > 0).then(|| Duration::from_secs(idle.into())),
    })
    .await
    .map_err(Failure::new)?;
    Ok(0)
}
