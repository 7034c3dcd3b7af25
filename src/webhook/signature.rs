//! Webhook signature verification (`X-Hub-Signature-256`).
//!
//! GitHub signs the raw request body with HMAC-SHA256 keyed by the webhook
//! secret and sends `sha256=` followed by the lowercase hex digest
//! (<https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries>).
//! We check the raw bytes **before** parsing anything, and compare in constant
//! time (`hmac`'s `verify_slice`). The legacy SHA-1 `X-Hub-Signature` header is
//! ignored.
//!
//! Several secrets may be configured at once: a delivery signed with any of
//! them is accepted, so a secret can be rotated without losing events (the way
//! @octokit/webhooks' `additionalSecrets` and Prow's HMAC list do it).

use std::fmt;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The configured webhook secrets, at least one. Never printed: `Debug` shows
/// only how many there are.
#[derive(Clone)]
pub struct WebhookSecrets {
    secrets: Vec<SecretString>,
    /// One keyed HMAC state per secret, cloned per request so the key schedule
    /// is not recomputed on the hot path.
    keyed: Vec<HmacSha256>,
}

impl WebhookSecrets {
    /// Builds the set from secret strings. Errors if the list is empty or a
    /// secret is empty.
    pub fn new(secrets: Vec<SecretString>) -> Result<Self, String> {
        if secrets.is_empty() {
            return Err("no webhook secret given".into());
        }
        if secrets.iter().any(|s| s.expose_secret().is_empty()) {
            return Err("a webhook secret is empty".into());
        }
        let keyed = secrets
            .iter()
            .map(|s| {
                HmacSha256::new_from_slice(s.expose_secret().as_bytes())
                    .expect("HMAC accepts keys of any length")
            })
            .collect();
        Ok(WebhookSecrets { secrets, keyed })
    }

    /// `X-Hub-Signature-256` for `body` under the first secret (the current
    /// one during a rotation), as GitHub computes it: `sha256=<hex>`.
    pub fn sign_first(&self, body: &[u8]) -> String {
        sign(self.secrets[0].expose_secret(), body)
    }

    /// Parses `GITHUB_WEBHOOK_SECRET`: one secret, or several separated by
    /// commas (surrounding spaces trimmed). Used as clap's value parser.
    pub fn parse(value: &str) -> Result<Self, String> {
        let secrets: Vec<SecretString> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| SecretString::from(s.to_owned()))
            .collect();
        Self::new(secrets).map_err(|e| {
            format!("{e}: set GITHUB_WEBHOOK_SECRET to the secret of your GitHub App's webhook")
        })
    }

    /// Each secret's value, for the redactor only (every rotated secret is
    /// redacted on its own, not just the comma-joined setting).
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.secrets.iter().map(|s| s.expose_secret())
    }

    /// How many secrets are configured.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Always false: the constructor refuses an empty set.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// Verifies `header` (the value of `X-Hub-Signature-256`, if sent) against
    /// `body` with every configured secret.
    ///
    /// Errors: [`SignatureError::Missing`] without a header,
    /// [`SignatureError::Malformed`] when it is not `sha256=` + 64 hex digits,
    /// [`SignatureError::Mismatch`] when no secret produces it.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let hex_digest = header
            .strip_prefix(b"sha256=")
            .ok_or(SignatureError::Malformed)?;
        let mut expected = [0u8; 32];
        hex::decode_to_slice(hex_digest, &mut expected).map_err(|_| SignatureError::Malformed)?;
        for key in &self.keyed {
            let mut mac = key.clone();
            mac.update(body);
            if mac.verify_slice(&expected).is_ok() {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }
}

impl fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookSecrets([REDACTED; {}])", self.secrets.len())
    }
}

/// Why a delivery's signature was refused. Each message is one line, safe to
/// return to the sender (it reveals nothing about the secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("malformed X-Hub-Signature-256 header: expected sha256=<64 hex digits>")]
    Malformed,
    #[error("X-Hub-Signature-256 does not match the payload for any configured secret")]
    Mismatch,
}

/// Computes the `X-Hub-Signature-256` header value for `body` under `secret`:
/// `sha256=` + lowercase hex. Used by tests, benchmarks and `taskmaster deliver`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector from GitHub's "Validating webhook deliveries" page.
    const GITHUB_SECRET: &str = "It's a Secret to Everybody";
    const GITHUB_PAYLOAD: &[u8] = b"Hello, World!";
    const GITHUB_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_documented_test_vector() {
        assert_eq!(sign(GITHUB_SECRET, GITHUB_PAYLOAD), GITHUB_SIGNATURE);
        let secrets = WebhookSecrets::parse(GITHUB_SECRET).unwrap();
        assert_eq!(
            secrets.verify(Some(GITHUB_SIGNATURE.as_bytes()), GITHUB_PAYLOAD),
            Ok(())
        );
    }

    #[test]
    fn refuses_missing_malformed_and_wrong() {
        let secrets = WebhookSecrets::parse(GITHUB_SECRET).unwrap();
        assert_eq!(
            secrets.verify(None, GITHUB_PAYLOAD),
            Err(SignatureError::Missing)
        );
        for bad in [
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=757107",
            "sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=",
        ] {
            assert_eq!(
                secrets.verify(Some(bad.as_bytes()), GITHUB_PAYLOAD),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            secrets.verify(Some(GITHUB_SIGNATURE.as_bytes()), b"Hello, World?"),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_of_several_secrets_is_accepted() {
        let secrets = WebhookSecrets::parse("old-secret, new-secret").unwrap();
        assert_eq!(secrets.len(), 2);
        for secret in ["old-secret", "new-secret"] {
            let sig = sign(secret, b"{}");
            assert_eq!(secrets.verify(Some(sig.as_bytes()), b"{}"), Ok(()));
        }
        let sig = sign("other", b"{}");
        assert_eq!(
            secrets.verify(Some(sig.as_bytes()), b"{}"),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn empty_secret_lists_are_refused_and_debug_hides_secrets() {
        assert!(WebhookSecrets::parse("").is_err());
        assert!(WebhookSecrets::parse(" , ").is_err());
        let secrets = WebhookSecrets::parse("hunter2").unwrap();
        let shown = format!("{secrets:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
