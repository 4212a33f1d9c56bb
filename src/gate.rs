//! A wake gate: poll a source again only once it has woken the task.
//!
//! Each task's loop is one `select!` over several sources (the stop token,
//! a timer, idle channels, the websocket's read side, the busy channel).
//! `select!` polls every source on every pass, and a loop makes two passes
//! per event (one that finds it, one that finds nothing and sleeps), so a
//! flood on one source makes the idle ones pay a poll each time, for a
//! `Pending` that was already known: the stop token takes a lock in
//! `Notify`, the timer walks to its `Sleep`, and the websocket's read side
//! goes through tungstenite, tokio-rustls and the socket registration.
//! Callgrind at 1000 msg/s counted these polls at about a tenth of the
//! daemon's user-space instructions (see docs/performance.md).
//!
//! A [`Gate`] remembers whether the source woke: it hands the source a
//! waker of its own, which sets a flag and wakes the task. While the flag
//! is down, [`Gate::poll`] answers `Pending` without polling the source
//! (one atomic swap). By the `Future`/`Stream` contract a source that
//! answered `Pending` has kept the waker it was given and will wake it when
//! it may make progress, so skipping its polls until then changes nothing
//! but their cost. After `Ready` the gate stays open: a stream may have
//! more at once, a timer must be polled to be armed again.
//!
//! A gated source must be polled through its gate only: a poll elsewhere
//! would hand the source another waker in place of the gate's, and its
//! next wake would not open the gate. (`try_recv` registers nothing and is
//! fine.)

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Remembers whether its source woke since its last `Pending`.
pub struct Gate {
    flag: Arc<Flag>,
    /// The gate's waker, made once (handed to the source on each poll).
    waker: Waker,
}

struct Flag {
    woken: AtomicBool,
    /// The task to wake when the source wakes.
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// An open gate: the first poll reaches the source.
    pub fn new() -> Self {
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(flag.clone());
        Gate { flag, waker }
    }

    /// Polls the source with `poll` if it woke since it last answered
    /// `Pending` (or never answered); otherwise answers `Pending` at once.
    /// Either way the task is woken when the source wakes.
    pub fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let r = poll(&mut Context::from_waker(&self.waker));
        if r.is_ready() {
            self.flag.woken.store(true, Ordering::Release);
        }
        r
    }

    /// The gated source as a future, for a `select!` arm:
    /// `gate.wait(|cx| rx.poll_recv(cx))`.
    pub fn wait<'a, T: 'a>(
        &'a self,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T> + 'a,
    ) -> impl Future<Output = T> + 'a {
        std::future::poll_fn(move |cx| self.poll(cx, &mut poll))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::pin::pin;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn a_source_is_polled_again_only_after_it_woke_and_its_wake_reaches_the_task() {
        let gate = Gate::new();
        let (task, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let polls = std::cell::Cell::new(0);
        let kept = std::cell::RefCell::new(None::<Waker>);
        let source = |cx: &mut Context<'_>| {
            polls.set(polls.get() + 1);
            *kept.borrow_mut() = Some(cx.waker().clone());
            Poll::<()>::Pending
        };
        assert!(gate.poll(&mut cx, source).is_pending());
        assert!(gate.poll(&mut cx, source).is_pending());
        assert!(gate.poll(&mut cx, source).is_pending());
        assert_eq!(polls.get(), 1, "no wake, no poll");
        kept.borrow_mut()
            .take()
            .expect("source kept a waker")
            .wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was woken");
        assert!(gate.poll(&mut cx, source).is_pending());
        assert_eq!(polls.get(), 2, "woken: polled once more");
        assert!(gate.poll(&mut cx, source).is_pending());
        assert_eq!(polls.get(), 2);
    }

    #[test]
    fn after_ready_the_next_poll_reaches_the_source() {
        let gate = Gate::new();
        let (_task, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut items = vec![3, 2, 1];
        let mut next = |_: &mut Context<'_>| match items.pop() {
            Some(i) => Poll::Ready(i),
            None => Poll::Pending, // (keeps no waker: test only)
        };
        assert_eq!(gate.poll(&mut cx, &mut next), Poll::Ready(1));
        assert_eq!(gate.poll(&mut cx, &mut next), Poll::Ready(2));
        assert_eq!(gate.poll(&mut cx, &mut next), Poll::Ready(3));
        assert!(gate.poll(&mut cx, &mut next).is_pending());
    }

    #[test]
    fn a_wake_during_the_poll_itself_opens_the_gate() {
        // What tokio does when the task's cooperative budget is spent.
        let gate = Gate::new();
        let (_task, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut polls = 0;
        let mut yielding = |cx: &mut Context<'_>| {
            polls += 1;
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        };
        assert!(gate.poll(&mut cx, &mut yielding).is_pending());
        assert!(gate.poll(&mut cx, &mut yielding).is_pending());
        assert_eq!(polls, 2);
    }

    #[tokio::test]
    async fn gated_channel_and_timer_in_a_select_loop_miss_nothing() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(8);
        let (busy_tx, mut busy_rx) = tokio::sync::mpsc::channel::<u32>(64);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let (rx_gate, tick_gate) = (Gate::new(), Gate::new());
        let sender = tokio::spawn(async move {
            for i in 0..50 {
                busy_tx.send(i).await.expect("busy");
                if i % 10 == 0 {
                    tx.send(i).await.expect("idle");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let (mut idle, mut busy, mut ticks) = (Vec::new(), 0, 0);
        let start = std::time::Instant::now();
        loop {
            tokio::select! {
                v = rx_gate.wait(|cx| rx.poll_recv(cx)) => match v {
                    Some(v) => idle.push(v),
                    None => break,
                },
                Some(_) = busy_rx.recv() => busy += 1,
                _ = tick_gate.wait(|cx| tick.poll_tick(cx)) => ticks += 1,
            }
        }
        let tens = start.elapsed().as_millis() / 10;
        sender.await.expect("sender");
        while busy_rx.try_recv().is_ok() {
            busy += 1; // ready together with the close of the idle channel
        }
        assert_eq!(idle, vec![0, 10, 20, 30, 40]);
        assert_eq!(busy, 50);
        // The first tick at once, then one every 10 ms: none missed.
        assert!(
            ticks >= tens && ticks <= tens + 2,
            "{ticks} ticks in {tens}0 ms"
        );
    }

    #[tokio::test]
    async fn a_gated_future_completes_when_its_source_does() {
        let token = tokio_util::sync::CancellationToken::new();
        let gate = Gate::new();
        let mut cancelled = pin!(token.cancelled());
        let mut waiting = pin!(poll_fn(|cx| gate.poll(cx, |cx| cancelled.as_mut().poll(cx))));
        let waker = futures_util::task::noop_waker();
        assert!(waiting
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the gated future saw the cancellation");
    }
}
