//! GitHub App credentials and the App JWT.
//!
//! A GitHub App authenticates twice over. It signs a short-lived **App JWT**
//! (RS256 with the App's private key; `iat` 60 s in the past to absorb clock
//! drift, `exp` at most 10 minutes later, `iss` the App id) and uses it only
//! for `/app/*` endpoints; with that JWT it asks for an **installation
//! token** per installation, which lives one hour and is what every
//! repository request carries.
//!
//! octocrab (built with `jwt-rust-crypto`) signs the JWT and caches the
//! installation token; [`crate::github::client`] keeps one octocrab client per
//! installation so that cache is reused. This module reads the settings and
//! checks the key once at start-up, so a bad key is a clear configuration
//! error rather than a 401 an hour later. [`app_jwt`] exists for callers (and
//! tests) that need a JWT outside octocrab; it signs the same claims.
//!
//! Source: <https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app>

use std::path::Path;

use octocrab::jsonwebtoken::{self, Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::GitHubError;

/// The public GitHub API; GitHub Enterprise Server uses `https://<host>/api/v3`.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// How far in the past the JWT's `iat` is set, in seconds (GitHub's advice
/// against clock drift).
pub const JWT_BACKDATE_SECS: u64 = 60;

/// The JWT's lifetime from `iat`, in seconds: GitHub refuses an `exp` more
/// than 10 minutes ahead, and `iat` is backdated by 60 s, so `exp` lands
/// 9 minutes from now.
pub const JWT_LIFETIME_SECS: u64 = 10 * 60;

/// A GitHub App's id and private key. The key is kept in a [`SecretString`]:
/// it is never printed by `Debug` and never logged.
#[derive(Clone)]
pub struct AppCredentials {
    /// The App id (`iss` of the JWT).
    pub app_id: u64,
    private_key: SecretString,
    encoding_key: EncodingKey,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials")
            .field("app_id", &self.app_id)
            .field("private_key", &"[REDACTED]")
            .finish()
    }
}

impl AppCredentials {
    /// Checks and keeps an App id and its PEM private key (PKCS#1
    /// `BEGIN RSA PRIVATE KEY`, as GitHub downloads it, or PKCS#8).
    ///
    /// # Errors
    /// [`GitHubError::Config`] when the PEM is not an RSA private key; the
    /// message never contains the key.
    pub fn new(app_id: u64, private_key_pem: SecretString) -> Result<Self, GitHubError> {
        let encoding_key = EncodingKey::from_rsa_pem(private_key_pem.expose_secret().as_bytes())
            .map_err(|e| {
                GitHubError::Config(format!(
                    "the private key is not an RSA private key in PEM form ({e})"
                ))
            })?;
        Ok(Self {
            app_id,
            private_key: private_key_pem,
            encoding_key,
        })
    }

    /// The parsed key that [`app_jwt`] signs with.
    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding_key
    }

    /// The PEM text, for handing to another signer. Keep it secret.
    pub fn private_key_pem(&self) -> &SecretString {
        &self.private_key
    }
}

/// Where the GitHub API is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct GitHubSettings {
    /// Base URL of the REST API, without a trailing `/`.
    pub api_url: String,
    /// The App credentials; `None` means dry run (no effects are sent).
    pub credentials: Option<AppCredentials>,
    /// The App's bot account, `<slug>[bot]` (`--app-slug`): with the App
    /// id, how taskmaster tells its own comments and reviews from anyone
    /// else's. `None` from [`GitHubSettings::from_lookup`]; the service sets it.
    pub bot_login: Option<String>,
}

/// `GITHUB_API_URL` read through `lookup` (an environment): default
/// [`DEFAULT_API_URL`], without a trailing `/`.
///
/// # Errors
/// [`GitHubError::Config`] when it does not start with `http(s)://`.
pub fn api_url_from(lookup: impl Fn(&str) -> Option<String>) -> Result<String, GitHubError> {
    let api_url = lookup("GITHUB_API_URL")
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
    let api_url = api_url.trim().trim_end_matches('/').to_owned();
    if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
        return Err(GitHubError::Config(format!(
            "GITHUB_API_URL must start with https:// (got `{api_url}`)"
        )));
    }
    Ok(api_url)
}

