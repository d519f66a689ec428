use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::{cqueue, squeue};

mod slab_list;

use slab::Slab;
pub(crate) use slab_list::SlabListIndices;
use slab_list::SlabListEntry;

use crate::runtime::{driver, CONTEXT};

/// A SlabList is used to hold unserved completions.
///
/// This is relevant to multi-completion Operations,
/// which require an unknown number of CQE events to be
/// captured before completion.
pub(crate) type Completion = SlabListEntry<CqeResult>;

/// An unsubmitted oneshot operation.
pub struct UnsubmittedOneshot<D: 'static, T: OneshotOutputTransform<StoredData = D>> {
    stable_data: D,
    post_op: T,
    sqe: squeue::Entry,
}

impl<D, T: OneshotOutputTransform<StoredData = D>> UnsubmittedOneshot<D, T> {
    /// Construct a new operation for later submission.
    pub fn new(stable_data: D, post_op: T, sqe: squeue::Entry) -> Self {
        Self {
            stable_data,
            post_op,
            sqe,
        }
    }

    /// Submit an operation to the driver for batched entry to the kernel.
    pub fn submit(self) -> InFlightOneshot<D, T> {
        let handle = CONTEXT
            .with(|x| x.handle())
            .expect("Could not submit op; not in runtime context");

        self.submit_with_driver(&handle)
    }

    fn submit_with_driver(self, driver: &driver::Handle) -> InFlightOneshot<D, T> {
        let index = driver.submit_op_2(self.sqe);

        let driver = driver.into();

        let inner = InFlightOneshotInner {
            index,
            driver,
            stable_data: self.stable_data,
            post_op: self.post_op,
        };

        InFlightOneshot { inner: Some(inner) }
    }
}

/// An in-progress oneshot operation which can be polled for completion.
pub struct InFlightOneshot<D: 'static, T: OneshotOutputTransform<StoredData = D>> {
    inner: Option<InFlightOneshotInner<D, T>>,
}

struct InFlightOneshotInner<D, T: OneshotOutputTransform<StoredData = D>> {
    driver: driver::WeakHandle,
    index: usize,
    stable_data: D,
    post_op: T,
}

impl<D: Unpin, T: OneshotOutputTransform<StoredData = D> + Unpin> Future for InFlightOneshot<D, T> {
    type Output = T::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();

        let inner = this
            .inner
            .as_mut()
            .expect("Cannot poll already-completed operation");

        let index = inner.index;

        let upgraded = inner
            .driver
            .upgrade()
            .expect("Failed to poll op: driver no longer exists");

        let cqe = ready!(upgraded.poll_op_2(index, cx));

        let inner = this.inner.take().unwrap();

        Poll::Ready(
            inner
                .post_op
                .transform_oneshot_output(inner.stable_data, cqe),
        )
    }
}

impl<D: 'static, T: OneshotOutputTransform<StoredData = D>> InFlightOneshot<D, T> {
    /// The user data of the operation while it is in flight, which a
    /// cancel names it by (ringlb patch 5).
    pub fn user_data(&self) -> Option<u64> {
        self.inner.as_ref().map(|inner| inner.index as u64)
    }
}

impl<D: 'static, T: OneshotOutputTransform<StoredData = D>> Drop for InFlightOneshot<D, T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            if let Some(driver) = inner.driver.upgrade() {
                driver.remove_op_2(inner.index, inner.stable_data)
            }
        }
    }
}

/// What a multishot operation keeps in the driver while it runs (ringlb
/// patch 2): told of every completion that nobody will take, once its
/// [`InFlightMultishot`] was dropped before the last one, so it can give
/// back what the kernel handed over with it (a provided buffer).
pub trait MultishotData: 'static {
    /// A completion, with these CQE flags, that nobody will take.
    fn discard(&mut self, flags: u32);

    /// The same, with the completion's result too (ringlb patch 6), for
    /// data that learns from it (a zero-copy send's notification says
    /// whether the kernel copied after all); by default only the flags.
    fn discard_result(&mut self, result: &io::Result<u32>, flags: u32) {
        let _ = result;
        self.discard(flags)
    }
}

