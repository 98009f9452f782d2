use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::BoxError;

pin_project! {
    /// A request body that can be sent again: what [`RetryLayer`](super::RetryLayer) hands the
    /// inner service instead of the original body.
    ///
    /// - An empty body (a `GET`, say) stays empty: nothing to keep.
    /// - Any other body is recorded as it is sent, frame by frame, up to the cap (64 KiB by
    ///   default); a retry replays the recording, then goes on reading the original where the
    ///   first attempt stopped. `Bytes` frames (`Full<Bytes>`, `Bytes`) are kept by reference
    ///   count, not copied.
    /// - A body that outgrows the cap is sent once, and its request is not retried: a retry
    ///   never sends a truncated or empty body.
    /// - A request that is not idempotent (a `POST`, say) is retried only when it never
    ///   reached the server, and then its body was never read: its body is kept unread, and
    ///   nothing of it is recorded (no memory beyond the head's copy), so that a retry sends
    ///   it whole; once any of it has been read, it is never sent again.
    ///
    /// The inner service therefore takes `Request<ReplayBody<B>>`: build a hyper client with
    /// that body type.
    pub struct ReplayBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Once { #[pin] body: B },
        Empty,
        Shared { shared: Arc<Mutex<Recording<B>>>, position: usize, trailers_sent: bool },
    }
}

struct Recording<B> {
    /// The rest of the original body, until it ends.
    body: Option<Pin<Box<B>>>,
    /// Data frames read so far, while within the cap.
    frames: Vec<Bytes>,
    /// Data frames read so far, kept or not.
    seen: usize,
    bytes: usize,
    cap: usize,
    trailers: Option<HeaderMap>,
    /// Over the cap, or the body failed: it cannot be sent again.
    lost: Option<NotReplayable>,
}

/// Why a body cannot be sent again. Users see it as [`GiveUp::Body`](super::GiveUp::Body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotReplayable {
    /// It grew past the cap.
    TooLarge,
    /// Reading it failed.
    Failed,
}

impl<B> ReplayBody<B> {
    /// A body sent once, as it is.
    pub fn once(body: B) -> Self {
        Self {
            kind: Kind::Once { body },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self { kind: Kind::Empty }
    }
}

impl<B: Body> ReplayBody<B> {
    /// A body recorded up to `cap` bytes as it is sent, and a handle to replay it.
    pub(crate) fn recorded(body: B, cap: usize) -> (Self, Replay<B>) {
        if body.is_end_stream() {
            return (Self::empty(), Replay { shared: None });
        }
        let shared = Arc::new(Mutex::new(Recording {
            body: Some(Box::pin(body)),
            frames: Vec::new(),
            seen: 0,
            bytes: 0,
            cap,
            trailers: None,
            lost: None,
        }));
        let body = Self {
            kind: Kind::Shared {
                shared: Arc::clone(&shared),
                position: 0,
                trailers_sent: false,
            },
        };
        (
            body,
            Replay {
                shared: Some(shared),
            },
        )
    }
}

/// The retry side of a recorded body.
pub(crate) struct Replay<B> {
    shared: Option<Arc<Mutex<Recording<B>>>>,
}

impl<B> Replay<B> {
    /// A body for the next attempt: the recording from its start, then the rest.
    pub(crate) fn replay(&self) -> Result<ReplayBody<B>, NotReplayable> {
        let Some(shared) = &self.shared else {
            return Ok(ReplayBody::empty());
        };
        if let Some(lost) = lock(shared).lost {
            return Err(lost);
        }
        Ok(ReplayBody {
            kind: Kind::Shared {
                shared: Arc::clone(shared),
                position: 0,
                trailers_sent: false,
            },
        })
    }