impl GitHubSettings {
    /// Reads the settings from the process environment; see
    /// [`GitHubSettings::from_lookup`].
    ///
    /// # Errors
    /// As [`GitHubSettings::from_lookup`].
    pub fn from_env() -> Result<Self, GitHubError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (an environment):
    ///
    /// * `GITHUB_API_URL`: default [`DEFAULT_API_URL`];
    /// * `GITHUB_APP_ID`: the numeric App id;
    /// * `GITHUB_PRIVATE_KEY` (PEM text) or `GITHUB_PRIVATE_KEY_PATH` (a file
    ///   holding it). Literal `\n` sequences in `GITHUB_PRIVATE_KEY` are turned
    ///   into newlines, as platforms that store one-line secrets need.
    ///
    /// With neither the App id nor a key set, the result has no credentials
    /// (dry run).
    ///
    /// # Errors
    /// [`GitHubError::Config`] when only one of App id and key is set, the
    /// App id is not a positive number, both key variables are set, the key
    /// file cannot be read, the key is invalid, or the API URL is not
    /// `http(s)://…`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, GitHubError> {
        let non_empty = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let api_url = api_url_from(&lookup)?;
        let app_id = non_empty("GITHUB_APP_ID");
        let key_text = non_empty("GITHUB_PRIVATE_KEY");
        let key_path = non_empty("GITHUB_PRIVATE_KEY_PATH");
        let key = match (key_text, key_path) {
            (Some(_), Some(_)) => {
                return Err(GitHubError::Config(
                    "set GITHUB_PRIVATE_KEY or GITHUB_PRIVATE_KEY_PATH, not both".into(),
                ));
            }
            (Some(text), None) => Some(SecretString::from(text.replace("\\n", "\n"))),
            (None, Some(path)) => Some(read_key_file(Path::new(&path))?),
            (None, None) => None,
        };
        let credentials = match (app_id, key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(GitHubError::Config(
                    "GITHUB_APP_ID is set but neither GITHUB_PRIVATE_KEY nor GITHUB_PRIVATE_KEY_PATH is"
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(GitHubError::Config(
                    "a private key is set but GITHUB_APP_ID is not".into(),
                ));
            }
            (Some(id), Some(key)) => {
                let app_id = id
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|id| *id > 0)
                    .ok_or_else(|| {
                        GitHubError::Config(format!(
                            "GITHUB_APP_ID must be a positive number (got `{id}`)"
                        ))
                    })?;
                Some(AppCredentials::new(app_id, key)?)
            }
        };
        Ok(Self {
            api_url,
            credentials,
            bot_login: None,
        })
    }
}

fn read_key_file(path: &Path) -> Result<SecretString, GitHubError> {
    std::fs::read_to_string(path)
        .map(SecretString::from)
        .map_err(|e| {
            GitHubError::Config(format!(
                "cannot read GITHUB_PRIVATE_KEY_PATH {}: {e}",
                path.display()
            ))
        })
}

/// The claims of an App JWT.
#[derive(Debug, Serialize)]
struct Claims {
    iat: u64,
    exp: u64,
    iss: String,
}

/// Signs an App JWT (RS256) for `credentials` at `now_unix` (seconds since
/// the epoch): `iat` = now − 60 s, `exp` = `iat` + 10 min (so ≤ now + 10 min),
/// `iss` = the App id as a string.
///
/// # Errors
/// [`GitHubError::Config`] when signing fails (an unusable key).
///
/// Source: <https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app>
pub fn app_jwt(credentials: &AppCredentials, now_unix: u64) -> Result<SecretString, GitHubError> {
    let iat = now_unix.saturating_sub(JWT_BACKDATE_SECS);
    let claims = Claims {
        iat,
        exp: iat + JWT_LIFETIME_SECS,
        iss: credentials.app_id.to_string(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        credentials.encoding_key(),
    )
    .map(SecretString::from)
    .map_err(|e| GitHubError::Config(format!("cannot sign the App JWT: {e}")))
}