/// Told of every completion of a multishot operation when the driver reaps
/// it, in the order the kernel posted them across every operation, before
/// any task sees it (ringlb patch 7): for state that depends on that order,
/// such as where in a provided-buffer ring a receive bundle's buffers are.
/// It runs inside the driver: it must not submit or touch the runtime.
pub trait ReapHook: 'static {
    /// A completion with this raw result and these CQE flags was reaped.
    fn reaped(&self, result: i32, flags: u32);
}

/// An unsubmitted multishot operation (ringlb patch 2).
pub struct UnsubmittedMultishot<D: MultishotData> {
    data: D,
    sqe: squeue::Entry,
    hook: Option<Rc<dyn ReapHook>>,
}

impl<D: MultishotData> UnsubmittedMultishot<D> {
    /// Construct a new multishot operation for later submission.
    pub fn new(data: D, sqe: squeue::Entry) -> Self {
        Self {
            data,
            sqe,
            hook: None,
        }
    }

    /// The same, with `hook` told of each completion as it is reaped, also
    /// after the operation was dropped (ringlb patch 7).
    pub fn with_reap_hook(data: D, sqe: squeue::Entry, hook: Rc<dyn ReapHook>) -> Self {
        Self {
            data,
            sqe,
            hook: Some(hook),
        }
    }

    /// Submit the operation to the driver for batched entry to the kernel.
    pub fn submit(self) -> InFlightMultishot<D> {
        let handle = CONTEXT
            .with(|x| x.handle())
            .expect("Could not submit op; not in runtime context");
        let index = handle.submit_multishot_2(self.sqe, self.hook);
        InFlightMultishot {
            op: Some(((&handle).into(), index)),
            data: std::mem::ManuallyDrop::new(self.data),
        }
    }
}

/// A multishot operation in flight (ringlb patch 2): every completion the
/// kernel posts for it is handed out in order by [`poll_next`], the last
/// being the first without IORING_CQE_F_MORE. Dropped before that, the
/// driver keeps its data and passes each later completion to
/// [`MultishotData::discard`].
///
/// [`poll_next`]: InFlightMultishot::poll_next
pub struct InFlightMultishot<D: MultishotData> {
    /// The driver and the operation's slot; none once the last completion
    /// was handed out.
    op: Option<(driver::WeakHandle, usize)>,
    /// What the operation keeps; moved to the driver if dropped early (not
    /// an `Option`, so an `Option` of this takes no more room).
    data: std::mem::ManuallyDrop<D>,
}

impl<D: MultishotData> InFlightMultishot<D> {
    /// The next completion, as its result and CQE flags; `None` after the
    /// last one.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(io::Result<u32>, u32)>> {
        let Some((driver, index)) = &self.op else {
            return Poll::Ready(None);
        };
        let upgraded = driver
            .upgrade()
            .expect("Failed to poll op: driver no longer exists");
        let cqe = ready!(upgraded.poll_next_2(*index, cx));
        if !io_uring::cqueue::more(cqe.flags) {
            // The driver has removed the operation.
            self.op = None;
        }
        Poll::Ready(Some((cqe.result, cqe.flags)))
    }

    /// Whether the last completion was handed out.
    pub fn is_done(&self) -> bool {
        self.op.is_none()
    }

    /// Ready once at least `n` completions arrived that were not handed out
    /// yet; until then, each new completion wakes the task.
    pub fn poll_backlog(&mut self, cx: &mut Context<'_>, n: usize) -> Poll<()> {
        match &self.op {
            Some((driver, index)) => driver
                .upgrade()
                .map_or(Poll::Pending, |d| d.poll_backlog_2(*index, n, cx)),
            None => Poll::Pending,
        }
    }

    /// The next completion, if one has arrived and `want` takes it (given
    /// its result and CQE flags); never waits (ringlb patch 8).
    pub fn next_if(
        &mut self,
        want: impl FnOnce(&io::Result<u32>, u32) -> bool,
    ) -> Option<(io::Result<u32>, u32)> {
        let (driver, index) = self.op.as_ref()?;
        let cqe = driver.upgrade()?.next_if_2(*index, want)?;
        if !io_uring::cqueue::more(cqe.flags) {
            // The driver has removed the operation.
            self.op = None;
        }
        Some((cqe.result, cqe.flags))
    }

    /// The operation's user_data in the ring, for an IORING_OP_ASYNC_CANCEL;
    /// `None` after the last completion.
    pub fn user_data(&self) -> Option<u64> {
        self.op.as_ref().map(|(_, index)| *index as u64)
    }

    /// What the operation keeps.
    pub fn data(&self) -> &D {
        &self.data
    }
}

