//! Task classification over realistic issue and PR texts written for the
//! test: urgent production bugs, feature requests with acceptance criteria,
//! refactors, vague one-liners, non-English text and empty bodies.

use taskmaster::classify::{
    Classification, Complexity, Priority, RiskFactor, Signal, TaskInput, TaskType, classify,
};

struct Case {
    title: &'static str,
    body: &'static str,
    labels: &'static [&'static str],
    branch: Option<&'static str>,
    task_type: TaskType,
    priority: Priority,
    criteria: &'static [&'static str],
}

const fn case(
    title: &'static str,
    body: &'static str,
    labels: &'static [&'static str],
    task_type: TaskType,
    priority: Priority,
    criteria: &'static [&'static str],
) -> Case {
    Case {
        title,
        body,
        labels,
        branch: None,
        task_type,
        priority,
        criteria,
    }
}

fn run(c: &Case) -> Classification {
    let labels: Vec<String> = c.labels.iter().map(|s| (*s).to_owned()).collect();
    classify(&TaskInput {
        title: c.title,
        body: c.body,
        labels: &labels,
        branch: c.branch,
    })
}

use Priority::*;
use TaskType::*;

const CASES: &[Case] = &[
    // --- urgent production bugs ---
    case(
        "Production is down: checkout returns 500 for all users",
        "Since the 14:02 deploy every checkout request fails with a 500 error.\n\
         Customers cannot pay. Logs show a panic in `PaymentService::charge`.",
        &[],
        Hotfix,
        Critical,
        &[],
    ),
    case(
        "Login broken after deploy",
        "Users get an error page when logging in. Started after today's release.",
        &["hotfix"],
        Hotfix,
        Critical,
        &[],
    ),
    case(
        "Data loss when saving drafts",
        "Saving a draft twice deletes the previous version. We are losing data in production.",
        &["bug", "P0"],
        Bugfix,
        Critical,
        &[],
    ),
    case(
        "[HOTFIX] API rate limiter blocks every request",
        "The limiter config was deployed with limit 0.",
        &[],
        Hotfix,
        Critical,
        &[],
    ),
    case(
        "SEV1: payments double-charged",
        "Incident in progress: customers are charged twice since 09:10. This is a bug in the retry loop.",
        &[],
        Hotfix,
        Critical,
        &[],
    ),
    // --- ordinary bugs ---
    case(
        "fix: crash when the config file is empty",
        "Running `taskmaster serve` with an empty config panics at startup.\n\n\
         ## Acceptance criteria\n\
         - An empty config file starts the service with defaults\n\
         - A warning is logged naming the file\n",
        &[],
        Bugfix,
        High,
        &[
            "An empty config file starts the service with defaults",
            "A warning is logged naming the file",
        ],
    ),
    case(
        "Typo in the README install section",
        "`cargo instal` should be `cargo install`.",
        &["bug"],
        Bugfix,
        Low,
        &[],
    ),
    case(
        "Date picker shows the wrong month in Safari",
        "Steps to reproduce:\n1. Open the form in Safari 17\n2. Click the date field\n\n\
         Expected: current month. Actual: previous month.",
        &["type: bug"],
        Bugfix,
        Medium,
        &[],
    ),
    case(
        "Export to CSV fails for reports with unicode names",
        "```\nError: invalid byte sequence at offset 12\n  at export.rs:88\n```\n\
         Happens with report names like \"Überblick\".",
        &[],
        Bugfix,
        Medium,
        &[],
    ),
    case(
        "Regression: search results no longer sorted by date",
        "This worked in 2.3 and broke in 2.4.",
        &[],
        Bugfix,
        High,
        &[],
    ),
    // --- features with acceptance criteria ---
    case(
        "feat: dark mode",
        "As a user I want a dark theme so that I can work at night.\n\n\
         ### Acceptance Criteria\n\
         - [ ] A toggle in the settings page switches the theme\n\
         - [ ] The choice is remembered across sessions\n\
         - [x] Colours meet WCAG AA contrast\n",
        &[],
        Feature,
        Medium,
        &[
            "A toggle in the settings page switches the theme",
            "The choice is remembered across sessions",
            "Colours meet WCAG AA contrast",
        ],
    ),
    case(
        "Support SSO login with Okta",
        "We need SAML single sign-on for enterprise customers.\n\n\
         **Acceptance criteria:**\n\
         1. Admins can upload the IdP metadata XML\n\
         2. Users are provisioned on first login\n\
         3. Existing password logins keep working\n",
        &["enhancement"],
        Feature,
        High,
        &[
            "Admins can upload the IdP metadata XML",
            "Users are provisioned on first login",
            "Existing password logins keep working",
        ],
    ),
    case(
        "Add a --json flag to the status command",
        "It would be great to script against `status`.\n\n\
         Definition of done\n\
         * `status --json` prints one JSON object\n\
         * the schema is documented in the README\n",
        &[],
        Feature,
        Medium,
        &[
            "`status --json` prints one JSON object",
            "the schema is documented in the README",
        ],
    ),
    case(
        "Webhook retries",
        "Allow configuring the number of webhook retries.\n\n\
         Acceptance criteria\n\
         Given a delivery fails\n\
         When retries are set to 3\n\
         Then it is attempted at most 3 times\n\n\
         ## Notes\n\
         - not in this release: per-hook settings\n",
        &["feature"],
        Feature,
        Medium,
        &[
            "Given a delivery fails",
            "When retries are set to 3",
            "Then it is attempted at most 3 times",
        ],
    ),
    case(
        "Bulk archive for projects",
        "- [ ] select many projects\n- [ ] archive them in one action\n- [ ] undo within 10 seconds\n",
        &["kind/feature", "priority: low"],
        Feature,
        Low,
        &[
            "select many projects",
            "archive them in one action",
            "undo within 10 seconds",
        ],
    ),
    // --- refactors ---
    case(
        "refactor: split the store module into sqlite and postgres files",
        "No behaviour change. The store module has grown to 2,000 lines.",
        &[],
        Refactor,
        Low,
        &[],
    ),
    case(
        "Clean up the duplicated retry logic",
        "The dispatcher and the outbox each implement backoff. Extract one helper and deduplicate.",
        &[],
        Refactor,
        Low,
        &[],
    ),
    case(
        "Pay down tech debt in the config loader",
        "Simplify parsing and rename the confusing `cfg2` struct.",
        &["tech-debt"],
        Refactor,
        Low,
        &[],
    ),
    // --- experiments ---
    case(
        "Spike: evaluate whether sqlite WAL2 helps write throughput",
        "Prototype behind a feature flag and measure.",
        &[],
        Experimental,
        Low,
        &[],
    ),
    case(
        "Try out streaming agent output",
        "A proof of concept for streaming partial results to the check run.",
        &["experiment"],
        Experimental,
        Low,
        &[],
    ),
    // --- vague one-liners and empty bodies ---
    case("it doesn't work", "", &[], Bugfix, Medium, &[]),
    case("Question about the docs", "", &[], Default, Medium, &[]),
    case("", "", &[], Default, Medium, &[]),
    case("???", "   \n\n  ", &[], Default, Medium, &[]),
    case("Make it faster", "", &[], Default, Medium, &[]),
    case(
        "docs: clarify the install steps",
        "",
        &[],
        Default,
        Medium,
        &[],
    ),
    // --- non-English text ---
    case(
        "Absturz beim Speichern der Einstellungen",
        "Die App stürzt ab, wenn ich die Einstellungen speichere. Fehler: NullPointerException.",
        &[],
        Bugfix,
        Medium,
        &[],
    ),
    case(
        "Erreur lors de l'export PDF",
        "L'export PDF produit une erreur pour les documents de plus de 100 pages.",
        &[],
        Bugfix,
        Medium,
        &[],
    ),
    case(
        "ログイン時にエラーが発生する",
        "本番環境でログインするとエラーになります。緊急です。",
        &[],
        Bugfix,
        Critical,
        &[],
    ),
    case(
        "Agregar soporte para exportar a Excel",
        "Sería útil poder exportar los informes.\n\n\
         Criterios de aceptación:\n\
         - exporta todas las columnas\n\
         - respeta los filtros activos\n",
        &[],
        Feature,
        Medium,
        &["exporta todas las columnas", "respeta los filtros activos"],
    ),
    case(
        "保存时程序崩溃",
        "点击保存按钮后程序崩溃。",
        &[],
        Bugfix,
        Medium,
        &[],
    ),
    // --- labels beat words, code and quotes do not vote ---
    case(
        "Add retry to the uploader",
        "Uploads crash on flaky networks.",
        &["refactor"],
        Refactor,
        High,
        &[],
    ),
    case(
        "Improve onboarding copy",
        "> Someone wrote: production is down, urgent!!!\n\nThat quote is old; this is about wording.",
        &[],
        Default,
        Low,
        &[],
    ),
    case(
        "Update the PR template",
        "Checklist for contributors:\n\n```markdown\n- [ ] tests added\n```\n",
        &[],
        Default,
        Medium,
        &[],
    ),
];

