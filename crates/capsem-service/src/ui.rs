//! The web UI: the embedded bundle and the service's API over TCP on
//! 127.0.0.1, for a browser holding the UI's token.
//!
//! Any web page the user opens can send requests to a local port, and any
//! other local user can connect to it, so every request is checked before
//! it reaches the API (docs/ui.md, "Security"):
//! - its `Host` must be `127.0.0.1:PORT` or `localhost:PORT` (a page of a
//!   rebound DNS name sends its own name);
//! - an `Origin`, when sent (browsers always send one with WebSockets and
//!   cross-site writes), must be this server's own;
//! - `/v1/*` needs the token, as the cookie (HttpOnly, SameSite=Strict)
//!   `/login?code=` sets for a one-time code, or as
//!   `Authorization: Bearer TOKEN`;
//! - every answer carries a strict Content-Security-Policy.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use serde::Deserialize;

use crate::api::ErrorBody;

/// What every answer may load: its own scripts, styles and sockets, and
/// nothing inline or from anywhere else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
     frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

/// Where the embedded bundle was built (the browser tests run from its
/// project).
pub const BUNDLE_DIR: &str = env!("CAPSEM_UI_DIST");
/// Whence `build.rs` took it: `env`, `cache`, or `none` (no UI).
pub const BUNDLE_FROM: &str = env!("CAPSEM_UI_FROM");

/// The built frontend (`ui/`), compiled in by `build.rs`.
#[derive(rust_embed::RustEmbed)]
#[folder = "$CAPSEM_UI_DIST"]
struct Bundle;

/// Whether this capsem was built with its UI.
pub fn bundled() -> bool {
    Bundle::get("index.html").is_some()
}

/// The secret a browser must hold: 32 random bytes, hex.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// A fresh token, written to `path` (mode 0600) for scripts; the last
    /// service's token, and every cookie made from it, stop working.
    pub fn make(path: &Path) -> io::Result<Token> {
        let token = Token(random_hex());
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(token.0.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(token)
    }

    fn matches(&self, given: &str) -> bool {
        same_secret(&self.0, given)
    }
}

