//! The page shell every dashboard page shares (navigation, who is logged
//! in, the live-announcement region), the embedded stylesheet and script,
//! and small formatting helpers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::session::Session;

const CSS: &str = include_str!("assets/dashboard.css");
const JS: &str = include_str!("assets/dashboard.js");

/// The content security policy of every page: nothing inline, nothing from
/// elsewhere, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// `GET /static/dashboard.css`.
pub async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

/// `GET /static/dashboard.js`.
pub async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The sections of the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Runs,
    Agents,
    Deliveries,
    Tasks,
    Spend,
    Insights,
    None,
}

/// A whole page: `title` (already plain text), the session (for the
/// logout button), the active section and the content.
pub fn page(title: &str, session: Option<&Session>, nav: Nav, content: Markup) -> Markup {
    let item = |href: &str, label: &str, this: Nav| {
        html! {
            @if nav == this { a href=(href) aria-current="page" { (label) } }
            @else { a href=(href) { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · taskmaster" }
                link rel="stylesheet" href="/static/dashboard.css";
                // No favicon request (and no 404 in the console).
                link rel="icon" href="data:,";
                script src="/static/dashboard.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    nav aria-label="Main" {
                        a.brand href="/runs" { "taskmaster" }
                        (item("/runs", "Runs", Nav::Runs))
                        (item("/agents", "Agents", Nav::Agents))
                        (item("/deliveries", "Deliveries", Nav::Deliveries))
                        (item("/tasks", "Tasks", Nav::Tasks))
                        (item("/spend", "Spend", Nav::Spend))
                        (item("/insights", "Insights", Nav::Insights))
                    }
                    div.who {
                        @if let Some(s) = session {
                            span { (s.caller.name) " (" (s.caller.role.as_str()) ")" }
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button type="submit" { "Log out" }
                            }
                        } @else {
                            a href="/login" { "Log in" }
                        }
                    }
                }
                main #main { (content) }
                div #announce .sr-only role="status" aria-live="polite" {}
            }
        }
    }
}

/// An HTML answer with the dashboard's security headers.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut r = (status, markup.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An epoch-ms instant as `<time>` in UTC.
pub fn time(ms: i64) -> Markup {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => html! {
            time datetime=(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) {
                (t.format("%Y-%m-%d %H:%M:%S UTC"))
            }
        },
        None => html! { "—" },
    }
}

/// A duration in ms for people: `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{} min {:02} s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{} h {:02} min", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// A state as a badge: text for everyone, colour as a second cue.
pub fn badge(state: &str) -> Markup {
    html! { span class={ "badge s-" (state) } { (state.replace('_', " ")) } }
}

/// A stable colour index (0-7) for an agent's name.
pub fn agent_colour(agent: &str) -> usize {
    // FNV-1a: stable across processes (unlike `DefaultHasher`).
    let mut h: u32 = 0x811c_9dc5;
    for b in agent.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % 8) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_345), "12.3 s");
        assert_eq!(duration(245_000), "4 min 05 s");
        assert_eq!(duration(7_380_000), "2 h 03 min");
    }
}
