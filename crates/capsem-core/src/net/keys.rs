//! Provider API keys stay on the host. The guest sees placeholders (see
//! [`crate::ai::API_KEYS`]). A request over TLS to one of the provider's
//! API hosts (`PREFIX.api_hosts`), while the provider is allowed, gets the
//! real key in place of the placeholder in the provider's own carriers
//! (`x-api-key`, `Authorization: Bearer`, `?key=`) and nowhere else: not
//! over plain HTTP, not in other headers, not to other names. Logs carry a
//! BLAKE3 fingerprint of the key, never the key; what comes back is
//! scrubbed of it ([`super::scrub`]).

use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{HeaderValue, Uri};

use super::policy::{matches, parse_patterns};
use crate::ai::{API_KEYS, ApiKey, Carrier};
use crate::settings::Settings;

/// A key set in the settings, and where it may go.
#[derive(Clone)]
pub struct Secret {
    api: &'static ApiKey,
    key: String,
    /// BLAKE3 of the key, first 16 hex digits.
    pub fingerprint: String,
    /// `PREFIX.api_hosts`: the only names it is sent to.
    hosts: Vec<String>,
    /// `PREFIX.allow`.
    allowed: bool,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({}, {})", self.api.prefix, self.fingerprint)
    }
}

/// The fingerprint logged for `key`.
pub fn fingerprint(key: &str) -> String {
    blake3::hash(key.as_bytes()).to_hex()[..16].to_owned()
}

/// Every key set in `settings`.
pub fn from_settings(settings: &Settings) -> Vec<Secret> {
    API_KEYS
        .iter()
        .filter_map(|api| {
            let key = api.value(settings);
            let hosts = settings.text(&format!("{}.api_hosts", api.prefix));
            (!key.is_empty()).then(|| Secret {
                api,
                key: key.to_owned(),
                fingerprint: fingerprint(key),
                // Values were checked when the settings were loaded.
                hosts: parse_patterns(hosts).unwrap_or_default(),
                allowed: settings.flag(&format!("{}.allow", api.prefix)),
            })
        })
        .collect()
}

impl Secret {
    /// Whether requests to `name` (normalized) may carry this key: the
    /// provider is allowed and `name` is one of its API hosts.
    pub fn goes_to(&self, name: &str) -> bool {
        self.allowed && self.hosts.iter().any(|pattern| matches(pattern, name))
    }

    /// Whether `name` is one of the provider's API hosts, allowed or not:
    /// where the key may have been sent, so where it may come back from.
    pub fn served_by(&self, name: &str) -> bool {
        self.hosts.iter().any(|pattern| matches(pattern, name))
    }

    /// The real key.
    pub(super) fn key(&self) -> &str {
        &self.key
    }

    /// What stands in for the key in what the guest is sent: the
    /// placeholder, cut or padded with `x` to the key's length, so that
    /// bodies keep their length.
    pub(super) fn mask(&self) -> String {
        let mut mask: String = self.api.placeholder.chars().take(self.key.len()).collect();
        while mask.len() < self.key.len() {
            mask.push('x');
        }
        mask
    }
}

/// Puts the real key in place of its placeholder where the provider's API
/// takes it (every secret given is one that [`Secret::goes_to`] the
/// request's name); returns the fingerprint of the key used, if any.
pub fn swap(parts: &mut Parts, secrets: &[&Secret]) -> Option<String> {
    let mut used = None;
    for secret in secrets {
        for carrier in secret.api.carriers {
            if put_in(parts, secret, *carrier) {
                used = Some(secret.fingerprint.clone());
            }
        }
    }
    used
}

/// Replaces the placeholder in one carrier; whether it was there.
fn put_in(parts: &mut Parts, secret: &Secret, carrier: Carrier) -> bool {
    let placeholder = secret.api.placeholder;
    match carrier {
        Carrier::Header(name) => swap_header(parts, name, "", placeholder, &secret.key),
        Carrier::Bearer => swap_header(
            parts,
            AUTHORIZATION.as_str(),
            "bearer ",
            placeholder,
            &secret.key,
        ),
        Carrier::Query(param) => swap_query(&mut parts.uri, param, placeholder, &secret.key),
    }
}

/// Replaces each value of header `name` that is exactly `scheme` (any
/// case) followed by the placeholder.
fn swap_header(parts: &mut Parts, name: &str, scheme: &str, placeholder: &str, key: &str) -> bool {
    let mut swapped = false;
    let named = parts.headers.iter_mut().filter(|(n, _)| n.as_str() == name);
    for (_, value) in named {
        let Ok(text) = value.to_str() else { continue };
        let text = text.trim();
        let Some((head, tail)) = text.split_at_checked(scheme.len()) else {
            continue;
        };
        if head.eq_ignore_ascii_case(scheme)
            && tail == placeholder
            && let Ok(real) = HeaderValue::from_str(&format!("{head}{key}"))
        {
            let mut real = real;
            real.set_sensitive(true);
            *value = real;
            swapped = true;
        }
    }
    swapped
}

