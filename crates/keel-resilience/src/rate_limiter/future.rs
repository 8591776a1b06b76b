use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::RateLimited;
use crate::BoxError;

type Waiting<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

pin_project! {
    /// Response future of [`RateLimiterService`](super::RateLimiterService).
    pub struct ResponseFuture<F, T> {
        #[pin]
        kind: Kind<F, T>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, T> {
        Admitted {
            #[pin]
            future: F,
        },
        Waiting {
            future: Waiting<T>,
        },
        Rejected {
            error: Option<RateLimited>,
        },
    }
}

impl<F, T> ResponseFuture<F, T> {
    pub(crate) fn admitted(future: F) -> Self {
        Self {
            kind: Kind::Admitted { future },
        }
    }

    pub(crate) fn waiting(
        future: impl Future<Output = Result<T, BoxError>> + Send + 'static,
    ) -> Self {
        Self {
            kind: Kind::Waiting {
                future: Box::pin(future),
            },
        }
    }

    pub(crate) fn rejected(error: RateLimited) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Admitted { future } => future.poll(cx).map_err(Into::into),
            KindProj::Waiting { future } => future.as_mut().poll(cx),
            KindProj::Rejected { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion")
                .into())),
        }
    }
}

impl<F, T> fmt::Debug for ResponseFuture<F, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
