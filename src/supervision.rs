//! Supervision of specialist agents (Erlang/OTP one-for-one semantics): restart policy, intensity window,
//! escalation.
//!
//! actix restarts nothing by itself on a panic, so this is ours: the Director holds a [`Pool`] of
//! [`Supervised`] instances per specialist. When a step comes back as a panic, a dead mailbox or a timeout, the Director calls
//! [`Supervised::restart`]: a fresh actor (fresh state, new mailbox) replaces the old one, the restart is
//! counted, and if the agent restarted more than `max_restarts` times within the window the supervisor gives
//! up ([`GaveUp`]) and the task fails with that reason instead of looping. Restarts are idempotent per
//! incarnation: several tasks that saw the same crash cause one restart.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use actix::Recipient;

use crate::config::SupervisionSettings;
use crate::domain::AgentKind;
use crate::messages::{Envelope, RunStep};

/// Why an agent was restarted (the `reason` label of `troupe_supervisor_restarts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// Its work panicked; the panic was caught.
    Panic,
    /// Its mailbox closed: the actor died.
    Crash,
    /// It did not answer within the step timeout.
    Timeout,
}

impl RestartReason {
    /// Every reason.
    pub const ALL: [RestartReason; 3] = [
        RestartReason::Panic,
        RestartReason::Crash,
        RestartReason::Timeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Panic => "panic",
            RestartReason::Crash => "crash",
            RestartReason::Timeout => "timeout",
        }
    }
}

impl fmt::Display for RestartReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many restarts are allowed in what window.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Restarts allowed within `window`.
    pub max_restarts: u32,
    /// The sliding window.
    pub window: Duration,
}

impl From<&SupervisionSettings> for RestartPolicy {
    fn from(settings: &SupervisionSettings) -> Self {
        RestartPolicy {
            max_restarts: settings.max_restarts,
            window: Duration::from_secs(settings.window_seconds),
        }
    }
}

/// The restart limit was reached: the supervisor escalates instead of restarting.
#[derive(Debug, Clone, thiserror::Error)]
#[error("supervisor gave up on {agent}: more than {max_restarts} restarts within {window_seconds} s (last: {reason})")]
pub struct GaveUp {
    /// The agent.
    pub agent: AgentKind,
    /// The limit.
    pub max_restarts: u32,
    /// The window.
    pub window_seconds: u64,
    /// The last failure.
    pub reason: RestartReason,
}

/// Restart times within the window.
#[derive(Debug)]
pub struct RestartIntensity {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
}

