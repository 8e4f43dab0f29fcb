//! A `201 Created` answer that knows whether it reached the client.
//!
//! A kernel start can finish in the very instant its client hangs up: the handler has its
//! kernel, hyper notices the closed connection and drops the response unwritten, and a kernel
//! whose id nobody learned runs until the culler finds it (the 1000-cycle soak test hit this
//! once). The start routes therefore answer with an [`Announcement`] body: when the body is
//! dropped before hyper took its bytes, the kernel it announces is shut down. Once hyper has
//! the bytes they are in its write buffer, and a client that vanishes later is the same as one
//! that read the answer and forgot it.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::Stream;
use serde_json::Value;

use crate::kernels::Kernels;

/// The `201 Created` answer for a new kernel `kernel_id`, whose JSON `model` lives at
/// `location`. Dropped unsent, it shuts the kernel down.
pub(super) fn created(
    kernels: &Kernels,
    kernel_id: &str,
    location: &str,
    model: &Value,
) -> Response {
    let kernels = kernels.clone();
    let id = kernel_id.to_owned();
    let unclaimed = move || {
        tracing::warn!(kernel_id = %id, "the client hung up before the 201 reached it; shutting the kernel down");
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let tasks = kernels.tasks().clone();
        tasks.spawn(async move {
            if let Err(e) = kernels.shutdown(&id).await {
                tracing::debug!(kernel_id = %id, "unclaimed kernel: {e}");
            }
        });
    };
    let bytes = Bytes::from(model.to_string());
    let len = bytes.len();
    let mut resp = Response::new(Body::from_stream(Announcement::new(bytes, unclaimed)));
    *resp.status_mut() = StatusCode::CREATED;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, v);
    }
    resp
}

/// A one-chunk body that calls `unclaimed` if it is dropped before its chunk was taken.
struct Announcement<F: FnOnce()> {
    bytes: Option<Bytes>,
    unclaimed: Option<F>,
}

impl<F: FnOnce()> Announcement<F> {
    fn new(bytes: Bytes, unclaimed: F) -> Self {
        Announcement {
            bytes: Some(bytes),
            unclaimed: Some(unclaimed),
        }
    }
}

impl<F: FnOnce() + Unpin> Stream for Announcement<F> {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.unclaimed = None;
        Poll::Ready(this.bytes.take().map(Ok))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::from(self.bytes.is_some());
        (n, Some(n))
    }
}

impl<F: FnOnce()> Drop for Announcement<F> {
    fn drop(&mut self) {
        if let Some(unclaimed) = self.unclaimed.take() {
            unclaimed();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::StreamExt;

    use super::*;

    fn counted() -> (Arc<AtomicUsize>, impl FnOnce() + Unpin) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        (calls, move || {
            c.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[test]
    fn an_answer_dropped_unsent_gives_its_kernel_up() {
        let (calls, f) = counted();
        drop(Announcement::new(Bytes::from_static(b"{}"), f));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_taken_keeps_its_kernel() {
        let (calls, f) = counted();
        let mut a = Announcement::new(Bytes::from_static(b"{\"id\":1}"), f);
        assert_eq!(a.next().await.unwrap().unwrap(), &b"{\"id\":1}"[..]);
        drop(a);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_body_is_the_model_with_its_length() {
        let (calls, f) = counted();
        let mut a = Announcement::new(Bytes::from_static(b"{}"), f);
        assert_eq!(a.size_hint(), (1, Some(1)));
        assert!(a.next().await.is_some());
        assert!(a.next().await.is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }
}