/// Replaces the value of each query parameter `param` that is exactly the
/// placeholder.
fn swap_query(uri: &mut Uri, param: &str, placeholder: &str, key: &str) -> bool {
    let Some(query) = uri.query() else {
        return false;
    };
    let mut swapped = false;
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if name == param && value == placeholder => {
                swapped = true;
                format!("{name}={key}")
            }
            _ => pair.to_owned(),
        })
        .collect();
    if !swapped {
        return false;
    }
    let path_and_query = format!("{}?{}", uri.path(), pairs.join("&"));
    let mut parts = std::mem::take(uri).into_parts();
    match path_and_query.parse() {
        Ok(pq) => {
            parts.path_and_query = Some(pq);
            *uri = Uri::from_parts(parts).unwrap_or_default();
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::settings::from_user_text as settings;

    const KEYS: &str = "[ai.anthropic]\napi_key = \"sk-ant-real\"\n\
        [ai.google]\napi_key = \"g-real\"\n[ai.openai]\napi_key = \"sk-oai-real\"\n";

    fn for_name(secrets: &[Secret], name: &str) -> Vec<Secret> {
        secrets
            .iter()
            .filter(|s| s.goes_to(name))
            .cloned()
            .collect()
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::post(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn swapped(parts: &mut Parts, name: &str) -> Option<String> {
        let secrets = for_name(&from_settings(&settings(KEYS)), name);
        swap(parts, &secrets.iter().collect::<Vec<_>>())
    }

    #[test]
    fn keys_go_only_to_their_providers_api_hosts_while_allowed() {
        let s = from_settings(&settings(KEYS));
        assert_eq!(for_name(&s, "api.anthropic.com").len(), 1);
        assert_eq!(
            for_name(&s, "console.anthropic.com").len(),
            0,
            "not an API host"
        );
        assert_eq!(for_name(&s, "evil.example.com").len(), 0);
        assert_eq!(for_name(&s, "storage.googleapis.com").len(), 0);
        assert_eq!(for_name(&s, "generativelanguage.googleapis.com").len(), 1);
        let off = from_settings(&settings(
            "[ai.anthropic]\napi_key = \"sk-ant-real\"\nallow = false\n",
        ));
        assert_eq!(for_name(&off, "api.anthropic.com").len(), 0);
        assert!(off[0].served_by("api.anthropic.com"));
        let none = from_settings(&settings(""));
        assert!(none.is_empty());
    }

    #[test]
    fn only_the_providers_carriers_get_the_key() {
        let anthropic = API_KEYS[0].placeholder;
        let bearer = format!("Bearer {anthropic}");
        let mut parts = request(
            &format!("/v1/messages?q={anthropic}&key={anthropic}"),
            &[
                ("x-api-key", anthropic),
                ("authorization", &bearer),
                ("x-other", anthropic),
                ("origin", anthropic),
                ("x-api-key", &format!("{anthropic}{anthropic}")),
            ],
        );
        let used = swapped(&mut parts, "api.anthropic.com");
        assert_eq!(used, Some(fingerprint("sk-ant-real")));
        let values: Vec<_> = parts.headers.get_all("x-api-key").iter().collect();
        assert_eq!(values[0], "sk-ant-real");
        assert_ne!(values[1], "sk-ant-real", "only an exact value is a carrier");
        assert_eq!(parts.headers["authorization"], "Bearer sk-ant-real");
        assert_eq!(parts.headers["x-other"], anthropic);
        assert_eq!(parts.headers["origin"], anthropic);
        assert!(
            !parts.uri.to_string().contains("sk-ant-real"),
            "Anthropic takes no key in its query: {}",
            parts.uri
        );
    }

    #[test]
    fn googles_key_goes_in_its_header_and_key_parameter_only() {
        let google = API_KEYS[2].placeholder;
        let uri = format!("/v1beta/models/m:generateContent?alt=sse&key={google}&q={google}");
        let mut parts = request(&uri, &[("x-goog-api-key", google), ("x-api-key", google)]);
        assert!(swapped(&mut parts, "generativelanguage.googleapis.com").is_some());
        assert_eq!(
            parts.uri,
            format!("/v1beta/models/m:generateContent?alt=sse&key=g-real&q={google}").as_str()
        );
        assert_eq!(parts.headers["x-goog-api-key"], "g-real");
        assert_eq!(parts.headers["x-api-key"], google);
    }

    #[test]
    fn openai_takes_a_bearer_token_only() {
        let openai = API_KEYS[1].placeholder;
        let mut parts = request(
            "/v1/responses",
            &[
                ("authorization", &format!("bearer {openai}")),
                ("x-api-key", openai),
            ],
        );
        assert!(swapped(&mut parts, "api.openai.com").is_some());
        assert_eq!(parts.headers["authorization"], "bearer sk-oai-real");
        assert_eq!(parts.headers["x-api-key"], openai);
    }

    #[test]
    fn nothing_is_swapped_on_other_names() {
        let mut parts = request("/", &[("x-api-key", API_KEYS[0].placeholder)]);
        assert_eq!(swapped(&mut parts, "example.com"), None);
        assert_eq!(parts.headers["x-api-key"], API_KEYS[0].placeholder);
    }

    #[test]
    fn masks_keep_the_keys_length_and_say_what_they_are() {
        for secret in from_settings(&settings(KEYS)) {
            let mask = secret.mask();
            assert_eq!(mask.len(), secret.key().len());
            assert!(!mask.contains(secret.key()));
        }
        let long = format!("[ai.anthropic]\napi_key = \"{}\"\n", "k".repeat(100));
        let secret = &from_settings(&settings(&long))[0];
        assert!(secret.mask().starts_with(API_KEYS[0].placeholder));
        assert_eq!(secret.mask().len(), 100);
    }
}
