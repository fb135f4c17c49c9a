//! `GET /badge/{app}.svg?branch=main`: the status of an app's newest run (of a branch), as a
//! shields-style SVG. Anyone sees it when the app says `badge = "public"`; otherwise only a
//! signed-in viewer who reaches the app, and anyone else gets 404, as for a page.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::MaybeViewer;
use super::{ConsoleError, Result};
use crate::Shared;
use crate::store::{RunFilter, RunSearch, RunStatus};

#[derive(Deserialize)]
pub(super) struct BadgeQuery {
    branch: Option<String>,
}

pub(super) async fn badge(
    State(s): State<Arc<Shared>>,
    MaybeViewer(viewer): MaybeViewer,
    Path(file): Path<String>,
    Query(q): Query<BadgeQuery>,
) -> Result<Response> {
    let app = file.strip_suffix(".svg").ok_or(ConsoleError::NotFound)?;
    let public = s.config.console.public_badges.contains(app);
    if !s.config.apps.contains_key(app) || !(public || viewer.is_some_and(|v| v.scope.allows(app))) {
        return Err(ConsoleError::NotFound);
    }
    let git_ref = q.branch.map(|b| if b.starts_with("refs/") { b } else { format!("refs/heads/{b}") });
    let f = RunFilter { app: Some(app.to_string()), limit: Some(1), ..RunFilter::default() };
    let latest = s.store.search_runs(&f, &RunSearch { git_ref, trigger: None })?.into_iter().next();
    let svg = render(app, latest.map(|r| r.status));
    let cache = if public { "public, max-age=60" } else { "private, no-cache" };
    Ok(([(header::CONTENT_TYPE, "image/svg+xml"), (header::CACHE_CONTROL, cache)], svg).into_response())
}

/// The badge: `skiff | passing`, the right half coloured by the status.
pub fn render(label: &str, status: Option<RunStatus>) -> String {
    let (text, colour) = match status {
        Some(RunStatus::Success) => ("passing", "#2e7d32"),
        Some(RunStatus::Failure) => ("failing", "#c62828"),
        Some(RunStatus::Running) => ("running", "#1565c0"),
        Some(other) => (other.as_str(), "#6a6a6a"),
        None => ("no runs", "#6a6a6a"),
    };
    // About 7 px a character in 11 px Verdana, as shields measures roughly.
    let w = |s: &str| 10 + 7 * s.chars().count();
    let (lw, rw) = (w(label), w(text));
    let mut esc = String::new();
    super::escape(label, &mut esc);
    let total = lw + rw;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" aria-label="{esc}: {text}"><title>{esc}: {text}</title><linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient><clipPath id="r"><rect width="{total}" height="20" rx="3" fill="#fff"/></clipPath><g clip-path="url(#r)"><rect width="{lw}" height="20" fill="#555"/><rect x="{lw}" width="{rw}" height="20" fill="{colour}"/><rect width="{total}" height="20" fill="url(#s)"/></g><g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" font-size="11"><text x="{lx}" y="14">{esc}</text><text x="{rx}" y="14">{text}</text></g></svg>"##,
        lx = lw / 2,
        rx = lw + rw / 2,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn badge_says_the_status() {
        let svg = render("web", Some(RunStatus::Failure));
        assert!(svg.starts_with("<svg") && svg.contains(">failing<") && svg.contains("#c62828"));
        assert!(render("a<b", None).contains("a&lt;b"));
    }
}
