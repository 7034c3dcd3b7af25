//! Secret redaction: the last gate before text is stored, logged or posted.
//!
//! Agents see repositories, environment variables and terminal screens, and
//! they echo what they see. Whatever an agent prints may end up in the
//! database, in the logs and in a pull-request comment that the whole world
//! can read, so every piece of agent output passes through a [`Redactor`]
//! first. Prompts pass through it too, on the way *to* the agent, so that a
//! token pasted into an issue is not handed on.
//!
//! Two kinds of secrets are recognised:
//!
//! * **Shapes** that are secrets wherever they appear:
//!   GitHub tokens (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_` and fine-grained
//!   `github_pat_`; see GitHub's "About authentication" docs, token formats),
//!   PEM private keys (`-----BEGIN … PRIVATE KEY-----` up to the matching end
//!   line, or to the end of the text when the end line was cut off), `Bearer …`
//!   credentials and the value of any `Authorization:` header line.
//! * **Values** the operator configured as secret (API keys handed to agents,
//!   the Codegen token, the webhook secret, …). They are replaced wherever they
//!   occur, whatever their shape. Values shorter than
//!   [`MIN_SECRET_LEN`] characters are ignored: redacting `"1"` would shred
//!   every output and protect nothing.
//!
//! Every replacement is a marker of the form `[REDACTED:<what>]`, so a reader
//! can tell that something was removed and of which kind, never what.

use std::sync::LazyLock;

use regex::Regex;

/// Configured secret values shorter than this many characters are not
/// redacted (see the module docs).
pub const MIN_SECRET_LEN: usize = 6;

struct Shape {
    pattern: Regex,
    replacement: &'static str,
}

static SHAPES: LazyLock<Vec<Shape>> = LazyLock::new(|| {
    let shape = |pattern: &str, replacement: &'static str| Shape {
        pattern: Regex::new(pattern).expect("redaction pattern compiles"),
        replacement,
    };
    vec![
        // PEM private keys first: their base64 body could otherwise be
        // mistaken for nothing at all and the header for a token.
        shape(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z)",
            "[REDACTED:private-key]",
        ),
        // Fine-grained personal access tokens: github_pat_<22>_<59>.
        shape(r"github_pat_[A-Za-z0-9_]{20,}", "[REDACTED:github-token]"),
        // Classic tokens: a three-letter prefix, `_`, 36 base62 characters
        // (older ghs_ tokens were longer; accept 20 or more). GitHub's new
        // installation tokens are `ghs_` and a ~520-character JWT-like
        // string with dots, dashes and underscores: taken whole.
        shape(
            r"gh[pousr]_[A-Za-z0-9][A-Za-z0-9_.\-]{19,}",
            "[REDACTED:github-token]",
        ),
        // `Authorization: <anything>` header lines, in any case, as curl -v
        // and HTTP debug logs print them. Keep the header name.
        shape(
            r"(?im)(authorization\s*[:=]\s*)[^\r\n]+",
            "${1}[REDACTED:authorization]",
        ),
        // `Bearer <token>` anywhere else (JSON, env dumps).
        shape(
            r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/]+=*",
            "${1}[REDACTED:bearer]",
        ),
    ]
});

/// Tokens this process minted (GitHub installation tokens), with when:
/// every [`Redactor`] hides them whatever their shape, for
/// [`MINTED_KEPT`] (they live an hour).
static MINTED: LazyLock<std::sync::Mutex<Vec<(String, std::time::Instant)>>> =
    LazyLock::new(Default::default);

/// How long a minted token stays registered.
pub const MINTED_KEPT: std::time::Duration = std::time::Duration::from_secs(2 * 60 * 60);

/// Registers a token this process just minted (see [`MINTED`]): from now
/// on no output, log line or comment shows it.
pub fn register_minted(token: &str) {
    if token.len() < MIN_SECRET_LEN {
        return;
    }
    let mut minted = MINTED.lock().unwrap_or_else(|e| e.into_inner());
    minted.retain(|(_, at)| at.elapsed() < MINTED_KEPT);
    if !minted.iter().any(|(t, _)| t == token) {
        minted.push((token.to_owned(), std::time::Instant::now()));
    }
}

/// Replaces every registered minted token in `out` (read under the lock,
/// nothing copied).
fn redact_minted(out: &mut String) {
    let minted = MINTED.lock().unwrap_or_else(|e| e.into_inner());
    for (token, at) in minted.iter() {
        if at.elapsed() < MINTED_KEPT && out.contains(token.as_str()) {
            *out = out.replace(token.as_str(), "[REDACTED:github-token]");
        }
    }
}

