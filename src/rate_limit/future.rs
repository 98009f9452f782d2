use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;

use crate::limiter::Settle;
use crate::respond::Respond;

/// A boxed future for the paths that wait: a slot later in time, or a network store.
pub(crate) type Waiting<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

pin_project! {
    /// The response future of [`RateLimit`](super::RateLimit).
    ///
    /// Allowed requests poll the inner future in place and add the rate-limit headers to its
    /// response; refusals are ready at once; only requests that wait for a slot, or for a
    /// network store, are boxed.
    pub struct ResponseFuture<F, R, T, E>
    where
        R: Respond<T, E>,
    {
        #[pin]
        state: State<F, R, T, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, R, T, E>
    where
        R: Respond<T, E>,
    {
        Calling {
            #[pin]
            future: F,
            note: Option<R::Note>,
            settle: Option<Settle>,
        },
        Answered {
            answer: Option<Result<T, R::Error>>,
        },
        Waiting {
            future: Waiting<T, R::Error>,
        },
    }
}

impl<F, R, T, E> ResponseFuture<F, R, T, E>
where
    R: Respond<T, E>,
{
    pub(crate) fn calling(future: F, note: Option<R::Note>) -> Self {
        Self::settling(future, note, None)
    }

    /// Calling, and settling the request's cost from its response.
    pub(crate) fn settling(future: F, note: Option<R::Note>, settle: Option<Settle>) -> Self {
        Self {
            state: State::Calling {
                future,
                note,
                settle,
            },
        }
    }

    pub(crate) fn answered(answer: Result<T, R::Error>) -> Self {
        Self {
            state: State::Answered {
                answer: Some(answer),
            },
        }
    }

    pub(crate) fn waiting(future: Waiting<T, R::Error>) -> Self {
        Self {
            state: State::Waiting { future },
        }
    }
}

impl<F, R, T, E> Future for ResponseFuture<F, R, T, E>
where
    F: Future<Output = Result<T, E>>,
    R: Respond<T, E>,
{
    type Output = Result<T, R::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Calling {
                future,
                note,
                settle,
            } => {
                if note.is_none() && settle.is_none() {
                    // Nothing to add to the response (headers off): pass it on as it comes.
                    return future.poll(cx).map_err(R::inner_error);
                }
                let mut response = ready!(future.poll(cx)).map_err(R::inner_error)?;
                if let Some(settle) = settle.take() {
                    settle.finish(R::actual_cost(&response));
                }
                if let Some(note) = note.take() {
                    R::annotate(note, &mut response);
                }
                Poll::Ready(Ok(response))
            }
            StateProj::Answered { answer } => Poll::Ready(
                answer
                    .take()
                    .expect("ResponseFuture polled after completion"),
            ),
            StateProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, R, T, E> std::fmt::Debug for ResponseFuture<F, R, T, E>
where
    R: Respond<T, E>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
