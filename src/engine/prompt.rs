//! A step's prompt and `with:` inputs rendered for an attempt ([`render`]),
//! and the run's event they read ([`event`], cached by delivery).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Engine;
use crate::classify::Classification;
use crate::event::Event;
use crate::store::RunId;
use crate::workflow::template::StepResult;
use crate::workflow::{PromptContext, Step, Workflow};

/// The prompt and `with:` inputs of a step, rendered against the run's
/// event, its workspace and the outputs of the steps before it. `snapshot`:
/// the run as read for this attempt (read here when `None`).
pub(super) async fn render(
    engine: &Engine,
    wf: &Workflow,
    def: &Step,
    run_id: i64,
    delivery_id: &str,
    workspace: Option<&crate::workspace::Workspace>,
    snapshot: Option<crate::store::RunSnapshot>,
) -> Result<(String, serde_json::Map<String, serde_json::Value>), String> {
    let store = &engine.inner.store;
    let snapshot = match snapshot {
        Some(s) => s,
        None => store
            .run(RunId(run_id))
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the run is gone")?,
    };
    let classification: Option<Classification> = snapshot
        .run
        .classification
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok());
    // What the run was made from, as stored with it (`NewRun::context`):
    // a `/run`, a Re-run or a button run carries the pull request it is
    // about although its own delivery is a comment or a check run (or has
    // no row at all). Runs stored before the context held it: the event.
    let stored = serde_json::from_value::<PromptContext>(snapshot.run.context.clone())
        .ok()
        .filter(|c| !c.repository.is_empty() || c.pr.is_some() || c.issue.is_some());
    let mut ctx = match stored {
        Some(mut c) => {
            c.workflow = wf.name.clone();
            c.task = classification;
            c.steps.clear();
            c
        }
        None => match event(engine, delivery_id).await {
            Some(event) => PromptContext::from_event(&event, &wf.name, classification),
            None => PromptContext {
                workflow: wf.name.clone(),
                task: classification,
                ..PromptContext::default()
            },
        },
    };
    // The values the run was created with (a repository's
    // `.github/taskmaster.yml` may set them), else the defaults.
    let configured: BTreeMap<String, String> = snapshot
        .run
        .context
        .get("inputs")
        .and_then(|v| v.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    ctx.inputs = wf.input_values(&configured);
    if let Some(ws) = workspace {
        ctx.workspace = Some(crate::workflow::template::WorkspaceInfo {
            path: ws.path.display().to_string(),
            sha: ws.sha.clone(),
        });
        if let Some(pr) = ctx.pr.as_mut() {
            pr.diff = ws.diff.clone();
            pr.files = ws.files.clone();
        }
    }
    for s in &snapshot.steps {
        if s.state.is_terminal() {
            ctx.steps.insert(
                s.step.clone(),
                StepResult {
                    outcome: s.state.outcome().to_owned(),
                    output: s.output.clone().unwrap_or_default(),
                },
            );
        }
    }
    let set = &engine.inner.workflows;
    let prompt = if def.prompt.is_some() {
        set.render_prompt(&wf.name, &def.id, &ctx)
            .map_err(|e| e.to_string())?
    } else {
        String::new()
    };
    let with: serde_json::Map<String, serde_json::Value> = if def.with.is_empty() {
        serde_json::Map::new()
    } else {
        set.render_with(&wf.name, &def.id, &ctx)
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect()
    };
    Ok((prompt, with))
}

/// The delivery's parsed event, from the engine's cache or the store
/// (`None`: the delivery is gone or its payload does not parse).
pub(super) async fn event(engine: &Engine, delivery_id: &str) -> Option<Arc<Event>> {
    // Runs started by a button on a check suite are keyed `<delivery>#<run>`
    // (one delivery, several runs): their event is the delivery's.
    let delivery_id = delivery_id.split('#').next().unwrap_or(delivery_id);
    let cache = &engine.inner.events_cache;
    if let Some(event) = cache.lock().expect("event cache lock").get(delivery_id) {
        return Some(event);
    }
    let delivery = engine
        .inner
        .store
        .delivery(delivery_id)
        .await
        .ok()
        .flatten()?;
    let event = Arc::new(Event::parse(&delivery.event, &delivery.payload).ok()?);
    cache
        .lock()
        .expect("event cache lock")
        .insert(delivery_id, event.clone());
    Some(event)
}
