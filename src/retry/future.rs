use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::attempts::RequestSource;
use super::budget::RetryBudget;
use super::classify::{never_sent, Classification, Classify, Outcome};
use super::config::Config;
use super::events::{emit, DeadlineExceeded, GiveUp, RetryAction, RetryError, RetryEvent};
use crate::BoxError;

pin_project! {
    /// The response future of [`Retry`](super::Retry) (never named by users: `pub` in a
    /// private module, not re-exported): one attempt after another, each
    /// after the inner service is ready, with the waits in between, until an outcome is final
    /// or the layer gives up.
    pub struct ResponseFuture<S, P, C>
    where
        S: Service<P::Request>,
        P: RequestSource,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        attempts: P,
        config: Arc<Config<C>>,
        // The destination's budget, when budgets are per destination.
        budget: Option<RetryBudget>,
        made: u32,
        deadline: Option<(Instant, Pin<Box<Sleep>>)>,
        annotate: fn(&mut S::Response, u32),
        status: fn(&S::Response) -> Option<http::StatusCode>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        // Boxed: a `Sleep` is several times the size of the rest, and moving a large future
        // on every request costs more than one allocation on the rare retry.
        Sleeping { sleep: Pin<Box<Sleep>> },
        Polling,
        Done,
    }
}

impl<S, P, C> ResponseFuture<S, P, C>
where
    S: Service<P::Request>,
    P: RequestSource,
{
    /// Starts the first attempt on `service`, which the caller has polled ready.
    #[inline]
    pub(crate) fn start(
        mut service: S,
        first: P::Request,
        attempts: P,
        config: Arc<Config<C>>,
        budget: Option<RetryBudget>,
        annotate: fn(&mut S::Response, u32),
        status: fn(&S::Response) -> Option<http::StatusCode>,
    ) -> Self {
        let deadline = config.deadline.map(|after| {
            let at = Instant::now() + after;
            (at, Box::pin(tokio::time::sleep_until(at)))
        });
        Self {
            state: State::Calling {
                future: service.call(first),
            },
            service,
            attempts,
            config,
            budget,
            made: 1,
            deadline,
            annotate,
            status,
        }
    }
}

