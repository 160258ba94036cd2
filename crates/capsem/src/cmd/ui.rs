//! `capsem ui`: asks the service to serve the web UI and opens it.

use capsem_service::api::{UiInfo, UiRequest};
use hyper::Method;

use crate::cmd::sandbox::{api, service};
use crate::exit::Failure;
use crate::out::outln;

/// Prints the UI's address and opens a browser signed in to it.
pub async fn open(port: Option<u16>, no_open: bool) -> Result<i32, Failure> {
    let info: UiInfo = service()
        .await?
        .call(Method::POST, "/v1/ui", Some(&UiRequest { port }))
        .await
        .map_err(api)?;
    outln!("{}", info.url);
    if no_open {
        outln!("sign in: {}", info.login_url);
        return Ok(0);
    }
    if let Err(e) = browse(&info.login_url) {
        eprintln!("capsem: could not open a browser ({e}); open this address to sign in:");
        outln!("sign in: {}", info.login_url);
    }
    Ok(0)
}

/// Opens `url` in the desktop's browser (`xdg-open`, which honours
/// `$BROWSER`).
fn browse(url: &str) -> Result<(), String> {
    let status = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("xdg-open: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("xdg-open: {status}"))
    }
}
