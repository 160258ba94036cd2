//! `/v1/settings`: every setting in effect, and changes to the user's file
//! through the same code as `capsem settings set` and `reset` (its
//! comments kept, a key the corporate file sets refused).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::get;
use capsem_core::paths;
use capsem_core::settings::record::{self, Record};
use capsem_core::settings::{Settings, SettingsError, edit};
use serde::{Deserialize, Serialize};

use crate::service::ApiError;

/// The files settings come from.
struct Files {
    user: PathBuf,
    corp: PathBuf,
}

/// `PUT /v1/settings/{key}`: the value as `capsem settings set` takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRequest {
    /// The value, spelled as on the command line (`2`, `true`, `a, b`).
    pub value: String,
}

/// The answer to a change: the setting as it is now.
#[derive(Debug, Serialize)]
pub struct Changed {
    /// The setting in effect after the change; `None` for a
    /// `guest.env.*` variable reset away.
    pub setting: Option<Record>,
    /// What the user should know (a value the host runs, but not well).
    pub warnings: Vec<String>,
}

/// The routes, for the settings of the capsem home `home`.
pub fn routes<S: Clone + Send + Sync + 'static>(home: &Path) -> Router<S> {
    routes_of(Files {
        user: home.join("user.toml"),
        corp: paths::corp_settings(),
    })
}

fn routes_of<S: Clone + Send + Sync + 'static>(files: Files) -> Router<S> {
    Router::new()
        .route("/v1/settings", get(list))
        .route("/v1/settings/{key}", get(show).put(set).delete(reset))
        .with_state(Arc::new(files))
}

impl Files {
    fn load(&self) -> Result<Settings, ApiError> {
        Settings::load_from(&self.user, &self.corp).map_err(refusal)
    }

    fn find(&self, key: &str) -> Result<Record, ApiError> {
        record::find(&self.load()?, key).ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("no setting `{key}` is in effect"),
            )
        })
    }
}

/// A settings error in the user's words, with the status it deserves.
fn refusal(e: SettingsError) -> ApiError {
    let status = match &e {
        SettingsError::Unknown { .. } => StatusCode::NOT_FOUND,
        SettingsError::Locked { .. } => StatusCode::FORBIDDEN,
        SettingsError::Value { .. } => StatusCode::BAD_REQUEST,
        SettingsError::Parse { .. } | SettingsError::Invalid { .. } => StatusCode::CONFLICT,
        SettingsError::Read { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError(status, e.to_string())
}

async fn list(State(files): State<Arc<Files>>) -> Result<axum::Json<Vec<Record>>, ApiError> {
    Ok(axum::Json(record::records(&files.load()?)))
}

async fn show(
    State(files): State<Arc<Files>>,
    UrlPath(key): UrlPath<String>,
) -> Result<axum::Json<Record>, ApiError> {
    files.find(&key).map(axum::Json)
}

async fn set(
    State(files): State<Arc<Files>>,
    UrlPath(key): UrlPath<String>,
    axum::Json(req): axum::Json<SetRequest>,
) -> Result<axum::Json<Changed>, ApiError> {
    let warnings = edit::set(&files.user, &files.corp, &key, &req.value).map_err(|e| match e {
        // The value given does not fit this key (the file is fine).
        SettingsError::Invalid {
            key: ref invalid, ..
        } if *invalid == key => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
        e => refusal(e),
    })?;
    Ok(axum::Json(Changed {
        setting: Some(files.find(&key)?),
        warnings,
    }))
}

async fn reset(
    State(files): State<Arc<Files>>,
    UrlPath(key): UrlPath<String>,
) -> Result<axum::Json<Changed>, ApiError> {
    edit::reset(&files.user, &files.corp, &key).map_err(refusal)?;
    let setting = record::find(&files.load()?, &key);
    Ok(axum::Json(Changed {
        setting,
        warnings: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    struct Home {
        dir: tempfile::TempDir,
        router: Router,
    }

    fn home(corp: &str) -> Home {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            user: dir.path().join("user.toml"),
            corp: dir.path().join("corp.toml"),
        };
        std::fs::write(&files.corp, corp).unwrap();
        let router = routes_of(files);
        Home { dir, router }
    }

    async fn call(home: &Home, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = home.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn a_change_is_written_to_the_user_file_with_its_comments() {
        let home = home("");
        let user = home.dir.path().join("user.toml");
        std::fs::write(&user, "# mine\n[vm]\ncpus = 1 # fast\n").unwrap();
        let (status, body) = call(&home, "PUT", "/v1/settings/vm.cpus", r#"{"value":"2"}"#).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["setting"]["value"], 2);
        assert_eq!(answer["setting"]["source"], "user");
        let text = std::fs::read_to_string(&user).unwrap();
        assert!(
            text.contains("# mine") && text.contains("cpus = 2 # fast"),
            "{text}"
        );
        let (status, body) = call(&home, "DELETE", "/v1/settings/vm.cpus", "").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains(r#""source":"default""#), "{body}");
        // A guest variable reset is gone, not an error.
        let put = r#"{"value":"1"}"#;
        let (status, _) = call(&home, "PUT", "/v1/settings/guest.env.DEBUG", put).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = call(&home, "DELETE", "/v1/settings/guest.env.DEBUG", "").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, r#"{"setting":null,"warnings":[]}"#)
        );
    }

    #[tokio::test]
    async fn bad_values_unknown_keys_and_locked_keys_are_refused_and_nothing_is_written() {
        let home = home("[vm]\nmemory_mib = 512\n");
        let user = home.dir.path().join("user.toml");
        for (key, value, status, words) in [
            ("vm.cpus", "two", StatusCode::BAD_REQUEST, "an integer"),
            ("vm.cpus", "0", StatusCode::BAD_REQUEST, "from 1 to 64"),
            (
                "vm.cpu",
                "2",
                StatusCode::NOT_FOUND,
                "did you mean `vm.cpus`",
            ),
            ("vm.memory_mib", "1024", StatusCode::FORBIDDEN, "locked"),
        ] {
            let body = serde_json::json!({ "value": value }).to_string();
            let (got, text) = call(&home, "PUT", &format!("/v1/settings/{key}"), &body).await;
            assert_eq!(got, status, "{key}={value}: {text}");
            assert!(text.contains(words), "{text}");
        }
        assert!(!user.exists());
        let (status, _) = call(&home, "DELETE", "/v1/settings/vm.memory_mib", "").await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (_, body) = call(&home, "GET", "/v1/settings/vm.memory_mib", "").await;
        assert!(body.contains(r#""locked":true"#), "{body}");
    }

    #[tokio::test]
    async fn a_broken_user_file_is_reported_and_kept() {
        let home = home("");
        let user = home.dir.path().join("user.toml");
        std::fs::write(&user, "[vm\ncpus = ").unwrap();
        let (status, body) = call(&home, "GET", "/v1/settings", "").await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        let (status, _) = call(&home, "PUT", "/v1/settings/vm.cpus", r#"{"value":"2"}"#).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(std::fs::read_to_string(&user).unwrap(), "[vm\ncpus = ");
    }
}
