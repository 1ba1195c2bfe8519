//! Which model serves which agent: [`Models`], the providers of the process (the primary, per-agent overrides
//! from `[llm.agents.<agent>]`, the opt-in cloud fallback and the budget's downgrade model), and
//! [`TaskModels`], what one task calls: those under the task's budget and fallback policy, with a replay's
//! or fork's source recording answering first ([`Replay`]).
//!
//! The policy itself is carried out by the recorded call (`llm::recorded`), which asks [`TaskModels`] which
//! provider is next and tells it what happened (a fallback, a downgrade, a pause, a divergence).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::budget::{Budget, Limits};
use super::confirm::Confirmations;
use super::divergence::{compare, Divergence, RequestPrint};
use super::replay::ReplayProvider;
use super::{LlmOutput, LlmProvider};
use crate::config::{FallbackMode, OnExceed};
use crate::domain::replay::replayed_in_fork;
use crate::domain::{AgentKind, OnDivergence, TaskId};

/// A provider and its model, as events and `GET /api/v1/agents` show them.
pub fn named(provider: &Arc<dyn LlmProvider>) -> serde_json::Value {
    json!({ "provider": provider.provider_name(), "model": provider.model_name() })
}

/// The process's providers.
#[derive(Clone)]
pub struct Models {
    primary: Arc<dyn LlmProvider>,
    agents: BTreeMap<AgentKind, Arc<dyn LlmProvider>>,
    fallback: Option<Arc<dyn LlmProvider>>,
    downgrade: Option<Arc<dyn LlmProvider>>,
    /// The named models a task may run on (`[llm.models.<name>]`).
    named: BTreeMap<String, Arc<dyn LlmProvider>>,
}

impl Models {
    /// One provider for every agent, no fallback, no downgrade.
    pub fn single(primary: Arc<dyn LlmProvider>) -> Self {
        Models {
            primary,
            agents: BTreeMap::new(),
            fallback: None,
            downgrade: None,
            named: BTreeMap::new(),
        }
    }

    /// The named models a task may pick (`options.model`).
    pub fn with_named(mut self, named: BTreeMap<String, Arc<dyn LlmProvider>>) -> Self {
        self.named = named;
        self
    }

    /// The names of the models a task may pick, in order.
    pub fn names(&self) -> Vec<String> {
        self.named.keys().cloned().collect()
    }

    /// The models of a task that picked the named model `name`: it serves every agent (the agents' own
    /// models give way to it); the fallback and the downgrade stay. `None` when no model has that name.
    pub fn picking(&self, name: &str) -> Option<Models> {
        let chosen = self.named.get(name)?;
        Some(Models {
            primary: Arc::clone(chosen),
            agents: BTreeMap::new(),
            fallback: self.fallback.clone(),
            downgrade: self.downgrade.clone(),
            named: self.named.clone(),
        })
    }

    /// Per-agent providers over the primary.
    pub fn with_agents(mut self, agents: BTreeMap<AgentKind, Arc<dyn LlmProvider>>) -> Self {
        self.agents = agents;
        self
    }

    /// The provider a failing call may fall back to (the cloud).
    pub fn with_fallback(mut self, fallback: Arc<dyn LlmProvider>) -> Self {
        self.fallback = Some(fallback);
        self
    }

    /// The provider the rest of a task runs on after its budget is exceeded (`on_exceed = "downgrade"`).
    pub fn with_downgrade(mut self, downgrade: Arc<dyn LlmProvider>) -> Self {
        self.downgrade = Some(downgrade);
        self
    }

    /// The primary provider.
    pub fn primary(&self) -> &Arc<dyn LlmProvider> {
        &self.primary
    }

    /// The provider of `agent`.
    pub fn for_agent(&self, agent: AgentKind) -> &Arc<dyn LlmProvider> {
        self.agents.get(&agent).unwrap_or(&self.primary)
    }

    /// The fallback provider, if one is configured.
    pub fn fallback(&self) -> Option<&Arc<dyn LlmProvider>> {
        self.fallback.as_ref()
    }

    /// Every provider once (the primary first), for readiness.
    pub fn distinct(&self) -> Vec<&Arc<dyn LlmProvider>> {
        let mut seen: Vec<&Arc<dyn LlmProvider>> = vec![&self.primary];
        let others = self
            .agents
            .values()
            .chain(self.fallback.iter())
            .chain(self.downgrade.iter())
            .chain(self.named.values());
        for provider in others {
            if !seen.iter().any(|known| Arc::ptr_eq(known, provider)) {
                seen.push(provider);
            }
        }
        seen
    }

