//! Exit codes and what the user reads when capsem itself fails.

use std::fmt::Display;

/// capsem failed (not the guest command).
pub const FAILURE: i32 = 125;
/// `--timeout` expired.
pub const TIMED_OUT: i32 = 124;

/// A failure of capsem's own: one line saying what went wrong and, when
/// there is something to do about it, one line saying what.
#[derive(Debug)]
pub struct Failure {
    message: String,
    hint: Option<String>,
}

impl Failure {
    /// A failure with the full cause chain of `err` on one line.
    pub fn new(err: impl Display) -> Self {
        Failure {
            message: err.to_string(),
            hint: None,
        }
    }

    /// Adds what the user can do.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Prints the failure on stderr and returns [`FAILURE`].
    pub fn report(&self) -> i32 {
        eprintln!("capsem: {}", self.message);
        if let Some(hint) = &self.hint {
            eprintln!("capsem: hint: {hint}");
        }
        FAILURE
    }
}

impl std::fmt::Display for Failure {
    /// The lines [`Failure::report`] prints, without the prefix.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl From<capsem_core::RunError> for Failure {
    fn from(err: capsem_core::RunError) -> Self {
        let hint = err.hint();
        let failure = Failure::new(err);
        match hint {
            Some(hint) => failure.hint(hint),
            None => failure,
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Failure::new(format!("{err:#}"))
    }
}