impl<D: MultishotData> Drop for InFlightMultishot<D> {
    fn drop(&mut self) {
        // SAFETY: `data` is taken here, once, and never touched again: this
        // is `drop`, so nothing reads `self.data` afterwards, and being
        // `ManuallyDrop` it is not dropped a second time.
        let data = unsafe { std::mem::ManuallyDrop::take(&mut self.data) };
        if let Some((driver, index)) = self.op.take() {
            if let Some(driver) = driver.upgrade() {
                driver.remove_multishot(index, Box::new(data))
            }
        }
    }
}

/// Transforms the output of a oneshot operation into a more user-friendly format.
pub trait OneshotOutputTransform {
    /// The final output after the transformation.
    type Output;
    /// The stored data within the op.
    type StoredData;
    /// Transform the stored data and the cqe into the final output.
    fn transform_oneshot_output(self, data: Self::StoredData, cqe: cqueue::Entry) -> Self::Output;
}

/// In-flight operation
pub(crate) struct Op<T: 'static, CqeType = SingleCQE> {
    driver: driver::WeakHandle,
    // Operation index in the slab
    index: usize,

    // Per-operation data
    data: Option<T>,

    // CqeType marker
    _cqe_type: PhantomData<CqeType>,
}

/// A Marker for Ops which expect only a single completion event
pub(crate) struct SingleCQE;

/// A Marker for Operations will process multiple completion events,
/// which combined resolve to a single Future value
pub(crate) struct MultiCQEFuture;

pub(crate) trait Completable {
    type Output;
    /// `complete` will be called for cqe's do not have the `more` flag set
    fn complete(self, cqe: CqeResult) -> Self::Output;
}

pub(crate) trait Updateable: Completable {
    /// Update will be called for cqe's which have the `more` flag set.
    /// The Op should update any internal state as required.
    fn update(&mut self, cqe: CqeResult);
}

#[allow(dead_code)]
pub(crate) enum Lifecycle {
    /// The operation has been submitted to uring and is currently in-flight
    Submitted,

    /// The submitter is waiting for the completion of the operation
    Waiting(Waker),

    /// The submitter no longer has interest in the operation result. The state
    /// must be passed to the driver and held until the operation completes.
    Ignored(Box<dyn std::any::Any>),

    /// A multishot operation whose submitter went away before its last
    /// completion (ringlb patch 2): each later completion is discarded
    /// through its data.
    IgnoredMultishot(Box<dyn MultishotData>, Option<Rc<dyn ReapHook>>),

    /// A multishot operation (ringlb patch 2): its completions not handed
    /// out yet, in order, and the task to wake when one arrives; and the
    /// hook told of each as it is reaped (patch 7).
    Streaming(SlabListIndices, Option<Waker>, Option<Rc<dyn ReapHook>>),

    /// The operation has completed with a single cqe result
    Completed(cqueue::Entry),

    /// One or more completion results have been recieved
    /// This holds the indices uniquely identifying the list within the slab
    CompletionList(SlabListIndices),
}

/// `IORING_CQE_F_NOTIF` (linux/io_uring.h): the completion is a zero-copy
/// send's notification.
const IORING_CQE_F_NOTIF: u32 = 1 << 3;

/// A single CQE entry
pub(crate) struct CqeResult {
    pub(crate) result: io::Result<u32>,
    pub(crate) flags: u32,
}

impl From<cqueue::Entry> for CqeResult {
    fn from(cqe: cqueue::Entry) -> Self {
        let res = cqe.result();
        let flags = cqe.flags();
        // A zero-copy send's notification (IORING_CQE_F_NOTIF) carries
        // flags in its result, the top bit among them, not an errno
        // (ringlb patch 6); negating i32::MIN would overflow.
        let result = if res >= 0 || flags & IORING_CQE_F_NOTIF != 0 {
            Ok(res as u32)
        } else {
            Err(io::Error::from_raw_os_error(-res))
        };
        CqeResult { result, flags }
    }
}