    /// Each agent's provider and model (and the fallback's and the downgrade's), for `GET /api/v1/agents`
    /// and a task's result.
    pub fn describe(&self) -> serde_json::Value {
        let mut described: serde_json::Map<String, serde_json::Value> = AgentKind::ALL
            .iter()
            .map(|&agent| (agent.as_str().to_owned(), named(self.for_agent(agent))))
            .collect();
        if let Some(fallback) = &self.fallback {
            described.insert("fallback".into(), named(fallback));
        }
        if let Some(downgrade) = &self.downgrade {
            described.insert("downgrade".into(), named(downgrade));
        }
        if !self.named.is_empty() {
            // The models a task may pick with `options.model`.
            let picks: serde_json::Map<String, serde_json::Value> = self
                .named
                .iter()
                .map(|(name, provider)| (name.clone(), named(provider)))
                .collect();
            described.insert("named".into(), serde_json::Value::Object(picks));
        }
        serde_json::Value::Object(described)
    }
}

/// How a task's calls are governed: its budget, what exceeding it does, and its fallback.
#[derive(Clone)]
pub struct Policy {
    /// The task's limits.
    pub limits: Limits,
    /// What a call that would exceed them does.
    pub on_exceed: OnExceed,
    /// Whether falling back needs a person's yes.
    pub fallback_mode: FallbackMode,
    /// How long a task waits for that yes.
    pub confirm_timeout: Duration,
    /// Where the waits are answered.
    pub confirmations: Confirmations,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            limits: Limits::default(),
            on_exceed: OnExceed::Fail,
            fallback_mode: FallbackMode::Confirm,
            confirm_timeout: Duration::from_secs(300),
            confirmations: Confirmations::default(),
        }
    }
}

/// Where a task's calls go now.
#[derive(Debug, Default)]
struct Route {
    /// The budget was exceeded and the rest of the task runs on the downgrade model.
    downgraded: bool,
    /// The task fell back once: its later calls go to the fallback directly.
    fell_back: bool,
    /// A person already allowed the fallback for this task.
    fallback_allowed: bool,
    /// Since when the task waits for a person.
    paused_since: Option<Instant>,
    /// How long it has waited so far, in total.
    paused: Duration,
}

/// Which of a re-run's calls its source's recording answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayScope {
    /// Every call (a replay, `options.replay_of`).
    Whole,
    /// The calls before this step (a fork, `options.fork_of`; see `domain::replay::replayed_in_fork`).
    BeforeStep(i32),
}

/// A re-run's source: its recording answers the calls in scope whose request is the recorded one; the
/// first that is not (or was never recorded) is a divergence.
pub struct Replay {
    source: Arc<ReplayProvider>,
    scope: ReplayScope,
    on_divergence: OnDivergence,
    /// Set at the first divergence of a `live` re-run: every later call is live.
    diverged: AtomicBool,
}

impl Replay {
    /// Calls in `scope` are answered from `source`, a divergence does `on_divergence`.
    pub fn new(
        source: Arc<ReplayProvider>,
        scope: ReplayScope,
        on_divergence: OnDivergence,
    ) -> Self {
        Replay {
            source,
            scope,
            on_divergence,
            diverged: AtomicBool::new(false),
        }
    }
}

/// Where a re-run's call is answered from.
pub enum Replayed {
    /// From the recording, by `provider`; `model` is the configuration that produced the recorded output
    /// (recorded with the new row, so that a replay of this task compares against it).
    Recorded {
        /// The source's recording.
        provider: Arc<ReplayProvider>,
        /// The recorded call's model configuration.
        model: serde_json::Value,
    },
    /// The request is not the recorded one (or none was recorded): what differs.
    Diverged(Divergence),
    /// Live, by the task's own models: not a re-run, outside the fork's scope, or after a divergence.
    Live,
}

/// The models one task calls, under its budget and fallback policy.
pub struct TaskModels {
    models: Models,
    policy: Policy,
    budget: Budget,
    route: Mutex<Route>,
    /// A resumed task's own recorded calls: a call whose purpose is here is answered from it.
    recorded: Option<Arc<ReplayProvider>>,
    /// How many calls the recording answered.
    reused: AtomicUsize,
    /// A replay's or fork's source, answering the calls in its scope.
    replay: Option<Replay>,
}

