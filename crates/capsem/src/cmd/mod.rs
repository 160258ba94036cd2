//! One module per subcommand.

pub mod assets;
pub mod copy;
pub mod doctor;
pub mod e2b;
pub mod guest;
pub mod help;
pub mod mcp;
pub mod net;
pub mod run;
pub mod sandbox;
pub mod sessions;
pub mod settings;
pub mod shell;
pub mod ui;
pub mod version;
pub mod workspace;
