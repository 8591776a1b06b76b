use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Sleep;

use super::{Deadline, DeadlineExceeded};
use crate::BoxError;

pin_project! {
    /// Response future of [`DeadlineService`](super::DeadlineService).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Unbounded {
            #[pin]
            future: F,
        },
        Bounded {
            #[pin]
            future: TaskLocalFuture<Deadline, F>,
            #[pin]
            sleep: Sleep,
        },
        Expired,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn unbounded(future: F) -> Self {
        Self {
            kind: Kind::Unbounded { future },
        }
    }

    pub(crate) fn bounded(deadline: Deadline, future: F) -> Self
    where
        F: Future,
    {
        Self {
            kind: Kind::Bounded {
                future: deadline.scoped(future),
                sleep: tokio::time::sleep_until(deadline.instant()),
            },
        }
    }

    pub(crate) fn expired() -> Self {
        Self {
            kind: Kind::Expired,
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Unbounded { future } => future.poll(cx).map_err(Into::into),
            KindProj::Bounded { future, sleep } => {
                if let Poll::Ready(result) = future.poll(cx) {
                    return Poll::Ready(result.map_err(Into::into));
                }
                ready!(sleep.poll(cx));
                Poll::Ready(Err(DeadlineExceeded::new().into()))
            }
            KindProj::Expired => Poll::Ready(Err(DeadlineExceeded::new().into())),
        }
    }
}