impl TaskModels {
    /// The task calls `models` under `policy`.
    pub fn new(models: Models, policy: Policy) -> Self {
        let budget = Budget::new(policy.limits);
        TaskModels {
            models,
            policy,
            budget,
            route: Mutex::new(Route::default()),
            recorded: None,
            reused: AtomicUsize::new(0),
            replay: None,
        }
    }

    /// Calls whose purpose `recording` holds (a resumed task's own calls, made before its process died)
    /// are answered from it: no model call, no new row. The rest go to the models as usual.
    pub fn with_recording(mut self, recording: Arc<ReplayProvider>) -> Self {
        self.recorded = Some(recording);
        self
    }

    /// The recorded output of `purpose` for a resumed task, counted as reused; `None` when the call must
    /// be made.
    pub fn recorded(&self, purpose: &str) -> Option<LlmOutput> {
        let output = self.recorded.as_ref()?.output(purpose)?.clone();
        self.reused.fetch_add(1, Ordering::Relaxed);
        Some(output)
    }

    /// How many calls were answered from the task's own recording.
    pub fn reused_calls(&self) -> usize {
        self.reused.load(Ordering::Relaxed)
    }

    /// The calls in `replay`'s scope are answered from its source's recording while they ask what was
    /// recorded (see [`TaskModels::replayed`]); the rest go to the models as usual.
    pub fn with_replay(mut self, replay: Replay) -> Self {
        self.replay = Some(replay);
        self
    }

    /// Where the call `purpose`, asking `print`, is answered from. A call in the re-run's scope whose
    /// request equals the recorded one is answered from the recording; one whose request differs, or that
    /// was never recorded, is a divergence. A recording made before requests were recorded is answered by
    /// purpose alone, as before (an unrecorded call then fails with `ReplayMissing`).
    pub fn replayed(&self, purpose: &str, print: &RequestPrint) -> Replayed {
        let Some(replay) = &self.replay else {
            return Replayed::Live;
        };
        if replay.diverged.load(Ordering::Relaxed) {
            return Replayed::Live;
        }
        if let ReplayScope::BeforeStep(step) = replay.scope {
            if !replayed_in_fork(purpose, step) {
                return Replayed::Live;
            }
        }
        let recorded = |model: serde_json::Value| Replayed::Recorded {
            provider: Arc::clone(&replay.source),
            model,
        };
        if !replay.source.checks_requests() {
            return recorded(print.model.clone());
        }
        match replay.source.request(purpose) {
            Some(asked) => match compare(purpose, asked, print) {
                Some(divergence) => Replayed::Diverged(divergence),
                None => recorded(asked.model.clone()),
            },
            None if replay.source.has(purpose) => recorded(print.model.clone()),
            None => Replayed::Diverged(Divergence::unrecorded(purpose)),
        }
    }

    /// A divergence happened: returns what the task does about it. With `live`, this and every later
    /// call are made live.
    pub fn diverge(&self) -> OnDivergence {
        let Some(replay) = &self.replay else {
            return OnDivergence::Live;
        };
        if replay.on_divergence == OnDivergence::Live {
            replay.diverged.store(true, Ordering::Relaxed);
        }
        replay.on_divergence
    }

    /// The task whose recording a replay or fork answers from.
    pub fn replay_source(&self) -> Option<TaskId> {
        self.replay.as_ref().map(|replay| replay.source.source())
    }

    /// Whether every call is still answered from a recording (a replay that has not diverged).
    fn replaying_all(&self) -> bool {
        self.replay.as_ref().is_some_and(|replay| {
            replay.scope == ReplayScope::Whole && !replay.diverged.load(Ordering::Relaxed)
        })
    }

    /// The provider that answers `agent`'s calls, as the result names it: the replay while a replay has
    /// not diverged, else [`TaskModels::for_agent`].
    pub fn answering(&self, agent: AgentKind) -> Arc<dyn LlmProvider> {
        match &self.replay {
            Some(replay) if self.replaying_all() => {
                Arc::clone(&replay.source) as Arc<dyn LlmProvider>
            }
            _ => self.for_agent(agent),
        }
    }

    /// Every agent's call goes to `provider` (a replay): no budget, no fallback.
    pub fn uniform(provider: Arc<dyn LlmProvider>) -> Self {
        Self::new(Models::single(provider), Policy::default())
    }

