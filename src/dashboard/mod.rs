//! The dashboard: server-rendered HTML pages over the same store and engine
//! as the operator API, with live updates over Server-Sent Events.
//!
//! | page | what |
//! | --- | --- |
//! | `/runs` | runs, newest first, filtered by repository, workflow, state and day; new runs appear live |
//! | `/runs/{id}` | a run (the check run's Details link): its DAG, attempts on a time axis, outputs, decisions, controls |
//! | `/agents` | each agent's health, circuit, load and track record |
//! | `/deliveries` | the webhook inbox, with a redeliver button for failed and ignored deliveries |
//! | `/tasks` | classified tasks with the evidence for each decision |
//! | `/login`, `/logout` | a session from an API token |
//! | `/auth/github`, `/auth/github/callback` | a session from signing in with GitHub ([`signin`]) |
//!
//! Pages are rendered with maud (HTML escaped at compile time: untrusted
//! text such as a PR title can never become markup). The only script,
//! `dashboard.js`, opens an `EventSource` and, when something changed,
//! fetches the page's live part again as HTML and swaps it in — the server
//! stays the one place that knows how to draw a run. Without script the
//! pages work, just not live.
//!
//! Access rules are in [`session`]; controls go through the same functions
//! as the API's (`api::workflows::control`), so they are audited the same way.

pub mod insights;
pub mod layout;
pub mod live;
pub mod pages;
pub mod run;
pub mod session;
pub mod signin;
pub mod signin_pages;
pub mod spend;

use axum::Router;
use axum::routing::{get, post};

use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
pub use session::SessionKey;

/// The dashboard's settings.
#[derive(Debug, Clone)]
pub struct DashboardSettings {
    /// Pages readable without logging in (`TASKMASTER_DASHBOARD_PUBLIC`).
    pub public: bool,
    /// Signs session cookies and CSRF tokens (`TASKMASTER_SESSION_KEY`; a
    /// random key when unset, so sessions end on restart).
    pub key: SessionKey,
    /// No GitHub App is configured yet: `/` leads to the set-up page.
    pub setup_pending: bool,
}

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct DashboardState {
    /// The API's state: store, engine, audit.
    pub api: ApiState,
    /// Settings.
    pub settings: std::sync::Arc<DashboardSettings>,
    /// The session key (from the settings).
    pub key: SessionKey,
    /// Ends every open SSE stream: the server's graceful shutdown waits for
    /// open responses, and an event stream never ends by itself.
    pub streams: CancellationToken,
    /// Sign-in with GitHub and Cloudflare Access, when configured.
    pub sign_in: std::sync::Arc<signin::SignIn>,
}

impl DashboardState {
    /// The dashboard over `api` with `settings`.
    pub fn new(api: ApiState, settings: DashboardSettings) -> Self {
        DashboardState {
            key: settings.key.clone(),
            api,
            settings: std::sync::Arc::new(settings),
            streams: CancellationToken::new(),
            sign_in: std::sync::Arc::new(signin::SignIn::default()),
        }
    }

    /// Offers the sign-in methods of `sign_in` besides token login.
    pub fn with_sign_in(mut self, sign_in: signin::SignIn) -> Self {
        self.sign_in = std::sync::Arc::new(sign_in);
        self
    }

    /// Cancel it before stopping the server: every live stream ends, so the
    /// graceful shutdown does not wait for browsers to close their pages.
    pub fn streams_token(&self) -> CancellationToken {
        self.streams.clone()
    }
}

/// Every dashboard route; merge it beside [`crate::api::service`].
pub fn router(state: DashboardState) -> Router {
    Router::new()
        .route("/", get(pages::home))
        .route("/runs", get(pages::runs))
        .route("/runs/events", get(live::runs_events))
        .route("/runs/{id}", get(run::page))
        .route("/runs/{id}/live", get(run::fragment))
        .route("/runs/{id}/events", get(live::run_events))
        .route("/runs/{id}/{op}", post(pages::control))
        .route("/agents", get(pages::agents))
        .route("/deliveries", get(pages::deliveries))
        .route("/deliveries/{id}/redeliver", post(pages::redeliver))
        .route("/tasks", get(pages::tasks))
        .route("/spend", get(spend::page))
        .route("/insights", get(insights::page))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/auth/github", get(signin_pages::start))
        .route("/auth/github/callback", get(signin_pages::callback))
        .route("/static/dashboard.css", get(layout::css))
        .route("/static/dashboard.js", get(layout::js))
        .with_state(state)
}