/// The password of a URL with credentials (`scheme://user:password@host/…`,
/// as `DATABASE_URL` holds one), if it has one.
pub fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// Replaces secrets in text; cheap to clone behind an `Arc` and shared by all
/// agents.
///
/// `Debug` never prints the configured values.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Configured secret values, longest first (so a secret that contains
    /// another is replaced whole).
    values: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("configured_values", &self.values.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor for the built-in shapes plus the given secret values.
    /// Empty, short (< [`MIN_SECRET_LEN`] characters) and duplicate values are
    /// dropped.
    pub fn new<I, S>(secret_values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut redactor = Self::default();
        for value in secret_values {
            redactor.add_secret(value);
        }
        redactor
    }

    /// Adds one more secret value (see [`Redactor::new`] for what is kept).
    pub fn add_secret(&mut self, value: impl Into<String>) {
        let value = value.into();
        let value = value.trim();
        if value.chars().count() < MIN_SECRET_LEN || self.values.iter().any(|v| v == value) {
            return;
        }
        self.values.push(value.to_owned());
        self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }

    /// How many configured values are redacted (not the values themselves).
    pub fn configured_values(&self) -> usize {
        self.values.len()
    }

    /// Returns `text` with every configured value and every known secret
    /// shape replaced by a `[REDACTED:…]` marker.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), "[REDACTED:secret]");
            }
        }
        redact_minted(&mut out);
        for shape in SHAPES.iter() {
            if let std::borrow::Cow::Owned(replaced) =
                shape.pattern.replace_all(&out, shape.replacement)
            {
                out = replaced;
            }
        }
        out
    }

    /// What kind of secret `text` contains, if any: `configured secret` for a
    /// configured value, else the marker name of the first shape that
    /// matches (`github-token`, `private-key`, `authorization`, `bearer`).
    pub fn secret_kind(&self, text: &str) -> Option<&'static str> {
        if self.values.iter().any(|v| text.contains(v.as_str())) {
            return Some("configured secret");
        }
        SHAPES.iter().find(|s| s.pattern.is_match(text)).map(|s| {
            s.replacement
                .rsplit(':')
                .next()
                .unwrap_or("secret")
                .trim_end_matches(']')
        })
    }

    /// Whether `text` contains anything [`Redactor::redact`] would replace.
    pub fn contains_secret(&self, text: &str) -> bool {
        self.values.iter().any(|v| text.contains(v.as_str()))
            || SHAPES.iter().any(|s| s.pattern.is_match(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_github_token_shape() {
        let r = Redactor::default();
        for prefix in ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] {
            let token = format!("{prefix}{}", "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8");
            let out = r.redact(&format!("token={token} end"));
            assert!(!out.contains(&token), "{out}");
            assert!(out.contains("[REDACTED:github-token]"), "{out}");
        }
        let pat = "github_pat_11ABCDEFG0123456789abc_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456";
        assert_eq!(r.redact(pat), "[REDACTED:github-token]");
    }

    #[test]
    fn new_installation_tokens_with_dots_and_dashes_are_taken_whole() {
        let r = Redactor::default();
        let jwtish = format!(
            "ghs_{}.{}.{}",
            "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9",
            "a".repeat(300) + "-_b",
            "c-d_e".repeat(30)
        );
        let text = format!("token={jwtish} done");
        assert_eq!(r.redact(&text), "token=[REDACTED:github-token] done");
        assert!(!r.redact(&text).contains("eyJ"));
    }

    #[test]
    fn minted_tokens_are_redacted_whatever_their_shape() {
        let odd = "v2.installation-token.Zq81_odd";
        assert_eq!(Redactor::default().redact(odd), odd, "unknown so far");
        register_minted(odd);
        assert_eq!(
            Redactor::default().redact(&format!("got {odd}!")),
            "got [REDACTED:github-token]!"
        );
    }

    #[test]
    fn a_urls_password() {
        assert_eq!(
            url_password("postgres://app:s3cret-pw@db:5432/tm?sslmode=require"),
            Some("s3cret-pw")
        );
        assert_eq!(url_password("postgres://app@db/tm"), None);
        assert_eq!(url_password("sqlite://taskmaster.db"), None);
    }

    #[test]
    fn words_that_merely_start_like_tokens_survive() {
        let r = Redactor::default();
        assert_eq!(
            r.redact("ghp_short and thoughts_"),
            "ghp_short and thoughts_"
        );
    }

    #[test]
    fn pem_keys_whole_and_cut() {
        let r = Redactor::default();
        let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nabc\n-----END RSA PRIVATE KEY-----";
        assert_eq!(
            r.redact(&format!("a\n{key}\nb")),
            "a\n[REDACTED:private-key]\nb"
        );
        let cut = "x -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk";
        assert_eq!(r.redact(cut), "x [REDACTED:private-key]");
        // Public material is not secret.
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
        assert_eq!(r.redact(cert), cert);
    }

    #[test]
    fn authorization_and_bearer() {
        let r = Redactor::default();
        let out = r.redact("> Authorization: token abc123\n{\"auth\":\"Bearer eyJhbGciOi.x-y_z\"}");
        assert!(
            !out.contains("abc123") && !out.contains("eyJhbGciOi"),
            "{out}"
        );
        assert!(
            out.contains("Authorization: [REDACTED:authorization]"),
            "{out}"
        );
        assert!(out.contains("Bearer [REDACTED:bearer]"), "{out}");
    }

    #[test]
    fn configured_values_longest_first_and_short_ones_ignored() {
        let r = Redactor::new(["sk-live-123456", "sk-live-123456-extended", "abc", ""]);
        assert_eq!(r.configured_values(), 2);
        assert_eq!(
            r.redact("a sk-live-123456-extended b sk-live-123456 c abc"),
            "a [REDACTED:secret] b [REDACTED:secret] c abc"
        );
        assert!(!format!("{r:?}").contains("sk-live"));
    }
}