/// Compares in time independent of where `given` differs.
pub fn same_secret(secret: &str, given: &str) -> bool {
    let (a, b) = (secret.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random bytes, hex.
pub fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a request's `host` names this machine's server on `port`
/// (`127.0.0.1:PORT` or `localhost:PORT`): a page of another name that
/// resolves here (DNS rebinding) does not.
pub fn loopback_host(port: u16, host: Option<&str>) -> bool {
    host.is_some_and(|host| {
        [format!("127.0.0.1:{port}"), format!("localhost:{port}")]
            .iter()
            .any(|ok| ok.eq_ignore_ascii_case(host))
    })
}

/// How long a sign-in address works.
const CODE_LIFE: Duration = Duration::from_secs(120);
/// Sign-in codes waiting at once; older ones are dropped.
const MAX_CODES: usize = 16;

/// Who may use the UI on `port`.
pub struct Gate {
    port: u16,
    token: Token,
    /// One-time codes of sign-in addresses not used yet, with their birth.
    codes: Mutex<Vec<(String, Instant)>>,
    /// Requests refused so far (logged sparingly: a page can send many).
    refused: AtomicU64,
}

impl Gate {
    /// A gate for a server on 127.0.0.1:`port`.
    pub fn new(port: u16, token: Token) -> Self {
        Gate {
            port,
            token,
            codes: Mutex::default(),
            refused: AtomicU64::new(0),
        }
    }

    /// The address that signs a browser in: a code that works once, for
    /// [`CODE_LIFE`], so the address is worth nothing once used or seen
    /// late (it passes through `xdg-open`'s command line).
    pub fn sign_in_url(&self) -> String {
        let code = random_hex();
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        codes.retain(|(_, born)| born.elapsed() < CODE_LIFE);
        if codes.len() >= MAX_CODES {
            codes.remove(0);
        }
        codes.push((code.clone(), Instant::now()));
        format!("http://127.0.0.1:{}/login?code={code}", self.port)
    }

    /// Whether `given` is a live code; it is used up either way.
    fn redeem(&self, given: &str) -> bool {
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        let found = codes
            .iter()
            .position(|(code, born)| born.elapsed() < CODE_LIFE && same_secret(code, given));
        found.map(|at| codes.remove(at)).is_some()
    }

    /// The cookie's name: cookies ignore ports, and two users' services
    /// on two ports must not overwrite each other's.
    fn cookie_name(&self) -> String {
        format!("capsem_ui_{}", self.port)
    }

    fn host_ok(&self, headers: &HeaderMap) -> bool {
        loopback_host(
            self.port,
            headers.get(header::HOST).and_then(|h| h.to_str().ok()),
        )
    }

    fn origin_ok(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let origin = origin.to_str().unwrap_or("");
        [
            format!("http://127.0.0.1:{}", self.port),
            format!("http://localhost:{}", self.port),
        ]
        .iter()
        .any(|ok| ok.eq_ignore_ascii_case(origin))
    }

    fn signed_in(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        let jar = CookieJar::from_headers(headers);
        let cookie = jar.get(&self.cookie_name()).map(|c| c.value().to_owned());
        bearer.is_some_and(|t| self.token.matches(t))
            || cookie.is_some_and(|t| self.token.matches(&t))
    }
}

/// The UI's server: `api` (the service's routes) behind the gate, the
/// sign-in route and the bundle.
pub fn router(api: Router, gate: Arc<Gate>) -> Router {
    let own = Router::new()
        .route("/login", get(login))
        .fallback(get(asset))
        .with_state(gate.clone());
    api.merge(own)
        .layer(middleware::from_fn_with_state(gate, guard))
}

async fn guard(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let refusal = if !gate.host_ok(headers) {
        Some((
            StatusCode::FORBIDDEN,
            format!(
                "refused: the capsem UI answers to http://127.0.0.1:{0}/ and http://localhost:{0}/ only",
                gate.port
            ),
        ))
    } else if !gate.origin_ok(headers) {
        Some((
            StatusCode::FORBIDDEN,
            "refused: a request from another site's page".to_owned(),
        ))
    } else if request.uri().path().starts_with("/v1/") && !gate.signed_in(headers) {
        Some((
            StatusCode::UNAUTHORIZED,
            "not signed in: run `capsem ui` to open a signed-in page".to_owned(),
        ))
    } else {
        None
    };
    let mut response = match refusal {
        Some((status, error)) => {
            // The first, then at each power of two: any page can send these.
            let count = gate.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if count.is_power_of_two() {
                tracing::warn!(
                    "UI refused {} {} ({count} refused so far): {error}",
                    request.method(),
                    request.uri().path()
                );
            }
            (status, axum::Json(ErrorBody { error })).into_response()
        }
        None => next.run(request).await,
    };
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[derive(Deserialize)]
struct LoginQuery {
    #[serde(default)]
    code: String,
}

/// `GET /login?code=C`: trades the one-time code of `capsem ui`'s address
/// for the cookie (which holds the token), and leaves the code out of the
/// address bar.
async fn login(
    State(gate): State<Arc<Gate>>,
    Query(query): Query<LoginQuery>,
    jar: CookieJar,
) -> Response {
    if !gate.redeem(&query.code) {
        let error = "this sign-in address is used up or expired: run `capsem ui` for a fresh one";
        return (StatusCode::UNAUTHORIZED, error).into_response();
    }
    let cookie = Cookie::build((gate.cookie_name(), gate.token.0.clone()))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict);
    (
        jar.add(cookie),
        [(header::LOCATION, "/"), (header::CACHE_CONTROL, "no-store")],
        StatusCode::SEE_OTHER,
    )
        .into_response()
}

/// A file of the bundle; `/` is `index.html`.
async fn asset(uri: Uri, headers: HeaderMap) -> Response {
    let path = match uri.path().trim_start_matches('/') {
        "" => "index.html",
        path => path,
    };
    let Some(file) = Bundle::get(path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let etag = format!(
        "\"{}\"",
        file.metadata
            .sha256_hash()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    // Hashed names under assets/ never change; index.html names them.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|tag| tag.as_bytes() == etag.as_bytes());
    let head = [
        (header::CONTENT_TYPE, file.metadata.mimetype().to_owned()),
        (header::ETAG, etag),
        (header::CACHE_CONTROL, cache.to_owned()),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, head).into_response();
    }
    (head, file.data.into_owned()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::post;
    use http_body_util::BodyExt;
    use std::os::unix::fs::PermissionsExt;
    use tower::ServiceExt;

    const PORT: u16 = 7999;

    fn token() -> Token {
        Token("ab".repeat(32))
    }

    fn app() -> Router {
        let api = Router::new()
            .route("/v1/sandboxes", get(|| async { "the list" }))
            .route("/v1/sandboxes/{name}/stop", post(|| async { "stopped" }));
        router(api, Arc::new(Gate::new(PORT, token())))
    }

    async fn send(request: axum::http::Request<Body>) -> (StatusCode, HeaderMap, String) {
        let response = app().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> axum::http::Request<Body> {
        let mut builder = axum::http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::empty()).unwrap()
    }

    const HOST: (&str, &str) = ("host", "127.0.0.1:7999");

    fn cookie() -> (&'static str, String) {
        ("cookie", format!("capsem_ui_{PORT}={}", "ab".repeat(32)))
    }

    #[tokio::test]
    async fn the_api_without_the_token_is_401() {
        for headers in [
            vec![HOST],
            vec![HOST, ("cookie", "capsem_ui_7999=0000")],
            vec![HOST, ("authorization", "Bearer nope")],
            // Another port's cookie is another service's.
            vec![
                HOST,
                ("cookie", &*format!("capsem_ui_7998={}", "ab".repeat(32))),
            ],
        ] {
            let (status, _, body) = send(request("GET", "/v1/sandboxes", &headers)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}");
            assert!(body.contains("capsem ui"), "{body}");
        }
    }

    #[tokio::test]
    async fn the_cookie_or_the_bearer_token_signs_in() {
        let (name, value) = cookie();
        let bearer = format!("Bearer {}", "ab".repeat(32));
        for headers in [
            vec![HOST, (name, &*value)],
            vec![HOST, ("authorization", &*bearer)],
        ] {
            let (status, _, body) = send(request("GET", "/v1/sandboxes", &headers)).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "the list"));
        }
    }

    #[tokio::test]
    async fn a_foreign_host_is_refused_even_with_the_token() {
        let (name, value) = cookie();
        for host in [
            "evil.test:7999",
            "127.0.0.1:80",
            "127.0.0.1",
            "0.0.0.0:7999",
            "",
        ] {
            let (status, _, body) = send(request(
                "GET",
                "/v1/sandboxes",
                &[("host", host), (name, &value)],
            ))
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{host}");
            assert!(body.contains("answers to http://127.0.0.1:7999/"), "{body}");
        }
        let (status, ..) = send(request("GET", "/", &[("host", "rebound.test:7999")])).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn a_foreign_origin_is_refused_even_with_the_token() {
        let (name, value) = cookie();
        for origin in [
            "http://evil.test",
            "null",
            "http://127.0.0.1:8000",
            "https://127.0.0.1:7999",
        ] {
            let (status, ..) = send(request(
                "POST",
                "/v1/sandboxes/web/stop",
                &[HOST, (name, &value), ("origin", origin)],
            ))
            .await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{origin}");
        }
        let (status, _, body) = send(request(
            "POST",
            "/v1/sandboxes/web/stop",
            &[HOST, (name, &value), ("origin", "http://localhost:7999")],
        ))
        .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "stopped"));
    }

    #[tokio::test]
    async fn a_websocket_from_another_site_is_refused() {
        let (name, value) = cookie();
        let (status, ..) = send(request(
            "GET",
            "/v1/sandboxes/web/exec",
            &[
                HOST,
                (name, &value),
                ("origin", "http://evil.test"),
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
        ))
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn login_trades_a_one_time_code_for_a_strict_http_only_cookie() {
        let gate = Arc::new(Gate::new(PORT, token()));
        let app = router(Router::new(), gate.clone());
        let url = gate.sign_in_url();
        let path = url
            .strip_prefix("http://127.0.0.1:7999")
            .unwrap()
            .to_owned();
        let login = |path: String| {
            let app = app.clone();
            async move {
                let request = request("GET", &path, &[HOST]);
                app.oneshot(request).await.unwrap()
            }
        };
        let answer = login(path.clone()).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        assert_eq!(answer.headers()["location"], "/");
        let cookie = answer.headers()["set-cookie"].to_str().unwrap();
        assert!(cookie.starts_with(&format!("capsem_ui_{PORT}={}", "ab".repeat(32))));
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        // Used once, the address is worth nothing; nor is the token itself,
        // nor a made-up code.
        let token_path = format!("/login?code={}", "ab".repeat(32));
        for bad in [path, token_path, "/login?code=ab".into(), "/login".into()] {
            let answer = login(bad.clone()).await;
            assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{bad}");
            assert!(answer.headers().get("set-cookie").is_none());
        }
    }

    #[test]
    fn sign_in_codes_are_bounded() {
        let gate = Gate::new(PORT, token());
        let urls: Vec<String> = (0..MAX_CODES + 4).map(|_| gate.sign_in_url()).collect();
        assert_eq!(gate.codes.lock().unwrap().len(), MAX_CODES);
        let code = |url: &String| url.rsplit('=').next().unwrap().to_owned();
        assert!(!gate.redeem(&code(&urls[0])), "the oldest was dropped");
        assert!(gate.redeem(&code(urls.last().unwrap())));
    }

    #[tokio::test]
    async fn every_answer_carries_the_content_security_policy() {
        for (uri, headers) in [
            ("/", vec![HOST]),
            ("/v1/sandboxes", vec![HOST]),
            ("/nothing", vec![HOST]),
            ("/", vec![("host", "evil.test:7999")]),
        ] {
            let (_, answer, _) = send(request("GET", uri, &headers)).await;
            assert_eq!(answer["content-security-policy"], CONTENT_SECURITY_POLICY);
            assert_eq!(answer["x-frame-options"], "DENY");
            assert_eq!(answer["x-content-type-options"], "nosniff");
        }
    }

    #[tokio::test]
    async fn the_bundle_is_served_without_inline_script() {
        if BUNDLE_FROM == "none" {
            // Built without `cargo xtask` (which always builds the UI):
            // nothing to serve, and `capsem ui` says so.
            assert!(!bundled());
            return;
        }
        let (status, headers, body) = send(request("GET", "/", &[HOST])).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(
            !body.contains("<script>") && !body.contains("style="),
            "{body}"
        );
        let tag = headers["etag"].to_str().unwrap().to_owned();
        let (status, ..) = send(request("GET", "/", &[HOST, ("if-none-match", &tag)])).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        let (status, ..) = send(request("GET", "/../Cargo.toml", &[HOST])).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_token_file_is_private_and_new_with_each_service() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ui.token");
        std::fs::write(&path, "an old one, others could read").unwrap();
        let first = Token::make(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first.0);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = Token::make(&path).unwrap();
        assert_ne!(second.0, first.0);
        assert!(!second.matches(&first.0));
    }
}
