//! The one memory budget of the agent process: a part's bytes are reserved
//! before it is filled and freed when its upload ends, and restores hold
//! their share per object in flight, so every transfer together stays
//! within `--memory-budget`.

use crate::error::{Error, Result};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The bytes all part buffers of the process may hold at once.
#[derive(Debug, Clone)]
pub struct Budget {
    kib: Arc<tokio::sync::Semaphore>,
    bytes: u64,
}

/// What one object streaming from the store may buffer on its way to Qdrant
/// or to disk: the body channel's 8 chunks and the HTTP clients' read and
/// write buffers (a few hundred KiB each at most). A
/// restore holds it from the budget per object (per range in FILE mode), so
/// downloads share the one budget with uploads.
pub const DOWNLOAD_HOLD: u64 = 4 << 20;

/// The smallest budget: two parts of S3's minimum size and some room.
pub const MIN_BUDGET: u64 = 16 << 20;

static BUDGET: OnceLock<Budget> = OnceLock::new();

impl Budget {
    pub fn new(bytes: u64) -> Self {
        let bytes = bytes.max(MIN_BUDGET);
        Self {
            kib: Arc::new(tokio::sync::Semaphore::new((bytes >> 10) as usize)),
            bytes,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The bytes buffers hold now.
    pub fn in_use(&self) -> u64 {
        let free = (self.kib.available_permits() as u64) << 10;
        (self.bytes >> 10 << 10).saturating_sub(free)
    }

    /// Sets the process's budget; the first call wins.
    pub fn install(bytes: u64) -> Budget {
        BUDGET.get_or_init(|| Budget::new(bytes)).clone()
    }

    /// The process's budget, once installed.
    pub fn installed() -> Option<Budget> {
        BUDGET.get().cloned()
    }

    /// Reserves `len` bytes, waiting at most `patience` for uploads to free
    /// them.
    pub(crate) async fn reserve(
        &self,
        len: u64,
        patience: Duration,
        cancel: &CancellationToken,
    ) -> Result<tokio::sync::OwnedSemaphorePermit> {
        if len > self.bytes {
            return Err(self.too_small(len));
        }
        let kib = len.div_ceil(1024) as u32;
        tokio::select! {
            _ = cancel.cancelled() => Err(Error::Cancelled),
            r = tokio::time::timeout(patience, self.kib.clone().acquire_many_owned(kib)) => match r {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(_)) => Err(Error::Internal("memory budget closed".into())),
                Err(_) => Err(Error::Stalled(format!(
                    "no memory of the agent's budget ({}) was freed in {}s",
                    crate::units::human(self.bytes),
                    patience.as_secs()
                ))),
            },
        }
    }

    /// Holds `len` bytes now if they are free, else nothing: for a reader
    /// that can do with less when the budget is busy.
    pub fn try_hold(&self, len: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if len > self.bytes {
            return None;
        }
        let kib = u32::try_from(len.div_ceil(1024)).ok()?;
        self.kib.clone().try_acquire_many_owned(kib).ok()
    }

    /// Holds `len` bytes for a download's buffers while the permit lives.
    pub async fn hold(
        &self,
        len: u64,
        cancel: &CancellationToken,
    ) -> Result<tokio::sync::OwnedSemaphorePermit> {
        self.reserve(len.min(self.bytes), crate::defaults::STALL_TIMEOUT, cancel)
            .await
    }

    pub fn too_small(&self, part: u64) -> Error {
        Error::Invalid(format!(
            "a part of {} does not fit the agent's memory budget of {}: raise --memory-budget or lower --part-size",
            crate::units::human(part),
            crate::units::human(self.bytes)
        ))
    }
}