#[test]
fn thirty_realistic_texts_get_type_priority_and_criteria() {
    assert!(CASES.len() >= 30, "{} cases", CASES.len());
    let mut failures = Vec::new();
    for c in CASES {
        let got = run(c);
        let criteria: Vec<&str> = got
            .acceptance_criteria
            .iter()
            .map(|x| x.text.as_str())
            .collect();
        if got.task_type != c.task_type || got.priority != c.priority || criteria != c.criteria {
            failures.push(format!(
                "{:?}: got {:?}/{:?} {:?}, want {:?}/{:?} {:?}\n  evidence: {:#?}",
                c.title,
                got.task_type,
                got.priority,
                criteria,
                c.task_type,
                c.priority,
                c.criteria,
                got.evidence
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_decision_has_evidence() {
    for c in CASES {
        let got = run(c);
        for field in ["task_type", "priority", "complexity"] {
            assert!(
                got.evidence.iter().any(|e| e.field == field),
                "{:?}: no {field} evidence",
                c.title
            );
        }
        if !got.acceptance_criteria.is_empty() {
            assert!(
                got.evidence
                    .iter()
                    .any(|e| e.field == "acceptance_criteria")
            );
        }
        assert!(
            got.evidence.iter().filter(|e| e.field == "risk").count() >= got.risks.len(),
            "{:?}: every risk has evidence",
            c.title
        );
        assert_eq!(got.classifier, "rules/v1");
    }
}

#[test]
fn explicit_signals_are_ranked_label_branch_title() {
    let labels = vec!["enhancement".to_owned()];
    let got = classify(&TaskInput {
        title: "fix: typo",
        body: "",
        labels: &labels,
        branch: Some("hotfix/x"),
    });
    assert_eq!(
        (got.task_type, got.task_type_signal),
        (Feature, Signal::Label)
    );
    let got = classify(&TaskInput {
        title: "fix: typo",
        body: "",
        labels: &[],
        branch: Some("hotfix/x"),
    });
    assert_eq!(
        (got.task_type, got.task_type_signal),
        (Hotfix, Signal::Branch)
    );
    let got = classify(&TaskInput {
        title: "fix: typo",
        body: "",
        labels: &[],
        branch: Some("main"),
    });
    assert_eq!(
        (got.task_type, got.task_type_signal),
        (Bugfix, Signal::TitlePrefix)
    );
    let got = classify(&TaskInput {
        title: "crash on start",
        ..TaskInput::default()
    });
    assert_eq!(
        (got.task_type, got.task_type_signal),
        (Bugfix, Signal::Keywords)
    );
    assert!(!Signal::Keywords.is_explicit());
}

#[test]
fn risks_and_complexity() {
    let got = classify(&TaskInput {
        title: "feat!: migrate user ids to UUIDs",
        body: "Breaking change for API clients. Needs a schema change, a backfill and a \
               deploy to production. Also fixes a SQL injection in the search endpoint. \
               This touches the architecture across multiple services.",
        ..TaskInput::default()
    });
    assert_eq!(
        got.risks,
        [
            RiskFactor::Production,
            RiskFactor::Security,
            RiskFactor::DataMigration,
            RiskFactor::BreakingChange
        ]
    );
    assert_eq!(got.complexity, Complexity::Large);
    let got = classify(&TaskInput {
        title: "Fix typo in error message",
        body: "One-line change.",
        ..TaskInput::default()
    });
    assert_eq!(got.complexity, Complexity::Small);
    assert!(got.risks.is_empty());
    let got = classify(&TaskInput {
        title: "Race condition in the lease renewal",
        body: "Two dispatchers can both think they own a delivery; a deadlock follows under load.",
        ..TaskInput::default()
    });
    assert!(got.risks.contains(&RiskFactor::Concurrency));
}

#[test]
fn classification_serialises_for_storage_and_templates() {
    let got = run(&CASES[10]);
    let json = serde_json::to_value(&got).unwrap();
    assert_eq!(json["task_type"], "feature");
    assert_eq!(json["priority"], "medium");
    assert_eq!(json["task_type_signal"], "title_prefix");
    assert_eq!(json["acceptance_criteria"][2]["done"], true);
    let back: Classification = serde_json::from_value(json).unwrap();
    assert_eq!(back, got);
}

#[test]
fn huge_and_hostile_bodies_are_handled() {
    let body = format!("{}\n- [ ] {{{{ 7*7 }}}}\n", "word ".repeat(200_000));
    let got = classify(&TaskInput {
        title: "{% raw %}",
        body: &body,
        ..TaskInput::default()
    });
    assert_eq!(got.acceptance_criteria[0].text, "{{ 7*7 }}");
    assert_eq!(got.complexity, Complexity::Large);
}
