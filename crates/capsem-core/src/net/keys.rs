//! Provider API keys stay on the host. The guest sees placeholders (see
//! [`crate::ai::API_KEYS`]); a request on a connection to one of that
//! provider's domains, while the provider is allowed, gets the real key in
//! place of the placeholder, in its headers and its query string only.
//! Logs carry a BLAKE3 fingerprint of the key, never the key.

use http::HeaderValue;
use http::request::Parts;

use super::policy::{matches, normalize, parse_patterns};
use crate::ai::API_KEYS;
use crate::settings::Settings;

/// A key that may be put into requests on one connection.
#[derive(Clone)]
pub struct Secret {
    placeholder: &'static str,
    key: String,
    /// BLAKE3 of the key, first 16 hex digits.
    pub fingerprint: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({})", self.fingerprint)
    }
}

/// The fingerprint logged for `key`.
pub fn fingerprint(key: &str) -> String {
    blake3::hash(key.as_bytes()).to_hex()[..16].to_owned()
}

/// The keys for a request to `name`: those set, of allowed providers
/// whose domains cover it.
pub fn for_name(settings: &Settings, name: &str) -> Vec<Secret> {
    let name = normalize(name);
    let covers = |prefix: &str| {
        let domains = settings.text(&format!("{prefix}.domains"));
        let patterns = parse_patterns(domains).unwrap_or_default();
        patterns.iter().any(|pattern| matches(pattern, &name))
    };
    API_KEYS
        .iter()
        .filter_map(|k| {
            let key = k.value(settings);
            let usable = !key.is_empty()
                && settings.flag(&format!("{}.allow", k.prefix))
                && covers(k.prefix);
            usable.then(|| Secret {
                placeholder: k.placeholder,
                key: key.to_owned(),
                fingerprint: fingerprint(key),
            })
        })
        .collect()
}

/// Puts the real keys in place of their placeholders in a request's
/// headers and query; returns the fingerprint of the key used, if any.
pub fn swap(parts: &mut Parts, secrets: &[Secret]) -> Option<String> {
    let mut used = None;
    for secret in secrets {
        for value in parts.headers.values_mut() {
            let Ok(text) = value.to_str() else { continue };
            if text.contains(secret.placeholder)
                && let Ok(real) =
                    HeaderValue::from_str(&text.replace(secret.placeholder, &secret.key))
            {
                *value = real;
                used = Some(secret.fingerprint.clone());
            }
        }
        // Only the query can carry a key (Google's `?key=`).
        let in_query = parts
            .uri
            .query()
            .is_some_and(|q| q.contains(secret.placeholder));
        let swapped = || {
            parts
                .uri
                .to_string()
                .replace(secret.placeholder, &secret.key)
        };
        if in_query && let Ok(real) = swapped().parse() {
            parts.uri = real;
            used = Some(secret.fingerprint.clone());
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::settings::from_user_text as settings;

    const KEYS: &str =
        "[ai.anthropic]\napi_key = \"sk-ant-real\"\n[ai.google]\napi_key = \"g-real\"\n";

    #[test]
    fn keys_go_only_to_their_providers_domains_while_allowed() {
        let s = settings(KEYS);
        assert_eq!(for_name(&s, "api.anthropic.com").len(), 1);
        assert_eq!(for_name(&s, "evil.example.com").len(), 0);
        assert_eq!(for_name(&s, "api.openai.com").len(), 0, "no OpenAI key set");
        let off = settings("[ai.anthropic]\napi_key = \"sk-ant-real\"\nallow = false\n");
        assert_eq!(for_name(&off, "api.anthropic.com").len(), 0);
    }

    #[test]
    fn placeholders_in_headers_and_query_are_replaced() {
        let s = settings(KEYS);
        let anthropic = API_KEYS[0].placeholder;
        let (mut parts, ()) = http::Request::post("/v1/messages")
            .header("x-api-key", anthropic)
            .header("authorization", format!("Bearer {anthropic}"))
            .header("x-other", "untouched")
            .body(())
            .unwrap()
            .into_parts();
        let used = swap(&mut parts, &for_name(&s, "api.anthropic.com"));
        assert_eq!(used, Some(fingerprint("sk-ant-real")));
        assert_eq!(parts.headers["x-api-key"], "sk-ant-real");
        assert_eq!(parts.headers["authorization"], "Bearer sk-ant-real");
        assert_eq!(parts.headers["x-other"], "untouched");

        let google = API_KEYS[2].placeholder;
        let (mut parts, ()) =
            http::Request::post(format!("/v1beta/models/m:generateContent?key={google}"))
                .body(())
                .unwrap()
                .into_parts();
        swap(
            &mut parts,
            &for_name(&s, "generativelanguage.googleapis.com"),
        );
        assert_eq!(parts.uri, "/v1beta/models/m:generateContent?key=g-real");
    }

    #[test]
    fn nothing_is_swapped_on_other_domains() {
        let s = settings(KEYS);
        let (mut parts, ()) = http::Request::get("/")
            .header("x-api-key", API_KEYS[0].placeholder)
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(swap(&mut parts, &for_name(&s, "example.com")), None);
        assert_eq!(parts.headers["x-api-key"], API_KEYS[0].placeholder);
    }
}
