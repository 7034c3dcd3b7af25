//! The App JWT and installation tokens, each minted once and reused while it
//! is good, so that a burst of requests (a storm of new pull requests, each
//! installation's first check run) signs one JWT and mints one token per
//! installation instead of one per request.
//!
//! * **App JWT**: RS256-signed (a few milliseconds of CPU with the pure-Rust
//!   `rsa` crate, which also parses the key each time), valid from 60 s in
//!   the past to 10 min after signing ([`super::auth::app_jwt`]). It is
//!   reused for [`JWT_REUSE`], so every JWT sent has at least four minutes
//!   left. octocrab's own App authentication signs a new one per request,
//!   which a `perf` profile of the storm benchmark found at 30 % of the
//!   server's CPU when many installations needed their first token at once.
//! * **Installation tokens** live an hour and cannot be extended. One is
//!   minted per installation and reused until [`TOKEN_MARGIN`] before its
//!   `expires_at`. Minting is single-flight: requests of an installation that
//!   arrive while its token is being minted wait for that token instead of
//!   minting their own.
//!
//! Sources:
//! <https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app>,
//! <https://docs.github.com/en/rest/apps/apps#create-an-installation-access-token-for-an-app>.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use octocrab::Octocrab;

use super::GitHubError;
use super::auth::{AppCredentials, app_jwt};

/// How long one App JWT is sent before another is signed. It is valid for
/// nine minutes after signing, so this leaves four for clock skew and slow
/// answers.
pub const JWT_REUSE: Duration = Duration::from_secs(5 * 60);

/// An installation token is replaced when it has less than this left (a
/// request may queue behind pacing, and GitHub's clock may differ).
pub const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// A client authenticating as the App with a cached JWT.
pub(super) struct AppJwt {
    credentials: AppCredentials,
    /// The client carrying the current JWT, and when it was signed.
    cached: Mutex<Option<(Octocrab, Instant)>>,
}

impl AppJwt {
    pub(super) fn new(credentials: AppCredentials) -> Self {
        Self {
            credentials,
            cached: Mutex::new(None),
        }
    }

    /// A client sending the current App JWT as its bearer token, built from
    /// `base` (which carries no credentials) and signed anew when the cached
    /// one is [`JWT_REUSE`] old.
    ///
    /// # Errors
    /// [`GitHubError::Config`] when the key cannot sign.
    pub(super) fn client(&self, base: &Octocrab) -> Result<Octocrab, GitHubError> {
        let mut cached = self.cached.lock().expect("app JWT lock");
        if let Some((crab, signed)) = &*cached
            && signed.elapsed() < JWT_REUSE
        {
            return Ok(crab.clone());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let jwt = app_jwt(&self.credentials, now)?;
        let crab = base
            .user_access_token(jwt)
            .map_err(|e| GitHubError::Config(format!("App JWT client: {e}")))?;
        *cached = Some((crab.clone(), Instant::now()));
        Ok(crab)
    }
}

/// One installation's current token, as a client that sends it.
pub(super) struct Minted {
    pub(super) crab: Octocrab,
    pub(super) expires_at: SystemTime,
}

impl Minted {
    /// Whether the token has at least [`TOKEN_MARGIN`] left at `now`.
    pub(super) fn good_at(&self, now: SystemTime) -> bool {
        self.expires_at
            .duration_since(now)
            .is_ok_and(|left| left >= TOKEN_MARGIN)
    }
}

/// An installation's token slot; its lock is held while a token is minted,
/// so minting is single-flight.
#[derive(Default)]
pub(super) struct TokenSlot(pub(super) tokio::sync::Mutex<Option<Minted>>);

/// GitHub's answer to `POST /app/installations/{id}/access_tokens` (the
/// fields taskmaster reads).
#[derive(serde::Deserialize)]
pub(super) struct TokenAnswer {
    pub(super) token: String,
    pub(super) expires_at: chrono::DateTime<chrono::Utc>,
}

impl TokenAnswer {
    /// Reads the answer to `POST {path}` and registers the token with the
    /// redactor (whatever GitHub's token format becomes, no output shows
    /// it).
    ///
    /// # Errors
    /// [`GitHubError::Decode`] when `body` lacks `token` or `expires_at`.
    pub(super) fn read(body: &str, path: String) -> Result<Self, GitHubError> {
        let answer: TokenAnswer = serde_json::from_str(body).map_err(|e| GitHubError::Decode {
            method: "POST".into(),
            path,
            message: e.to_string(),
        })?;
        crate::redact::register_minted(&answer.token);
        Ok(answer)
    }

    /// When the token stops working, as a [`SystemTime`].
    pub(super) fn expires(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.expires_at.timestamp_millis().max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_is_good_until_its_margin() {
        let now = SystemTime::now();
        let crab = Octocrab::default();
        let minted = |left: Duration| Minted {
            crab: crab.clone(),
            expires_at: now + left,
        };
        assert!(minted(Duration::from_secs(3600)).good_at(now));
        assert!(minted(TOKEN_MARGIN).good_at(now));
        assert!(!minted(TOKEN_MARGIN - Duration::from_secs(1)).good_at(now));
        let expired = Minted {
            crab,
            expires_at: now - Duration::from_secs(1),
        };
        assert!(!expired.good_at(now));
    }

    #[test]
    fn token_answer_reads_github_shape() {
        let answer: TokenAnswer = serde_json::from_str(
            r#"{"token":"ghs_x","expires_at":"2016-07-11T22:14:10Z","permissions":{"issues":"write"}}"#,
        )
        .unwrap();
        assert_eq!(answer.token, "ghs_x");
        assert_eq!(
            answer.expires(),
            UNIX_EPOCH + Duration::from_secs(1_468_275_250)
        );
    }
}
