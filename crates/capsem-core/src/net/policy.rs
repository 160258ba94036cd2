//! Which names guest programs may reach, from the settings.
//!
//! A name is denied if any deny pattern matches it; otherwise allowed if an
//! allow pattern matches (`network.allow`, or the domains of a provider or
//! registry whose switch is on); otherwise `network.default_action`
//! applies. The settings are read again for each decision, so a change
//! applies to the next connection; corporate values win as everywhere.

use crate::settings::Settings;

/// Providers and registries with an on/off switch and a domain list
/// (`PREFIX.allow`, `PREFIX.domains`).
pub const SWITCHED: &[&str] = &[
    "ai.anthropic",
    "ai.openai",
    "ai.google",
    "registry.npm",
    "registry.pypi",
    "registry.github",
    "registry.crates",
    "registry.debian",
];

/// A pattern that is not a name, `*.name` or `*`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a domain name, *.domain or *")]
pub struct BadPattern(String);

/// Splits a comma-separated list of patterns, checking each.
pub fn parse_patterns(list: &str) -> Result<Vec<String>, BadPattern> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pattern| {
            let name = pattern.strip_prefix("*.").unwrap_or(pattern);
            if pattern == "*" || capsem_proto::validate_name(name).is_ok() {
                Ok(normalize(pattern))
            } else {
                Err(BadPattern(pattern.to_owned()))
            }
        })
        .collect()
}

/// Lower case, without a final dot: how names are compared and logged.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `pattern` covers `name` (both normalized).
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        _ if pattern == "*" => true,
        Some(parent) => name
            .strip_suffix(parent)
            .is_some_and(|head| head.ends_with('.') && head.len() > 1),
        None => pattern == name,
    }
}

/// A decision and the rule that made it, as `setting: pattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the name may be reached.
    pub allowed: bool,
    /// What decided, for the log.
    pub rule: String,
}

impl Decision {
    /// A refusal that no setting made (a raw address, a port).
    pub fn deny(rule: impl Into<String>) -> Self {
        Decision {
            allowed: false,
            rule: rule.into(),
        }
    }
}

/// The rules in effect.
#[derive(Debug, Clone)]
pub struct Policy {
    allow: Vec<(String, String)>,
    deny: Vec<(String, String)>,
    /// The domains of providers and registries switched off, by the
    /// switch that names the refusal (`ai.anthropic.allow = false`).
    off: Vec<(String, String)>,
    default_allow: bool,
}

impl Policy {
    /// The policy of `settings`.
    pub fn new(settings: &Settings) -> Policy {
        // Values were checked when the settings were loaded.
        let patterns = |key: &str| -> Vec<(String, String)> {
            parse_patterns(settings.text(key))
                .unwrap_or_default()
                .into_iter()
                .map(|p| (key.to_owned(), p))
                .collect()
        };
        let mut allow = patterns("network.allow");
        let mut off = Vec::new();
        for prefix in SWITCHED {
            let domains = patterns(&format!("{prefix}.domains"));
            if settings.flag(&format!("{prefix}.allow")) {
                allow.extend(domains);
            } else {
                let rule = format!("{prefix}.allow = false");
                off.extend(domains.into_iter().map(|(_, p)| (rule.clone(), p)));
            }
        }
        Policy {
            allow,
            deny: patterns("network.deny"),
            off,
            default_allow: settings.text("network.default_action") == "allow",
        }
    }

    /// Decides for `name`.
    pub fn decide(&self, name: &str) -> Decision {
        let name = normalize(name);
        let hit = |rules: &[(String, String)]| {
            rules
                .iter()
                .find(|(_, pattern)| matches(pattern, &name))
                .map(|(key, pattern)| format!("{key}: {pattern}"))
        };
        if let Some(rule) = hit(&self.deny) {
            return Decision::deny(rule);
        }
        if let Some(rule) = hit(&self.allow) {
            return Decision {
                allowed: true,
                rule,
            };
        }
        // A switched-off AI provider is refused by its switch even when
        // the default allows (its switch is on unless the user turned it
        // off); a registry off by default only names the refusal.
        let switched_off = self.off.iter().find(|(_, pattern)| matches(pattern, &name));
        if let Some((rule, _)) = switched_off
            && (rule.starts_with("ai.") || !self.default_allow)
        {
            return Decision::deny(rule.clone());
        }
        Decision {
            allowed: self.default_allow,
            rule: "network.default_action".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(user: &str) -> Policy {
        Policy::new(&crate::settings::from_user_text(user))
    }

    #[test]
    fn wildcards_cover_subdomains_only() {
        assert!(matches("*.example.com", "a.example.com"));
        assert!(matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "badexample.com"));
        assert!(matches("example.com", "example.com"));
        assert!(!matches("example.com", "a.example.com"));
        assert!(matches("*", "anything.at.all"));
    }

    #[test]
    fn defaults_allow_the_ai_providers_and_nothing_else() {
        let p = policy("");
        assert!(p.decide("api.anthropic.com").allowed);
        assert!(p.decide("API.OpenAI.com.").allowed);
        assert!(p.decide("generativelanguage.googleapis.com").allowed);
        let other = p.decide("example.com");
        assert_eq!(other, Decision::deny("network.default_action"));
        assert!(!p.decide("registry.npmjs.org").allowed);
    }

    #[test]
    fn deny_wins_over_allow_and_switches_apply() {
        let p = policy(
            "[network]\nallow = \"*.example.com\"\ndeny = \"evil.example.com\"\n\
             [ai.anthropic]\nallow = false\n[registry.npm]\nallow = true\n",
        );
        assert_eq!(
            p.decide("evil.example.com"),
            Decision::deny("network.deny: evil.example.com")
        );
        assert!(p.decide("good.example.com").allowed);
        assert_eq!(
            p.decide("api.anthropic.com"),
            Decision::deny("ai.anthropic.allow = false")
        );
        let npm = p.decide("registry.npmjs.org");
        assert_eq!(npm.rule, "registry.npm.domains: registry.npmjs.org");
    }

    #[test]
    fn a_switched_off_provider_is_refused_by_its_switch_even_under_allow_all() {
        let p = policy("[network]\ndefault_action = \"allow\"\n[ai.openai]\nallow = false\n");
        assert_eq!(
            p.decide("api.openai.com"),
            Decision::deny("ai.openai.allow = false")
        );
        assert!(p.decide("example.com").allowed);
        let p = policy("[network]\nallow = \"api.openai.com\"\n[ai.openai]\nallow = false\n");
        assert!(p.decide("api.openai.com").allowed, "an explicit allow wins");
        assert_eq!(
            policy("").decide("pypi.org").rule,
            "registry.pypi.allow = false"
        );
        let all = policy("[network]\ndefault_action = \"allow\"\n");
        assert!(
            all.decide("pypi.org").allowed,
            "registries are off by default only"
        );
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(parse_patterns("a.com, *.b.org ,*").is_ok());
        for bad in ["a b.com", "*.", "**.a.com", "http://a.com", "a.*.com"] {
            assert!(parse_patterns(bad).is_err(), "{bad}");
        }
    }
}
