use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::BoxError;

pin_project! {
    /// Future of [`FallbackExt::fallback`](super::FallbackExt::fallback).
    pub struct Fallback<A, F, B> {
        #[pin]
        first: A,
        f: Option<F>,
        #[pin]
        second: Option<B>,
    }
}

impl<A, F, B> Fallback<A, F, B> {
    pub(crate) fn new(first: A, f: F) -> Self {
        Self {
            first,
            f: Some(f),
            second: None,
        }
    }
}

impl<A, F, B, T, E, E2> Future for Fallback<A, F, B>
where
    A: Future<Output = Result<T, E>>,
    F: FnOnce(E) -> B,
    B: Future<Output = Result<T, E2>>,
{
    type Output = Result<T, E2>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(second) = this.second.as_mut().as_pin_mut() {
            return second.poll(cx);
        }
        match ready!(this.first.poll(cx)) {
            Ok(value) => Poll::Ready(Ok(value)),
            Err(error) => {
                let f = this.f.take().expect("Fallback polled after completion");
                this.second.set(Some(f(error)));
                this.second.as_pin_mut().expect("just set").poll(cx)
            }
        }
    }
}

impl<A, F, B> fmt::Debug for Fallback<A, F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("falling_back", &self.second.is_some())
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// Future of [`FallbackExt::fallback_value`](super::FallbackExt::fallback_value).
    pub struct FallbackValue<A, F> {
        #[pin]
        first: A,
        f: Option<F>,
    }
}

impl<A, F> FallbackValue<A, F> {
    pub(crate) fn new(first: A, f: F) -> Self {
        Self { first, f: Some(f) }
    }
}

impl<A, F, T, E> Future for FallbackValue<A, F>
where
    A: Future<Output = Result<T, E>>,
    F: FnOnce(E) -> T,
{
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(match ready!(this.first.poll(cx)) {
            Ok(value) => value,
            Err(error) => (this
                .f
                .take()
                .expect("FallbackValue polled after completion"))(error),
        })
    }
}

impl<A, F> fmt::Debug for FallbackValue<A, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackValue").finish_non_exhaustive()
    }
}

pin_project! {
    /// Response future of [`FallbackService`](super::FallbackService).
    pub struct ResponseFuture<A, F, B> {
        #[pin]
        inner: Fallback<A, F, B>,
    }
}

impl<A, F, B> ResponseFuture<A, F, B> {
    pub(crate) fn new(first: A, f: F) -> Self {
        Self {
            inner: Fallback::new(first, f),
        }
    }
}

impl<A, F, B, T, E> Future for ResponseFuture<A, F, B>
where
    A: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    F: FnOnce(BoxError) -> B,
    B: Future<Output = Result<T, BoxError>>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project().inner.project();
        if let Some(second) = this.second.as_mut().as_pin_mut() {
            return second.poll(cx);
        }
        match ready!(this.first.poll(cx)) {
            Ok(value) => Poll::Ready(Ok(value)),
            Err(error) => {
                let f = this
                    .f
                    .take()
                    .expect("ResponseFuture polled after completion");
                this.second.set(Some(f(error.into())));
                this.second.as_pin_mut().expect("just set").poll(cx)
            }
        }
    }
}

impl<A, F, B> fmt::Debug for ResponseFuture<A, F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}