impl<T, CqeType> Op<T, CqeType> {
    /// Create a new operation
    pub(super) fn new(driver: driver::WeakHandle, data: T, index: usize) -> Self {
        Op {
            driver,
            index,
            data: Some(data),
            _cqe_type: PhantomData,
        }
    }

    pub(super) fn index(&self) -> usize {
        self.index
    }

    pub(super) fn take_data(&mut self) -> Option<T> {
        self.data.take()
    }

    pub(super) fn insert_data(&mut self, data: T) {
        self.data = Some(data);
    }
}

impl<T> Future for Op<T, SingleCQE>
where
    T: Unpin + 'static + Completable,
{
    type Output = T::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.driver
            .upgrade()
            .expect("Not in runtime context")
            .poll_op(self.get_mut(), cx)
    }
}

impl<T> Future for Op<T, MultiCQEFuture>
where
    T: Unpin + 'static + Completable + Updateable,
{
    type Output = T::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.driver
            .upgrade()
            .expect("Not in runtime context")
            .poll_multishot_op(self.get_mut(), cx)
    }
}

/// The operation may have pending cqe's not yet processed.
/// To manage this, the lifecycle associated with the Op may if required
/// be placed in LifeCycle::Ignored state to handle cqe's which arrive after
/// the Op has been dropped.
impl<T, CqeType> Drop for Op<T, CqeType> {
    fn drop(&mut self) {
        self.driver
            .upgrade()
            .expect("Not in runtime context")
            .remove_op(self)
    }
}

impl Lifecycle {
    pub(crate) fn complete(
        &mut self,
        completions: &mut Slab<Completion>,
        cqe: cqueue::Entry,
    ) -> bool {
        use std::mem;

        match mem::replace(self, Lifecycle::Submitted) {
            x @ Lifecycle::Submitted | x @ Lifecycle::Waiting(..) => {
                if io_uring::cqueue::more(cqe.flags()) {
                    let mut list = SlabListIndices::new().into_list(completions);
                    list.push(cqe.into());
                    *self = Lifecycle::CompletionList(list.into_indices());
                } else {
                    *self = Lifecycle::Completed(cqe);
                }
                if let Lifecycle::Waiting(waker) = x {
                    // waker is woken to notify cqe has arrived
                    // Note: Maybe defer calling until cqe with !`more` flag set?
                    waker.wake();
                }
                false
            }

            lifecycle @ Lifecycle::Ignored(..) => {
                if io_uring::cqueue::more(cqe.flags()) {
                    // Not yet complete. The Op has been dropped, so we can drop the CQE
                    // but we must keep the lifecycle alive until no more CQE's expected
                    *self = lifecycle;
                    false
                } else {
                    // This Op has completed, we can drop
                    true
                }
            }

            Lifecycle::Streaming(indices, waker, hook) => {
                if let Some(hook) = &hook {
                    hook.reaped(cqe.result(), cqe.flags());
                }
                let mut list = indices.into_list(completions);
                list.push(cqe.into());
                *self = Lifecycle::Streaming(list.into_indices(), None, hook);
                if let Some(waker) = waker {
                    waker.wake();
                }
                false
            }

            Lifecycle::IgnoredMultishot(mut data, hook) => {
                if let Some(hook) = &hook {
                    hook.reaped(cqe.result(), cqe.flags());
                }
                let cqe = CqeResult::from(cqe);
                data.discard_result(&cqe.result, cqe.flags);
                if io_uring::cqueue::more(cqe.flags) {
                    *self = Lifecycle::IgnoredMultishot(data, hook);
                    false
                } else {
                    true
                }
            }

            Lifecycle::Completed(..) => {
                // Completions with more flag set go straight onto the slab,
                // and are handled in Lifecycle::CompletionList.
                // To construct Lifecycle::Completed, a CQE with `more` flag unset was received
                // we shouldn't be receiving another.
                unreachable!("invalid operation state")
            }

            Lifecycle::CompletionList(indices) => {
                // A completion list may contain CQE's with and without `more` flag set.
                // Only the final one may have `more` unset, although we don't check.
                let mut list = indices.into_list(completions);
                list.push(cqe.into());
                *self = Lifecycle::CompletionList(list.into_indices());
                false
            }
        }
    }
}