    /// Whether the body can still be sent again.
    pub(crate) fn check(&self) -> Result<(), NotReplayable> {
        match &self.shared {
            Some(shared) => lock(shared).lost.map_or(Ok(()), Err),
            None => Ok(()),
        }
    }
}

fn lock<B>(shared: &Mutex<Recording<B>>) -> MutexGuard<'_, Recording<B>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B> Body for ReplayBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Empty => Poll::Ready(None),
            KindProj::Once { body } => match ready!(body.poll_frame(cx)) {
                None => Poll::Ready(None),
                Some(Err(error)) => Poll::Ready(Some(Err(error.into()))),
                Some(Ok(frame)) => Poll::Ready(Some(Ok(
                    frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
                ))),
            },
            KindProj::Shared {
                shared,
                position,
                trailers_sent,
            } => {
                let mut recording = lock(shared);
                let recording = &mut *recording;
                // Replay what was recorded.
                if *position < recording.seen {
                    return match recording.frames.get(*position) {
                        Some(frame) => {
                            *position += 1;
                            Poll::Ready(Some(Ok(Frame::data(frame.clone()))))
                        }
                        None => Poll::Ready(Some(Err(
                            "the request body was not kept, so it cannot be sent again".into(),
                        ))),
                    };
                }
                // Then read on.
                let Some(body) = &mut recording.body else {
                    return match (&recording.trailers, *trailers_sent) {
                        (Some(trailers), false) => {
                            *trailers_sent = true;
                            Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))))
                        }
                        _ => Poll::Ready(None),
                    };
                };
                match ready!(body.as_mut().poll_frame(cx)) {
                    None => {
                        recording.body = None;
                        Poll::Ready(None)
                    }
                    Some(Err(error)) => {
                        recording.body = None;
                        recording.lost = Some(NotReplayable::Failed);
                        Poll::Ready(Some(Err(error.into())))
                    }
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(mut data) => {
                            let data = data.copy_to_bytes(data.remaining());
                            recording.seen += 1;
                            *position = recording.seen;
                            recording.bytes = recording.bytes.saturating_add(data.len());
                            if recording.lost.is_none() {
                                if recording.bytes > recording.cap {
                                    recording.lost = Some(NotReplayable::TooLarge);
                                    recording.frames = Vec::new();
                                } else {
                                    recording.frames.push(data.clone());
                                }
                            }
                            Poll::Ready(Some(Ok(Frame::data(data))))
                        }
                        Err(frame) => match frame.into_trailers() {
                            Ok(trailers) => {
                                recording.trailers = Some(trailers.clone());
                                recording.body = None;
                                *trailers_sent = true;
                                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                            }
                            // A frame of a kind this version of http-body does not know.
                            Err(_) => Poll::Ready(Some(Err("unknown body frame".into()))),
                        },
                    },
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Once { body } => body.is_end_stream(),
            Kind::Shared {
                shared,
                position,
                trailers_sent,
            } => {
                let recording = lock(shared);
                recording.body.is_none()
                    && *position >= recording.seen
                    && (recording.trailers.is_none() || *trailers_sent)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Once { body } => body.size_hint(),
            Kind::Shared {
                shared, position, ..
            } => {
                let recording = lock(shared);
                let kept: u64 = recording
                    .frames
                    .get(*position..)
                    .unwrap_or_default()
                    .iter()
                    .map(|f| f.len() as u64)
                    .sum();
                let rest = recording
                    .body
                    .as_ref()
                    .map_or(SizeHint::with_exact(0), |b| b.size_hint());
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(kept));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(kept));
                }
                hint
            }
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Once { .. } => "once",
            Kind::Empty => "empty",
            Kind::Shared { .. } => "recorded",
        };
        f.debug_struct("ReplayBody").field("kind", &kind).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http_body_util::{BodyExt, Full};

    use super::*;

    /// A body that yields its chunks one poll at a time, then optional trailers.
    pub(crate) struct Chunks {
        chunks: VecDeque<Bytes>,
        trailers: Option<HeaderMap>,
    }

    impl Chunks {
        pub(crate) fn new(chunks: &[&'static str]) -> Self {
            Self {
                chunks: chunks
                    .iter()
                    .map(|c| Bytes::from_static(c.as_bytes()))
                    .collect(),
                trailers: None,
            }
        }
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if let Some(chunk) = self.chunks.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
        }
    }

    async fn collect<B: Body<Data = Bytes, Error = BoxError>>(body: B) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    async fn next<B: Body<Data = Bytes, Error = BoxError> + Unpin>(
        body: &mut B,
    ) -> Option<Frame<Bytes>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .map(|f| f.unwrap())
    }

    #[tokio::test]
    async fn replays_byte_for_byte_after_a_partial_send() {
        let (mut first, replay) =
            ReplayBody::recorded(Chunks::new(&["hello ", "streamed ", "world"]), 1024);
        // The first attempt sends two frames, then fails.
        assert_eq!(
            next(&mut first).await.unwrap().into_data().unwrap(),
            "hello "
        );
        assert_eq!(
            next(&mut first).await.unwrap().into_data().unwrap(),
            "streamed "
        );
        drop(first);
        // A retry replays the two, then reads the third from the original.
        let second = replay.replay().unwrap();
        assert_eq!(second.size_hint().lower(), 15);
        assert_eq!(collect(second).await, "hello streamed world");
        assert_eq!(
            collect(replay.replay().unwrap()).await,
            "hello streamed world"
        );
    }

    #[tokio::test]
    async fn full_bodies_are_kept_by_reference() {
        let payload = Bytes::from(vec![7u8; 10_000]);
        let (first, replay) = ReplayBody::recorded(Full::new(payload.clone()), 64 * 1024);
        let sent = collect(first).await;
        let again = collect(replay.replay().unwrap()).await;
        assert_eq!(sent, payload);
        assert_eq!(
            again.as_ptr(),
            payload.as_ptr(),
            "the same bytes, not a copy"
        );
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_sent_once_and_never_truncated() {
        let (first, replay) = ReplayBody::recorded(Chunks::new(&["0123456789", "abcdefghij"]), 15);
        assert_eq!(collect(first).await, "0123456789abcdefghij");
        assert_eq!(replay.check(), Err(NotReplayable::TooLarge));
        assert!(replay.replay().is_err());
    }

    #[tokio::test]
    async fn empty_bodies_cost_nothing_and_trailers_are_replayed() {
        let (empty, replay) = ReplayBody::recorded(Full::new(Bytes::new()), 10);
        assert!(empty.is_end_stream());
        assert!(replay.shared.is_none());

        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let mut body = Chunks::new(&["x"]);
        body.trailers = Some(trailers.clone());
        let (first, replay) = ReplayBody::recorded(body, 10);
        let collected = first.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        let again = replay.replay().unwrap().collect().await.unwrap();
        assert_eq!(again.trailers(), Some(&trailers));
    }

    #[tokio::test]
    async fn once_passes_through() {
        let body = ReplayBody::once(Full::new(Bytes::from_static(b"abc")));
        assert_eq!(collect(body).await, "abc");
    }
}