impl RestartIntensity {
    /// An empty history under `policy`.
    pub fn new(policy: RestartPolicy) -> Self {
        RestartIntensity {
            policy,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; false when it is one more than the policy allows.
    pub fn allow(&mut self, now: Instant) -> bool {
        while let Some(&oldest) = self.recent.front() {
            if now.duration_since(oldest) > self.policy.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= self.policy.max_restarts as usize {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

/// Starts a fresh incarnation of an agent and returns where to send its steps.
pub type AgentFactory = Box<dyn Fn() -> Recipient<Envelope<RunStep>>>;

/// What a restart did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restarted {
    /// A new incarnation was started.
    Fresh {
        /// Restarts of this agent since start-up.
        restarts: u64,
    },
    /// Another caller already restarted this incarnation.
    AlreadyReplaced,
}

/// One supervised specialist.
pub struct Supervised {
    kind: AgentKind,
    factory: AgentFactory,
    current: Recipient<Envelope<RunStep>>,
    generation: u64,
    intensity: RestartIntensity,
    restarts: u64,
}

impl Supervised {
    /// Starts the first incarnation.
    pub fn start(kind: AgentKind, policy: RestartPolicy, factory: AgentFactory) -> Self {
        let current = factory();
        Supervised {
            kind,
            factory,
            current,
            generation: 1,
            intensity: RestartIntensity::new(policy),
            restarts: 0,
        }
    }

    /// Where to send steps now, and which incarnation that is.
    pub fn current(&self) -> (Recipient<Envelope<RunStep>>, u64) {
        (self.current.clone(), self.generation)
    }

    /// Restarts since start-up.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Replaces incarnation `failed_generation` with a fresh one, unless that was already done, or gives up
    /// when the restart intensity is exceeded.
    pub fn restart(
        &mut self,
        failed_generation: u64,
        reason: RestartReason,
        now: Instant,
    ) -> Result<Restarted, GaveUp> {
        if failed_generation != self.generation {
            return Ok(Restarted::AlreadyReplaced);
        }
        if !self.intensity.allow(now) {
            return Err(GaveUp {
                agent: self.kind,
                max_restarts: self.intensity.policy.max_restarts,
                window_seconds: self.intensity.policy.window.as_secs(),
                reason,
            });
        }
        // Dropping the old recipient lets the old actor stop once it has no other senders; work it has in
        // flight finishes or is cancelled on its own.
        self.current = (self.factory)();
        self.generation += 1;
        self.restarts += 1;
        Ok(Restarted::Fresh {
            restarts: self.restarts,
        })
    }
}

/// A specialist's instances (`agents.<agent>.instances`), each [`Supervised`] on its own, and the steps each
/// has in flight: a step goes to the least busy instance (the first of them on a tie).
pub struct Pool {
    members: Vec<Supervised>,
    busy: Vec<usize>,
}

/// Where the Director sends one step: the instance (from 1) and its current incarnation.
pub struct Picked {
    /// The instance, from 1.
    pub instance: u32,
    /// Where its steps go.
    pub recipient: Recipient<Envelope<RunStep>>,
    /// Its incarnation.
    pub generation: u64,
}

impl Pool {
    /// Starts `instances` (at least one) instances of `kind`, each from `factory`.
    pub fn start(
        kind: AgentKind,
        instances: usize,
        policy: RestartPolicy,
        factory: impl Fn() -> AgentFactory,
    ) -> Self {
        let members: Vec<Supervised> = (0..instances.max(1))
            .map(|_| Supervised::start(kind, policy, factory()))
            .collect();
        let busy = vec![0; members.len()];
        Pool { members, busy }
    }

    /// Instances in the pool.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the pool is empty (never: it starts at least one).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Takes the least busy instance for one step; [`Pool::release`] gives it back.
    pub fn pick(&mut self) -> Option<Picked> {
        let (index, _) = self
            .busy
            .iter()
            .enumerate()
            .min_by_key(|&(index, busy)| (*busy, index))?;
        self.busy[index] += 1;
        let (recipient, generation) = self.members[index].current();
        Some(Picked {
            instance: u32::try_from(index + 1).unwrap_or(u32::MAX),
            recipient,
            generation,
        })
    }

    /// Instance `instance`'s step ended (however it ended).
    pub fn release(&mut self, instance: u32) {
        if let Some(busy) = self
            .slot(instance)
            .and_then(|index| self.busy.get_mut(index))
        {
            *busy = busy.saturating_sub(1);
        }
    }

    /// Steps in flight on each instance, in instance order.
    pub fn busy(&self) -> &[usize] {
        &self.busy
    }

    /// Restarts of all instances since start-up.
    pub fn restarts(&self) -> u64 {
        self.members.iter().map(Supervised::restarts).sum()
    }

    /// Restarts instance `instance`'s incarnation `failed_generation` (see [`Supervised::restart`]).
    pub fn restart(
        &mut self,
        instance: u32,
        failed_generation: u64,
        reason: RestartReason,
        now: Instant,
    ) -> Option<Result<Restarted, GaveUp>> {
        let index = self.slot(instance)?;
        Some(self.members[index].restart(failed_generation, reason, now))
    }

    fn slot(&self, instance: u32) -> Option<usize> {
        let index = usize::try_from(instance).ok()?.checked_sub(1)?;
        (index < self.members.len()).then_some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_restarts: u32, window_seconds: u64) -> RestartPolicy {
        RestartPolicy {
            max_restarts,
            window: Duration::from_secs(window_seconds),
        }
    }

    #[test]
    fn intensity_allows_up_to_the_limit_within_the_window() {
        let mut intensity = RestartIntensity::new(policy(3, 60));
        let start = Instant::now();
        for i in 0..3 {
            assert!(intensity.allow(start + Duration::from_secs(i)));
        }
        assert!(!intensity.allow(start + Duration::from_secs(10)));
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let mut intensity = RestartIntensity::new(policy(2, 60));
        let start = Instant::now();
        assert!(intensity.allow(start));
        assert!(intensity.allow(start + Duration::from_secs(1)));
        assert!(!intensity.allow(start + Duration::from_secs(30)));
        assert!(intensity.allow(start + Duration::from_secs(62)));
    }

    #[test]
    fn zero_restarts_means_never_restart() {
        let mut intensity = RestartIntensity::new(policy(0, 60));
        assert!(!intensity.allow(Instant::now()));
    }

    /// An actor that only counts as a recipient (the pool's bookkeeping is what is tested).
    struct Idle;

    impl actix::Actor for Idle {
        type Context = actix::Context<Self>;
    }

    impl actix::Handler<Envelope<RunStep>> for Idle {
        type Result = Result<crate::messages::StepOutput, crate::messages::AgentError>;

        fn handle(&mut self, _step: Envelope<RunStep>, _ctx: &mut Self::Context) -> Self::Result {
            Err(crate::messages::AgentError::Cancelled)
        }
    }

    #[actix_rt::test]
    async fn a_step_goes_to_the_least_busy_instance() {
        use actix::Actor;
        let factory = || -> AgentFactory { Box::new(|| Idle.start().recipient()) };
        let mut pool = Pool::start(AgentKind::Code, 3, policy(1, 60), factory);
        assert_eq!(pool.len(), 3);
        let picks: Vec<u32> = (0..4).map(|_| pool.pick().unwrap().instance).collect();
        assert_eq!(picks, vec![1, 2, 3, 1]);
        pool.release(2);
        assert_eq!(pool.busy(), &[2, 0, 1]);
        assert_eq!(pool.pick().unwrap().instance, 2);
        // A restart replaces that instance alone, once per incarnation.
        let now = Instant::now();
        assert!(matches!(
            pool.restart(3, 1, RestartReason::Panic, now),
            Some(Ok(Restarted::Fresh { restarts: 1 }))
        ));
        assert!(matches!(
            pool.restart(3, 1, RestartReason::Panic, now),
            Some(Ok(Restarted::AlreadyReplaced))
        ));
        assert_eq!(pool.restarts(), 1);
        assert!(pool.restart(4, 1, RestartReason::Panic, now).is_none());
        pool.release(9);
    }
}
