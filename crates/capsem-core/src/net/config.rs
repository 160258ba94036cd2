//! The network's settings, typed once for each change of the settings
//! files ([`crate::settings::Live`]) rather than looked up by key at every
//! request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::address::Ranges;
use super::keys::{self, Secret};
use super::policy::Policy;
use super::scrub::Scrubber;
use super::upstream::parse_overrides;
use crate::settings::Settings;

/// Everything the network reads from the settings.
pub struct NetSettings {
    /// Which names may be reached.
    pub policy: Policy,
    /// The API keys set, with where they may go.
    pub secrets: Vec<Secret>,
    /// Takes the keys out of what comes back; `None` when no key is set.
    pub scrubber: Option<Arc<Scrubber>>,
    /// Bytes of each body to log (`network.log_bodies`); 0 for none.
    pub body_limit: usize,
    /// Non-public upstream ranges the user allows.
    pub upstream_ranges: Ranges,
    /// `network.resolve_override`: fixed addresses for names, which opt
    /// those names out of the upstream address check.
    pub overrides: HashMap<String, SocketAddr>,
    /// `network.extra_upstream_ca`: a PEM file of extra upstream roots.
    pub extra_upstream_ca: String,
}

impl NetSettings {
    /// The network settings of `settings`, whose values were checked when
    /// they were loaded.
    pub fn new(settings: &Settings) -> NetSettings {
        let secrets = keys::from_settings(settings);
        NetSettings {
            policy: Policy::new(settings),
            scrubber: Scrubber::new(&secrets),
            secrets,
            body_limit: if settings.flag("network.log_bodies") {
                settings.size("network.max_body_bytes")
            } else {
                0
            },
            upstream_ranges: Ranges::parse(settings.text("network.allow_upstream_ranges"))
                .unwrap_or_default(),
            overrides: parse_overrides(settings.text("network.resolve_override"))
                .unwrap_or_default(),
            extra_upstream_ca: settings.text("network.extra_upstream_ca").to_owned(),
        }
    }

    /// The keys requests to `name` may carry.
    pub fn secrets_for(&self, name: &str) -> Vec<&Secret> {
        self.secrets.iter().filter(|s| s.goes_to(name)).collect()
    }

    /// Whether `name` is an API host of a key that is set: its answers
    /// could reflect the key, so they must be readable to be scrubbed.
    pub fn keyed_host(&self, name: &str) -> bool {
        self.secrets.iter().any(|s| s.served_by(name))
    }
}
