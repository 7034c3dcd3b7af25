//! The environment an agent process gets: an allow-list, never inherited.
//!
//! taskmaster itself holds GitHub write credentials (the App's private key,
//! installation tokens, the webhook secret). An agent CLI or a command runs
//! code from the repository under review, so anything in its environment
//! must be assumed stolen. Child processes therefore start from an *empty*
//! environment (`env_clear`) and get only:
//!
//! * [`BASE_ALLOW`]: what programs need to run at all (`PATH`, `HOME`, locale…),
//! * the variables the agent's configuration allows by name (its own API key),
//! * values set explicitly in the configuration or by the step.
//!
//! Names in [`DENY`], and any name that looks like a GitHub credential
//! (contains `GITHUB` or starts with `GH_`, and mentions a token, key,
//! secret or password), are refused even when allowed or set explicitly, and
//! a value that has the shape of a GitHub token is dropped whatever its name.

use std::collections::BTreeMap;

/// Variables every child process gets from taskmaster's own environment,
/// when set there.
pub const BASE_ALLOW: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "TERM",
];

/// Variables never passed to an agent, whatever the configuration says:
/// GitHub write credentials and taskmaster's own secrets.
pub const DENY: &[&str] = &[
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "GH_ENTERPRISE_TOKEN",
    "GITHUB_ENTERPRISE_TOKEN",
    "GITHUB_PAT",
    "GITHUB_PRIVATE_KEY",
    "GITHUB_APP_PRIVATE_KEY",
    "GITHUB_APP_KEY",
    "GITHUB_WEBHOOK_SECRET",
    "GITHUB_CLIENT_SECRET",
    "DATABASE_URL",
    "CODEGEN_API_TOKEN",
    "TASKMASTER_API_TOKEN",
    "TASKMASTER_SESSION_KEY",
];

/// Whether `name` may never be given to an agent (see the module docs).
pub fn is_denied(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    if DENY.contains(&upper.as_str()) {
        return true;
    }
    let githubish = upper.contains("GITHUB") || upper.starts_with("GH_");
    let secretish = ["TOKEN", "KEY", "SECRET", "PASSWORD", "PAT", "CREDENTIAL"]
        .iter()
        .any(|w| upper.contains(w));
    githubish && secretish
}

/// Whether `value` has the shape of a GitHub token.
fn looks_like_github_token(value: &str) -> bool {
    let v = value.trim();
    v.starts_with("github_pat_")
        || (v.len() >= 24
            && ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]
                .iter()
                .any(|p| v.starts_with(p)))
}

/// Builds the environment of one agent process.
///
/// `lookup` reads taskmaster's own environment (injected, so tests need not
/// mutate the process environment). `allow` names extra variables to copy
/// from it; `set` gives explicit values. Returns the variables to set after
/// `env_clear()`, and the names that were refused (for a note in the output).
pub fn build(
    lookup: &dyn Fn(&str) -> Option<String>,
    allow: &[String],
    set: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut env = BTreeMap::new();
    let mut refused = Vec::new();
    let names = BASE_ALLOW
        .iter()
        .map(|s| s.to_string())
        .chain(allow.iter().cloned());
    for name in names {
        if let Some(value) = lookup(&name) {
            env.insert(name, value);
        }
    }
    for (name, value) in set {
        env.insert(name.clone(), value.clone());
    }
    env.retain(|name, value| {
        let keep = !is_denied(name) && !looks_like_github_token(value);
        if !keep {
            refused.push(name.clone());
        }
        keep
    });
    (env, refused)
}

/// Reads taskmaster's own environment; the usual `lookup` for [`build`].
pub fn process_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_credentials_never_pass() {
        let host: BTreeMap<&str, &str> = [
            ("PATH", "/usr/bin"),
            ("GITHUB_TOKEN", "ghs_x"),
            ("GH_TOKEN", "x"),
            ("MY_GITHUB_APP_KEY", "x"),
            ("ANTHROPIC_API_KEY", "sk-ant"),
            ("SNEAKY", "ghp_0123456789012345678901234567890123"),
        ]
        .into();
        let lookup = |n: &str| host.get(n).map(|v| v.to_string());
        let allow: Vec<String> = [
            "GITHUB_TOKEN",
            "GH_TOKEN",
            "MY_GITHUB_APP_KEY",
            "ANTHROPIC_API_KEY",
            "SNEAKY",
        ]
        .map(String::from)
        .to_vec();
        let set = BTreeMap::from([("GITHUB_WEBHOOK_SECRET".to_string(), "s".to_string())]);
        let (env, refused) = build(&lookup, &allow, &set);
        assert_eq!(
            env.keys().collect::<Vec<_>>(),
            vec!["ANTHROPIC_API_KEY", "PATH"]
        );
        assert_eq!(refused.len(), 5, "{refused:?}");
    }

    #[test]
    fn ordinary_names_are_not_denied() {
        assert!(!is_denied("CARGO_HOME"));
        assert!(!is_denied("GITHUB_ACTIONS"));
        assert!(is_denied("github_token"));
    }
}
