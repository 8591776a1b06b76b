//! Cost of a circuit breaker in CLOSED state, Keel beside its peer `recloser`, in one run.
//!
//! `cargo bench -p keel-resilience --bench breaker -- --measurement-time 3 --warm-up-time 1`
//!
//! Every benchmark polls the same ready future (`Ok(n)`) once with a no-op waker:
//! - `bare`: the future alone — the baseline;
//! - `keel`: through `CircuitBreaker::call` (async, records the outcome);
//! - `keel/layer`: through Keel's tower `CircuitBreakerService` (`call` + response future);
//! - `recloser`: through `recloser::AsyncRecloser::call`, the peer's async API;
//! - `recloser/sync`: through `recloser::Recloser::call` with a closure, its sync API.
//!
//! `…/contended` variants run the same loop on two threads sharing one breaker; the time is per
//! call per thread. `…/failing_1pct` variants make every hundredth call fail (the breaker stays
//! closed), which keeps a failure in the window and so exercises Keel's ring rather than its
//! all-successes fast path. Both breakers keep a window of the last 100 calls. At the end a
//! summary line gives each breaker's added nanoseconds per call (its time minus `bare`) and
//! Keel's ratio to recloser's async API.

use std::future::Future;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Barrier;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::Criterion;
use futures::FutureExt;
use keel_resilience::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer};
use recloser::{AsyncRecloser, Recloser};
use tower::{Layer, Service};

const WINDOW: u32 = 100;

fn keel() -> CircuitBreaker {
    CircuitBreaker::new(
        "bench",
        CircuitBreakerConfig {
            sliding_window_size: WINDOW,
            minimum_number_of_calls: WINDOW,
            ..CircuitBreakerConfig::default()
        },
    )
    .expect("valid config")
}

fn recloser() -> Recloser {
    Recloser::custom()
        .error_rate(0.5)
        .closed_len(WINDOW as usize)
        .half_open_len(10)
        .open_wait(Duration::from_secs(30))
        .build()
}

#[inline(never)]
fn work(n: u64) -> impl Future<Output = Result<u64, ()>> {
    std::future::ready(Ok(black_box(n)))
}

/// Fails one call in a hundred.
#[inline(never)]
fn flaky(n: u64) -> impl Future<Output = Result<u64, ()>> {
    std::future::ready(if n.is_multiple_of(100) {
        Err(())
    } else {
        Ok(black_box(n))
    })
}

/// Run `f` on two threads at once, `iters` times each; the wall time of the slower thread.
fn contended<F: Fn(u64) + Sync>(iters: u64, f: F) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        let run = || {
            barrier.wait();
            let started = Instant::now();
            for i in 0..iters {
                f(i);
            }
            started.elapsed()
        };
        let a = scope.spawn(run);
        let b = scope.spawn(run);
        a.join()
            .expect("bench thread")
            .max(b.join().expect("bench thread"))
    })
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker");

    group.bench_function("bare", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            work(n).now_or_never()
        })
    });

    let breaker = keel();
    group.bench_function("keel", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            breaker.call(work(n)).now_or_never()
        })
    });

    let inner = tower::service_fn(|n: u64| {
        std::future::ready(Ok::<_, std::convert::Infallible>(black_box(n)))
    });
    let mut service = CircuitBreakerLayer::new(keel()).layer(inner);
    let waker = futures::task::noop_waker();
    group.bench_function("keel/layer", |b| {
        let mut cx = Context::from_waker(&waker);
        let mut n = 0;
        b.iter(|| {
            n += 1;
            assert!(matches!(service.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            service.call(n).now_or_never()
        })
    });

    let async_recloser = AsyncRecloser::from(recloser());
    group.bench_function("recloser", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            async_recloser.call(work(n)).now_or_never()
        })
    });

    let sync_recloser = recloser();
    group.bench_function("recloser/sync", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            sync_recloser.call(|| black_box(Ok::<u64, ()>(black_box(n))))
        })
    });

    let breaker = keel();
    group.bench_function("keel/failing_1pct", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            breaker.call(flaky(n)).now_or_never()
        })
    });

    let async_recloser = AsyncRecloser::from(recloser());
    group.bench_function("recloser/failing_1pct", |b| {
        let mut n = 0;
        b.iter(|| {
            n += 1;
            async_recloser.call(flaky(n)).now_or_never()
        })
    });

    group.bench_function("bare/contended", |b| {
        b.iter_custom(|iters| {
            contended(iters, |i| {
                black_box(work(i).now_or_never());
            })
        })
    });

    let breaker = keel();
    group.bench_function("keel/contended", |b| {
        b.iter_custom(|iters| {
            contended(iters, |i| {
                black_box(breaker.call(work(i)).now_or_never());
            })
        })
    });

    let async_recloser = AsyncRecloser::from(recloser());
    group.bench_function("recloser/contended", |b| {
        b.iter_custom(|iters| {
            contended(iters, |i| {
                black_box(async_recloser.call(work(i)).now_or_never());
            })
        })
    });

    let sync_recloser = recloser();
    group.bench_function("recloser/sync/contended", |b| {
        b.iter_custom(|iters| {
            contended(iters, |i| {
                let _ = black_box(sync_recloser.call(|| black_box(Ok::<u64, ()>(black_box(i)))));
            })
        })
    });

    group.finish();
}

/// Criterion's point estimate (mean, ns) of `breaker/<id>` from this run, if written.
fn estimate(id: &str) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = dir
        .join("criterion/breaker")
        .join(id.replace('/', "_"))
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn summary() {
    let line = |suffix: &str| -> Option<String> {
        let bare = estimate(&format!("bare{suffix}"))?;
        let keel = estimate(&format!("keel{suffix}"))? - bare;
        let recloser = estimate(&format!("recloser{suffix}"))? - bare;
        let sync = estimate(&format!("recloser/sync{suffix}"))? - bare;
        Some(format!(
            "added ns/call{suffix}: keel {keel:.1}, recloser {recloser:.1} (sync {sync:.1}); keel/recloser {:.2}x",
            keel / recloser
        ))
    };
    let failing = (|| {
        let keel = estimate("keel/failing_1pct")?;
        let recloser = estimate("recloser/failing_1pct")?;
        Some(format!(
            "ns/call with 1% failures: keel {keel:.1}, recloser {recloser:.1}"
        ))
    })();
    if let Some(line) = failing {
        println!("summary: {line}");
    }
    for suffix in ["", "/contended"] {
        match line(suffix) {
            Some(line) => println!("summary: {line}"),
            None => println!("summary{suffix}: not all benchmarks ran (filtered?)"),
        }
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
    summary();
}
