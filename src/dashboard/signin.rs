//! Signing in to the dashboard without pasting a token: with GitHub (the
//! App's user authorization, OAuth 2 with PKCE and `state`), or behind
//! Cloudflare Access (its signed `Cf-Access-Jwt-Assertion` header).
//!
//! Who gets which role is the operator's decision, in the service
//! configuration (`--config`):
//!
//! ```yaml
//! sign_in:
//!   github:
//!     session_hours: 8          # default 8
//!     roles:                    # the first rule that matches wins
//!       - { user: octocat, role: admin }
//!       - { team: acme/platform, role: operator }
//!       - { org: acme, role: viewer }
//!   cloudflare_access:
//!     team_domain: https://acme.cloudflareaccess.com
//!     audience: 4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2
//!     roles:
//!       - { email: alice@acme.com, role: admin }
//!       - { group: platform, role: operator }
//!       - { email_domain: acme.com, role: viewer }
//! ```
//!
//! A GitHub sign-in becomes an API token of the mapped role named
//! `github:{login}#{n}` that expires with the session (its hash is in the
//! session cookie, so logging out, revoking it and the audit log work as
//! for any token; the person never sees it). GitHub's own user token is
//! used for three reads (`/user`, `/user/orgs`, `/user/teams`) and dropped.
//! Someone no rule matches is refused and told why.
//!
//! Sources: <https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-user-access-token-for-a-github-app>,
//! <https://developers.cloudflare.com/cloudflare-one/identity/authorization-cookie/validating-json/>

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Digest as _;

use crate::store::Role;

/// How sign-in works on this service (`sign_in:` in the service
/// configuration). Empty: token login only.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInConfig {
    /// Sign-in with GitHub.
    #[serde(default)]
    pub github: Option<GitHubSignIn>,
    /// Trust Cloudflare Access's signed header.
    #[serde(default)]
    pub cloudflare_access: Option<AccessSignIn>,
}

/// `sign_in.github`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHubSignIn {
    /// Who gets which role; the first rule that matches wins.
    pub roles: Vec<RoleRule>,
    /// How long a session lasts, in hours (default 8, at most 720).
    #[serde(default = "default_session_hours")]
    pub session_hours: u32,
}

fn default_session_hours() -> u32 {
    8
}

/// `sign_in.cloudflare_access`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessSignIn {
    /// The team's domain, `https://<team>.cloudflareaccess.com`: the
    /// tokens' issuer.
    pub team_domain: String,
    /// The Access application's audience (AUD) tag.
    pub audience: String,
    /// Who gets which role; the first rule that matches wins.
    pub roles: Vec<RoleRule>,
    /// Where the signing keys are (default
    /// `{team_domain}/cdn-cgi/access/certs`).
    #[serde(default)]
    pub certs_url: Option<String>,
}

/// One rule: exactly one of `user`, `team`, `org` (GitHub) or `email`,
/// `email_domain`, `group` (Cloudflare Access), and the role it grants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRule {
    /// A GitHub login.
    #[serde(default)]
    pub user: Option<String>,
    /// A GitHub team, `org/team-slug`.
    #[serde(default)]
    pub team: Option<String>,
    /// Any member of this GitHub organization.
    #[serde(default)]
    pub org: Option<String>,
    /// An e-mail address (Cloudflare Access).
    #[serde(default)]
    pub email: Option<String>,
    /// Any e-mail address at this domain (Cloudflare Access).
    #[serde(default)]
    pub email_domain: Option<String>,
    /// A group in the token's `groups` claim (Cloudflare Access, when the
    /// identity provider passes groups).
    #[serde(default)]
    pub group: Option<String>,
    /// `admin`, `developer`, `operator` or `viewer`.
    pub role: String,
}

impl RoleRule {
    fn role(&self) -> Result<Role, String> {
        self.role.parse()
    }

    fn keys(&self) -> Vec<&'static str> {
        [
            ("user", self.user.is_some()),
            ("team", self.team.is_some()),
            ("org", self.org.is_some()),
            ("email", self.email.is_some()),
            ("email_domain", self.email_domain.is_some()),
            ("group", self.group.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| k)
        .collect()
    }
}