    fn with_route<T>(&self, f: impl FnOnce(&mut Route) -> T) -> T {
        match self.route.lock() {
            Ok(mut route) => f(&mut route),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// The provider that serves `agent`'s next call: its own, the fallback once the task fell back, the
    /// downgrade model once the budget sent the task there.
    pub fn for_agent(&self, agent: AgentKind) -> Arc<dyn LlmProvider> {
        let (downgraded, fell_back) = self.with_route(|route| (route.downgraded, route.fell_back));
        if downgraded {
            if let Some(downgrade) = &self.models.downgrade {
                return Arc::clone(downgrade);
            }
        }
        if fell_back {
            if let Some(fallback) = &self.models.fallback {
                return Arc::clone(fallback);
            }
        }
        Arc::clone(self.models.for_agent(agent))
    }

    /// The fallback provider, unless the task already uses it (or its downgrade model).
    pub fn fallback_for(&self, current: &Arc<dyn LlmProvider>) -> Option<Arc<dyn LlmProvider>> {
        let downgraded = self.with_route(|route| route.downgraded);
        self.models
            .fallback
            .as_ref()
            .filter(|fallback| !downgraded && !Arc::ptr_eq(fallback, current))
            .map(Arc::clone)
    }

    /// The rest of the task's calls go to the fallback.
    pub fn fall_back(&self) {
        self.with_route(|route| route.fell_back = true);
    }

    /// Whether the fallback needs a person's yes that the task does not have yet.
    pub fn needs_confirmation(&self) -> bool {
        self.policy.fallback_mode == FallbackMode::Confirm
            && !self.with_route(|route| route.fallback_allowed)
    }

    /// A person allowed the fallback for this task.
    pub fn allow_fallback(&self) {
        self.with_route(|route| route.fallback_allowed = true);
    }

    /// Switches the rest of the task to the downgrade model; false when there is none (or it is already
    /// there), and the call must fail instead.
    pub fn downgrade(&self) -> Option<Arc<dyn LlmProvider>> {
        if self.policy.on_exceed != OnExceed::Downgrade {
            return None;
        }
        let downgrade = self.models.downgrade.as_ref()?;
        let switched = self.with_route(|route| !std::mem::replace(&mut route.downgraded, true));
        switched.then(|| Arc::clone(downgrade))
    }

    /// Whether the task runs on the downgrade model.
    pub fn is_downgraded(&self) -> bool {
        self.with_route(|route| route.downgraded)
    }

    /// The task's budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// The task's policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The task starts waiting for a person.
    pub fn pause(&self) {
        self.with_route(|route| {
            route.paused_since.get_or_insert_with(Instant::now);
        });
    }

    /// The task stops waiting.
    pub fn resume(&self) {
        self.with_route(|route| {
            if let Some(since) = route.paused_since.take() {
                route.paused += since.elapsed();
            }
        });
    }

    /// How long the task has waited for a person so far (a wait in progress included), which the
    /// Director's step timeout does not count.
    pub fn paused_for(&self) -> Duration {
        self.with_route(|route| {
            route.paused
                + route
                    .paused_since
                    .map_or(Duration::ZERO, |since| since.elapsed())
        })
    }

    /// Each agent's provider and model (the replay's, while a replay has not diverged).
    pub fn describe(&self) -> serde_json::Value {
        match &self.replay {
            Some(replay) if self.replaying_all() => {
                Models::single(Arc::clone(&replay.source) as Arc<dyn LlmProvider>).describe()
            }
            _ => self.models.describe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::domain::TaskId;
    use crate::llm::divergence::DivergedPart;
    use crate::llm::{ChatMessage, LlmRequest, OutputSpec, Usage};
    use crate::storage::{RecordedCall, Recording};

    fn asking(purpose: &str, text: &str) -> (LlmRequest, RequestPrint) {
        let request = LlmRequest {
            purpose: purpose.into(),
            messages: vec![ChatMessage::user(text)],
            max_tokens: 8,
            output: OutputSpec::Text,
        };
        let print = RequestPrint::of(
            &request,
            serde_json::json!({ "provider": "x", "model": "m" }),
        );
        (request, print)
    }

    /// A recording of `plan` and `work.1` (with their requests when `with_requests`).
    fn recording(with_requests: bool) -> Arc<ReplayProvider> {
        let calls = ["plan", "work.1"]
            .iter()
            .map(|purpose| {
                let (request, print) = asking(purpose, "the task");
                RecordedCall {
                    purpose: (*purpose).to_owned(),
                    prompt: serde_json::to_string(&request.messages).unwrap(),
                    request: with_requests.then(|| print.asked_json()),
                    request_digest: with_requests.then(|| print.digest()),
                    output: format!("recorded {purpose}"),
                    choice: None,
                    prompt_tokens: 1,
                    completion_tokens: 1,
                    duration_seconds: 0.0,
                }
            })
            .collect();
        let recording = Recording {
            model: "m".into(),
            calls,
        };
        Arc::new(ReplayProvider::from_recording(TaskId::new(), recording).unwrap())
    }

    fn live() -> Arc<ReplayProvider> {
        Arc::new(ReplayProvider::new(
            TaskId::new(),
            "live".into(),
            HashMap::new(),
        ))
    }

    fn replaying(scope: ReplayScope, action: OnDivergence, with_requests: bool) -> TaskModels {
        TaskModels::uniform(live()).with_replay(Replay::new(
            recording(with_requests),
            scope,
            action,
        ))
    }

    #[test]
    fn a_replay_answers_the_same_request_and_names_what_differs() {
        let models = replaying(ReplayScope::Whole, OnDivergence::Stop, true);
        let (_, same) = asking("plan", "the task");
        let (_, other) = asking("plan", "another task");
        assert!(matches!(
            models.replayed("plan", &same),
            Replayed::Recorded { .. }
        ));
        match models.replayed("plan", &other) {
            Replayed::Diverged(divergence) => {
                assert_eq!(divergence.part, DivergedPart::Prompt);
                assert_eq!(divergence.position, Some(0));
            }
            _ => panic!("another prompt did not diverge"),
        }
        match models.replayed("verify", &same) {
            Replayed::Diverged(divergence) => assert_eq!(divergence.part, DivergedPart::Unrecorded),
            _ => panic!("an unrecorded call did not diverge"),
        }
        // `stop` keeps checking: the task fails at the first divergence anyway.
        assert_eq!(models.diverge(), OnDivergence::Stop);
        assert!(matches!(
            models.replayed("work.1", &asking("work.1", "the task").1),
            Replayed::Recorded { .. }
        ));
        assert_eq!(models.answering(AgentKind::Code).provider_name(), "replay");
    }

    #[test]
    fn after_a_live_divergence_every_call_is_live() {
        let models = replaying(ReplayScope::Whole, OnDivergence::Live, true);
        assert_eq!(models.diverge(), OnDivergence::Live);
        let (_, same) = asking("work.1", "the task");
        assert!(matches!(models.replayed("work.1", &same), Replayed::Live));
        assert!(models.replay_source().is_some());
    }

    #[test]
    fn a_fork_replays_only_what_comes_before_its_step() {
        let models = replaying(ReplayScope::BeforeStep(1), OnDivergence::Live, true);
        let (_, plan) = asking("plan", "the task");
        let (_, work) = asking("work.1", "the task");
        assert!(matches!(
            models.replayed("plan", &plan),
            Replayed::Recorded { .. }
        ));
        assert!(matches!(models.replayed("work.1", &work), Replayed::Live));
    }

    #[test]
    fn a_recording_without_requests_is_replayed_by_purpose() {
        let models = replaying(ReplayScope::Whole, OnDivergence::Stop, false);
        let (_, other) = asking("plan", "another task");
        assert!(matches!(
            models.replayed("plan", &other),
            Replayed::Recorded { .. }
        ));
        // The provider answers a gap with `ReplayMissing`, as it always did.
        assert!(matches!(
            models.replayed("verify", &other),
            Replayed::Recorded { .. }
        ));
    }

    #[test]
    fn a_recorded_purpose_is_answered_from_the_recording_and_counted() {
        let recorded = LlmOutput {
            text: "the plan".into(),
            choice: None,
            usage: Usage {
                input_tokens: 5,
                output_tokens: 3,
            },
            generation_seconds: 0.5,
        };
        let recording = ReplayProvider::new(
            TaskId::new(),
            "m".into(),
            HashMap::from([("plan".to_owned(), recorded.clone())]),
        );
        let live = Arc::new(ReplayProvider::new(
            TaskId::new(),
            "live".into(),
            HashMap::new(),
        ));
        let models = TaskModels::uniform(live).with_recording(Arc::new(recording));
        assert_eq!(models.recorded("plan"), Some(recorded));
        assert_eq!(models.recorded("work.2"), None, "unrecorded: made live");
        assert_eq!(models.reused_calls(), 1);
        assert_eq!(
            TaskModels::uniform(Arc::new(ReplayProvider::new(
                TaskId::new(),
                "x".into(),
                HashMap::new()
            )))
            .recorded("plan"),
            None
        );
    }
}
