//! `capsem mcp`: a Model Context Protocol server on stdio, for agents on
//! the host. Each tool is a client of the service's API (started when it
//! is not running), as the CLI's commands are, and fails with the words
//! the CLI would print: a tool error, never an end of the server.

mod stdio;
mod tools;

use rmcp::ServiceExt;

use crate::exit::Failure;

/// Serves MCP on stdin and stdout until the client closes stdin.
pub async fn serve() -> Result<i32, Failure> {
    let transport = stdio::Stdio::new().map_err(|e| Failure::new(format!("opening stdio: {e}")))?;
    let server = tools::Capsem::new()
        .serve(transport)
        .await
        .map_err(|e| Failure::new(format!("starting the MCP session: {e}")))?;
    server
        .waiting()
        .await
        .map_err(|e| Failure::new(format!("the MCP session failed: {e}")))?;
    Ok(0)
}
