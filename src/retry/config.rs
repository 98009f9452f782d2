//! What a layer, the services it makes and their response futures share: the configuration.
//! Its own module, below all three, so that none of them reaches into another for it.

use std::sync::Arc;
use std::time::Duration;

use super::backoff::{Backoff, Jitter, RandomJitter};
use super::budget::{PerDestination, RetryBudget};
use super::events::Hook;
use crate::metrics::RetryMetrics;

/// The longest wait a server may ask for, unless the layer is told otherwise: 30 s.
pub(crate) const DEFAULT_MAX_PUSHBACK: Duration = Duration::from_secs(30);

/// How much of a request body is kept to replay it, unless the layer is told otherwise: 64 KiB.
pub(crate) const DEFAULT_BODY_CAP: usize = 64 * 1024;

pub(crate) struct Config<C> {
    pub(crate) classifier: C,
    pub(crate) backoff: Backoff,
    pub(crate) jitter: Arc<dyn Jitter>,
    pub(crate) budget: Budgets,
    pub(crate) deadline: Option<Duration>,
    pub(crate) max_pushback: Duration,
    pub(crate) body_cap: usize,
    pub(crate) hook: Option<Hook>,
    pub(crate) name: Arc<str>,
    /// Registered when the layer makes a service.
    pub(crate) metrics: Option<RetryMetrics>,
}

impl<C> Config<C> {
    /// The defaults, with `classifier`.
    pub(crate) fn new(classifier: C) -> Self {
        Self {
            classifier,
            backoff: Backoff::standard(),
            jitter: Arc::new(RandomJitter::new()),
            budget: Budgets::Shared(RetryBudget::default()),
            deadline: None,
            max_pushback: DEFAULT_MAX_PUSHBACK,
            body_cap: DEFAULT_BODY_CAP,
            hook: None,
            name: Arc::from("retry"),
            metrics: None,
        }
    }

    /// The same settings with another classifier.
    pub(crate) fn with_classifier<C2>(self, classifier: C2) -> Config<C2> {
        Config {
            classifier,
            backoff: self.backoff,
            jitter: self.jitter,
            budget: self.budget,
            deadline: self.deadline,
            max_pushback: self.max_pushback,
            body_cap: self.body_cap,
            hook: self.hook,
            name: self.name,
            metrics: self.metrics,
        }
    }
}

impl<C: Clone> Clone for Config<C> {
    fn clone(&self) -> Self {
        Self {
            classifier: self.classifier.clone(),
            backoff: self.backoff,
            jitter: Arc::clone(&self.jitter),
            budget: self.budget.clone(),
            deadline: self.deadline,
            max_pushback: self.max_pushback,
            body_cap: self.body_cap,
            hook: self.hook.clone(),
            name: Arc::clone(&self.name),
            metrics: self.metrics.clone(),
        }
    }
}

/// Where retries are paid from.
#[derive(Clone)]
pub(crate) enum Budgets {
    Off,
    Shared(RetryBudget),
    PerDestination(PerDestination),
}

impl Budgets {
    /// Records a request; returns the budget of its destination when budgets are per
    /// destination (the shared one is reached through the configuration, without a clone).
    #[inline]
    pub(crate) fn deposit(
        &self,
        destination: Option<&http::uri::Authority>,
    ) -> Option<RetryBudget> {
        match self {
            Self::Off => None,
            Self::Shared(budget) => {
                budget.deposit();
                None
            }
            Self::PerDestination(budgets) => {
                let budget = budgets.get(destination);
                budget.deposit();
                Some(budget)
            }
        }
    }

    /// The budget to withdraw from: the destination's, or the shared one.
    pub(crate) fn for_retry<'a>(
        &'a self,
        destination: Option<&'a RetryBudget>,
    ) -> Option<&'a RetryBudget> {
        match self {
            Self::Off => None,
            Self::Shared(budget) => Some(budget),
            Self::PerDestination(_) => destination,
        }
    }
}