impl SignInConfig {
    /// Checks the rules: each names one subject of its provider and a real
    /// role; the URLs are `https://` (or `http://` on loopback).
    ///
    /// # Errors
    /// What is wrong, naming the rule (`sign_in.github.roles[2]`).
    pub fn validate(&self) -> Result<(), String> {
        let check = |provider: &str, rules: &[RoleRule], allowed: &[&str]| {
            if rules.is_empty() {
                return Err(format!(
                    "sign_in.{provider}.roles is empty: nobody could sign in"
                ));
            }
            for (i, rule) in rules.iter().enumerate() {
                let at = format!("sign_in.{provider}.roles[{i}]");
                rule.role().map_err(|e| format!("{at}: role {e}"))?;
                match rule.keys().as_slice() {
                    [one] if allowed.contains(one) => {}
                    [one] => {
                        return Err(format!(
                            "{at}: `{one}` is not a {provider} subject (use one of {})",
                            allowed.join(", ")
                        ));
                    }
                    _ => {
                        return Err(format!("{at}: name exactly one of {}", allowed.join(", ")));
                    }
                }
                if let Some(team) = &rule.team
                    && team.split('/').filter(|s| !s.is_empty()).count() != 2
                {
                    return Err(format!("{at}: team `{team}` should be `org/team-slug`"));
                }
            }
            Ok(())
        };
        if let Some(g) = &self.github {
            check("github", &g.roles, &["user", "team", "org"])?;
            if !(1..=720).contains(&g.session_hours) {
                return Err("sign_in.github.session_hours must be 1 to 720".into());
            }
        }
        if let Some(a) = &self.cloudflare_access {
            check(
                "cloudflare_access",
                &a.roles,
                &["email", "email_domain", "group"],
            )?;
            let url_ok = |u: &str| {
                u.starts_with("https://")
                    || u.starts_with("http://127.0.0.1")
                    || u.starts_with("http://localhost")
            };
            if !url_ok(&a.team_domain) {
                return Err(format!(
                    "sign_in.cloudflare_access.team_domain `{}` should be https://<team>.cloudflareaccess.com",
                    a.team_domain
                ));
            }
            if a.audience.trim().is_empty() {
                return Err(
                    "sign_in.cloudflare_access.audience is empty: copy the application's AUD tag"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

/// The sign-in methods a dashboard offers, ready to use.
#[derive(Default)]
pub struct SignIn {
    /// Sign-in with GitHub: the rules and the App's OAuth client.
    pub github: Option<GitHubSignInState>,
    /// Cloudflare Access's header, verified.
    pub access: Option<AccessVerifier>,
}

/// Sign-in with GitHub, configured.
pub struct GitHubSignInState {
    pub config: GitHubSignIn,
    pub oauth: GitHubOAuth,
}

impl SignIn {
    /// The methods `config` asks for. GitHub sign-in needs the App's OAuth
    /// client (`oauth`, from `GITHUB_CLIENT_ID`/`GITHUB_CLIENT_SECRET` or the
    /// registration); without it the configuration is refused.
    ///
    /// # Errors
    /// `sign_in.github` is set but the client is not, or an HTTP client
    /// cannot be built.
    pub fn new(config: &SignInConfig, oauth: Option<GitHubOAuth>) -> anyhow::Result<Self> {
        let github = match (&config.github, oauth) {
            (Some(c), Some(oauth)) => Some(GitHubSignInState {
                config: c.clone(),
                oauth,
            }),
            (Some(_), None) => anyhow::bail!(
                "sign_in.github is configured but the App's OAuth client is not: set GITHUB_CLIENT_ID and \
                 GITHUB_CLIENT_SECRET (the App's settings → Client ID, Generate a new client secret), \
                 or register the App from the set-up page, which stores them"
            ),
            (None, _) => None,
        };
        let access = config
            .cloudflare_access
            .clone()
            .map(AccessVerifier::new)
            .transpose()?;
        Ok(SignIn { github, access })
    }
}

/// What GitHub says about the person signing in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitHubIdentity {
    pub login: String,
    /// Organization logins.
    pub orgs: Vec<String>,
    /// Teams as `org/team-slug`.
    pub teams: Vec<String>,
}

/// The role the first matching rule grants `who`, or `None`.
pub fn github_role(rules: &[RoleRule], who: &GitHubIdentity) -> Option<Role> {
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    rules.iter().find_map(|rule| {
        let matched = rule.user.as_deref().is_some_and(|u| eq(u, &who.login))
            || rule
                .team
                .as_deref()
                .is_some_and(|t| who.teams.iter().any(|x| eq(x, t)))
            || rule
                .org
                .as_deref()
                .is_some_and(|o| who.orgs.iter().any(|x| eq(x, o)));
        matched.then(|| rule.role().ok()).flatten()
    })
}

/// The role the first matching rule grants an Access identity, or `None`.
pub fn access_role(rules: &[RoleRule], email: &str, groups: &[String]) -> Option<Role> {
    let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
    rules.iter().find_map(|rule| {
        let matched = rule
            .email
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case(email))
            || rule
                .email_domain
                .as_deref()
                .is_some_and(|d| !domain.is_empty() && d.eq_ignore_ascii_case(domain))
            || rule
                .group
                .as_deref()
                .is_some_and(|g| groups.iter().any(|x| x == g));
        matched.then(|| rule.role().ok()).flatten()
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for
/// query strings and form bodies).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A PKCE verifier (43 characters of base64url, 256 random bits) and its
/// S256 challenge (RFC 7636 §4.1–4.2).
pub fn pkce_pair() -> (String, String) {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).expect("the OS random source works");
    let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    (verifier.clone(), pkce_challenge(&verifier))
}

/// `BASE64URL(SHA256(verifier))`.
pub fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// GitHub's side of the sign-in: the authorize URL, the code exchange and
/// the three reads.
#[derive(Clone)]
pub struct GitHubOAuth {
    /// `https://github.com` (or the server's).
    pub web_url: String,
    /// The REST API.
    pub api_url: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// `{PUBLIC_URL}/auth/github/callback`.
    pub redirect_uri: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for GitHubOAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHubOAuth")
            .field("web_url", &self.web_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Deserialize)]
struct UserAnswer {
    login: String,
}

#[derive(Deserialize)]
struct OrgAnswer {
    login: String,
}

#[derive(Deserialize)]
struct TeamAnswer {
    slug: String,
    organization: OrgAnswer,
}

impl GitHubOAuth {
    /// # Errors
    /// No HTTP client can be built.
    pub fn new(
        web_url: &str,
        api_url: &str,
        client_id: String,
        client_secret: SecretString,
        public_url: &str,
    ) -> anyhow::Result<Self> {
        Ok(GitHubOAuth {
            web_url: web_url.trim_end_matches('/').to_owned(),
            api_url: api_url.trim_end_matches('/').to_owned(),
            client_id,
            client_secret,
            redirect_uri: format!("{}/auth/github/callback", public_url.trim_end_matches('/')),
            client: crate::agent::http_client_builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    /// Where to send the browser: GitHub's authorize page with `state` and
    /// the PKCE `challenge`.
    pub fn authorize_url(&self, state: &str, challenge: &str) -> String {
        let q = percent_encode;
        format!(
            "{}/login/oauth/authorize?client_id={}&redirect_uri={}&state={}&code_challenge={}&code_challenge_method=S256&allow_signup=false",
            self.web_url,
            q(&self.client_id),
            q(&self.redirect_uri),
            q(state),
            q(challenge)
        )
    }

    /// Exchanges `code` (with the PKCE `verifier`) for a user token, then
    /// reads who it belongs to, their organizations and teams.
    ///
    /// # Errors
    /// GitHub refuses the code or cannot be reached; the message is safe to
    /// show (it holds no secret).
    pub async fn identify(&self, code: &str, verifier: &str) -> anyhow::Result<GitHubIdentity> {
        let answer: TokenAnswer = self
            .client
            .post(format!("{}/login/oauth/access_token", self.web_url))
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                [
                    ("client_id", self.client_id.as_str()),
                    ("client_secret", self.client_secret.expose_secret()),
                    ("code", code),
                    ("redirect_uri", self.redirect_uri.as_str()),
                    ("code_verifier", verifier),
                ]
                .iter()
                .map(|(k, v)| format!("{k}={}", percent_encode(v)))
                .collect::<Vec<_>>()
                .join("&"),
            )
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach GitHub to finish the sign-in: {e}"))?
            .error_for_status()
            .map_err(|e| anyhow::anyhow!("GitHub refused the sign-in: {e}"))?
            .json()
            .await?;
        let Some(token) = answer.access_token else {
            anyhow::bail!(
                "GitHub refused the sign-in: {} ({})",
                answer.error.unwrap_or_else(|| "no token".into()),
                answer.error_description.unwrap_or_default()
            );
        };
        let token = SecretString::from(token);
        let get = |path: &str| {
            self.client
                .get(format!("{}{path}", self.api_url))
                .bearer_auth(token.expose_secret())
                .header("accept", "application/vnd.github+json")
                .header("x-github-api-version", "2022-11-28")
                .send()
        };
        let user: UserAnswer = get("/user").await?.error_for_status()?.json().await?;
        let orgs: Vec<OrgAnswer> = get("/user/orgs?per_page=100")
            .await?
            .error_for_status()?
            .json()
            .await?;
        let teams: Vec<TeamAnswer> = get("/user/teams?per_page=100")
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(GitHubIdentity {
            login: user.login,
            orgs: orgs.into_iter().map(|o| o.login).collect(),
            teams: teams
                .into_iter()
                .map(|t| format!("{}/{}", t.organization.login, t.slug))
                .collect(),
        })
    }
}

/// Cloudflare Access's signed header, checked against the team's keys.
pub struct AccessVerifier {
    config: AccessSignIn,
    certs_url: String,
    client: reqwest::Client,
    keys: tokio::sync::Mutex<KeyCache>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, octocrab::jsonwebtoken::DecodingKey>,
    fetched: Option<Instant>,
}

/// How often, at most, the key set is fetched again for an unknown `kid`
/// (Cloudflare rotates its keys every six weeks, publishing the next one
/// ahead).
const KEYS_REFRESH: Duration = Duration::from_secs(60);

/// The claims taskmaster reads from an Access token.
#[derive(Debug, Deserialize)]
struct AccessClaims {
    email: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    custom: Option<serde_json::Value>,
}

/// Who an Access token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessIdentity {
    pub email: String,
    pub role: Role,
}

impl AccessVerifier {
    /// # Errors
    /// No HTTP client can be built.
    pub fn new(config: AccessSignIn) -> anyhow::Result<Self> {
        let certs_url = config.certs_url.clone().unwrap_or_else(|| {
            format!(
                "{}/cdn-cgi/access/certs",
                config.team_domain.trim_end_matches('/')
            )
        });
        Ok(AccessVerifier {
            config,
            certs_url,
            client: crate::agent::http_client_builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            keys: tokio::sync::Mutex::new(KeyCache::default()),
        })
    }

    /// Verifies `jwt` (RS256, a key of the team's set by `kid`, issuer the
    /// team domain, audience the application's tag, not expired, 60 s
    /// leeway) and maps its e-mail and groups to a role.
    ///
    /// # Errors
    /// Why the token is refused (bad signature, issuer, audience, expiry,
    /// unknown key, or no rule grants a role); never the token itself.
    pub async fn verify(&self, jwt: &str) -> Result<AccessIdentity, String> {
        use octocrab::jsonwebtoken::{Algorithm, Validation, decode, decode_header};
        let header = decode_header(jwt).map_err(|e| format!("not a JWT: {e}"))?;
        if header.alg != Algorithm::RS256 {
            return Err(format!("algorithm {:?} refused (RS256 only)", header.alg));
        }
        let kid = header.kid.ok_or("the token names no key (kid)")?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[self.config.team_domain.trim_end_matches('/')]);
        validation.set_audience(&[self.config.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = 60;
        let data =
            decode::<AccessClaims>(jwt, &key, &validation).map_err(|e| format!("refused: {e}"))?;
        let email = data
            .claims
            .email
            .ok_or("the token carries no e-mail (a service token cannot use the dashboard)")?;
        let mut groups = data.claims.groups;
        if let Some(custom) = data.claims.custom
            && let Some(more) = custom.get("groups").and_then(|g| g.as_array())
        {
            groups.extend(more.iter().filter_map(|g| g.as_str().map(str::to_owned)));
        }
        let role = access_role(&self.config.roles, &email, &groups)
            .ok_or_else(|| format!("{email} matches no rule of sign_in.cloudflare_access.roles"))?;
        Ok(AccessIdentity { email, role })
    }

    async fn key(&self, kid: &str) -> Result<octocrab::jsonwebtoken::DecodingKey, String> {
        let mut cache = self.keys.lock().await;
        if let Some(key) = cache.keys.get(kid) {
            return Ok(key.clone());
        }
        if cache.fetched.is_some_and(|at| at.elapsed() < KEYS_REFRESH) {
            return Err(format!("unknown signing key {kid}"));
        }
        cache.fetched = Some(Instant::now());
        let set: octocrab::jsonwebtoken::jwk::JwkSet = self
            .client
            .get(&self.certs_url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| {
                format!(
                    "cannot fetch Cloudflare Access's keys from {}: {e}",
                    self.certs_url
                )
            })?
            .json()
            .await
            .map_err(|e| format!("Cloudflare Access's key set is not JWKS: {e}"))?;
        cache.keys = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let key = octocrab::jsonwebtoken::DecodingKey::from_jwk(jwk).ok()?;
                Some((kid, key))
            })
            .collect();
        cache
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| format!("unknown signing key {kid}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> RoleRule {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let rules = vec![
            rule("{ user: octocat, role: admin }"),
            rule("{ team: acme/platform, role: operator }"),
            rule("{ org: acme, role: viewer }"),
        ];
        let who = |login: &str, orgs: &[&str], teams: &[&str]| GitHubIdentity {
            login: login.into(),
            orgs: orgs.iter().map(|s| s.to_string()).collect(),
            teams: teams.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            github_role(&rules, &who("OctoCat", &[], &[])),
            Some(Role::Admin)
        );
        assert_eq!(
            github_role(&rules, &who("bob", &["acme"], &["acme/platform"])),
            Some(Role::Operator)
        );
        assert_eq!(
            github_role(&rules, &who("carol", &["acme"], &[])),
            Some(Role::Viewer)
        );
        assert_eq!(
            github_role(&rules, &who("mallory", &["evil"], &["evil/platform"])),
            None
        );
    }

    #[test]
    fn access_rules_match_email_domain_and_group() {
        let rules = vec![
            rule("{ email: alice@acme.com, role: admin }"),
            rule("{ group: platform, role: operator }"),
            rule("{ email_domain: acme.com, role: viewer }"),
        ];
        assert_eq!(
            access_role(&rules, "Alice@acme.com", &[]),
            Some(Role::Admin)
        );
        assert_eq!(
            access_role(&rules, "bob@elsewhere.org", &["platform".into()]),
            Some(Role::Operator)
        );
        assert_eq!(
            access_role(&rules, "carol@acme.com", &[]),
            Some(Role::Viewer)
        );
        assert_eq!(access_role(&rules, "eve@acme.com.evil.org", &[]), None);
    }

    #[test]
    fn bad_rules_are_named() {
        let config: SignInConfig = serde_saphyr::from_str(
            "github:\n  roles:\n    - { org: acme, role: viewer }\n    - { org: acme, team: acme/x, role: viewer }\n",
        )
        .unwrap();
        let e = config.validate().unwrap_err();
        assert!(e.contains("sign_in.github.roles[1]"), "{e}");
        let config: SignInConfig =
            serde_saphyr::from_str("github:\n  roles:\n    - { org: acme, role: boss }\n").unwrap();
        assert!(config.validate().unwrap_err().contains("boss"));
        let config: SignInConfig =
            serde_saphyr::from_str("github:\n  roles:\n    - { email: a@b.c, role: admin }\n")
                .unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("not a github subject")
        );
        let config: SignInConfig = serde_saphyr::from_str("github:\n  roles: []\n").unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("nobody could sign in")
        );
    }

    #[test]
    fn pkce_follows_rfc_7636() {
        // RFC 7636, appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let (verifier, challenge) = pkce_pair();
        assert_eq!(verifier.len(), 43);
        assert_eq!(challenge, pkce_challenge(&verifier));
    }
}