impl<S, P, C> Future for ResponseFuture<S, P, C>
where
    S: Service<P::Request>,
    S::Error: Into<BoxError>,
    P: RequestSource,
    C: Classify<S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            // The overall deadline cuts whatever is under way.
            if let Some((_, timer)) = this.deadline {
                if timer.as_mut().poll(cx).is_ready() {
                    this.state.set(State::Done);
                    let error = RetryError::new(
                        *this.made,
                        Some(GiveUp::Deadline),
                        Box::new(DeadlineExceeded),
                    );
                    return Poll::Ready(Err(Box::new(error)));
                }
            }
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    let classification = match &result {
                        Ok(response) => {
                            this.config.classifier.classify(Outcome::Response(response))
                        }
                        Err(error) => this.config.classifier.classify(Outcome::Error(&**error)),
                    };
                    if !classification.is_retryable() {
                        this.state.set(State::Done);
                        return Poll::Ready(finish(result, *this.made, None, *this.annotate));
                    }
                    // A request that never reached the server may go again whatever its method.
                    let unsent = matches!(&result, Err(error) if never_sent(&**error));
                    let next = next_delay(
                        classification,
                        unsent,
                        *this.made,
                        this.attempts,
                        this.config,
                        this.config.budget.for_retry(this.budget.as_ref()),
                        this.deadline.as_ref().map(|(at, _)| *at),
                    );
                    let status = *this.status;
                    let event = |action| RetryEvent {
                        layer: &this.config.name,
                        attempt: *this.made,
                        classification,
                        action,
                        destination: this.attempts.destination(),
                        status: result.as_ref().ok().and_then(status),
                        error: result
                            .as_ref()
                            .err()
                            .map(|e| &**e as &(dyn std::error::Error + 'static)),
                    };
                    match next {
                        Err(reason) => {
                            if let Some(metrics) = &this.config.metrics {
                                metrics.gave_up(reason.metric_index());
                            }
                            emit(
                                this.config.hook.as_ref(),
                                &event(RetryAction::GiveUp(reason)),
                            );
                            this.state.set(State::Done);
                            return Poll::Ready(finish(
                                result,
                                *this.made,
                                Some(reason),
                                *this.annotate,
                            ));
                        }
                        Ok(delay) => {
                            if let Some(metrics) = &this.config.metrics {
                                metrics.retried(classification.metric_index());
                            }
                            emit(
                                this.config.hook.as_ref(),
                                &event(RetryAction::Retry { delay }),
                            );
                            // The failed response (and its body) goes now, not after the wait.
                            drop(result);
                            if delay.is_zero() {
                                this.state.set(State::Polling);
                            } else {
                                this.state.set(State::Sleeping {
                                    sleep: Box::pin(tokio::time::sleep(delay)),
                                });
                            }
                        }
                    }
                }
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Polling);
                }
                StateProj::Polling => {
                    if let Err(error) = ready!(this.service.poll_ready(cx)) {
                        this.state.set(State::Done);
                        return Poll::Ready(finish(
                            Err(error.into()),
                            *this.made,
                            None,
                            *this.annotate,
                        ));
                    }
                    match this.attempts.next() {
                        Ok(request) => {
                            *this.made += 1;
                            let future = this.service.call(request);
                            this.state.set(State::Calling { future });
                        }
                        Err(reason) => {
                            this.state.set(State::Done);
                            let error = RetryError::new(
                                *this.made,
                                Some(reason),
                                "the request could not be made again".into(),
                            );
                            return Poll::Ready(Err(Box::new(error)));
                        }
                    }
                }
                StateProj::Done => panic!("retry ResponseFuture polled after completion"),
            }
        }
    }
}

/// The wait before the next attempt, or why there is none. Checks in order: attempts left,
/// the request can be made again (`never_sent`: the outcome shows it never reached the
/// server), the server's delay is acceptable, the deadline leaves time, and last (so that
/// giving up spends nothing) the budget.
fn next_delay<P: RequestSource, C>(
    classification: Classification,
    never_sent: bool,
    made: u32,
    attempts: &P,
    config: &Config<C>,
    budget: Option<&RetryBudget>,
    deadline: Option<Instant>,
) -> Result<Duration, GiveUp> {
    if made >= config.backoff.max_attempts() {
        return Err(GiveUp::MaxAttempts);
    }
    attempts.check(never_sent)?;
    let delay = match classification {
        Classification::RetryAfter(delay) if delay > config.max_pushback => {
            return Err(GiveUp::PushbackTooLong);
        }
        Classification::RetryAfter(delay) => delay,
        Classification::Throttled => config.backoff.delay(made, true, config.jitter.draw()),
        _ => config.backoff.delay(made, false, config.jitter.draw()),
    };
    if let Some(deadline) = deadline {
        if Instant::now() + delay >= deadline {
            return Err(GiveUp::Deadline);
        }
    }
    if let Some(budget) = budget {
        if !budget.try_withdraw() {
            return Err(GiveUp::Budget);
        }
    }
    Ok(delay)
}

fn finish<T>(
    result: Result<T, BoxError>,
    made: u32,
    gave_up: Option<GiveUp>,
    annotate: fn(&mut T, u32),
) -> Result<T, BoxError> {
    match result {
        Ok(mut response) => {
            annotate(&mut response, made);
            Ok(response)
        }
        Err(error) => Err(Box::new(RetryError::new(made, gave_up, error))),
    }
}

impl<S, P, C> std::fmt::Debug for ResponseFuture<S, P, C>
where
    S: Service<P::Request>,
    P: RequestSource,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.made)
            .finish_non_exhaustive()
    }
}
