//! [`Mvcc::released`]: the signal a process waits for before it opens the same directory
//! again. It must come only once the engine is closed, not when the last handle on the
//! `Mvcc` goes: the count reaches zero before the drop, and so the engine's close, runs.

use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use storage::{Cursor, Engine, Limits, MemoryEngine, Mvcc, RawBatch};

/// A memory engine whose drop (its "close") waits until the test lets it finish.
struct SlowClose {
    inner: MemoryEngine,
    closing: mpsc::Sender<()>,
    finish: Mutex<mpsc::Receiver<()>>,
}

impl Drop for SlowClose {
    fn drop(&mut self) {
        let _ = self.closing.send(());
        let _ = self.finish.lock().unwrap().recv_timeout(Duration::from_secs(30));
    }
}

impl Engine for SlowClose {
    fn get(&self, key: &[u8]) -> storage::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }

    fn cursor(&self) -> Box<dyn Cursor + '_> {
        self.inner.cursor()
    }

    fn write(&self, batch: RawBatch, sync: bool) -> storage::Result<()> {
        self.inner.write(batch, sync)
    }

    fn flush(&self) -> storage::Result<()> {
        Ok(())
    }
}

#[test]
fn released_comes_once_the_engine_is_closed_not_when_the_last_handle_goes() {
    let (closing_tx, closing) = mpsc::channel();
    let (finish, finish_rx) = mpsc::channel();
    let engine = SlowClose {
        inner: MemoryEngine::new(),
        closing: closing_tx,
        finish: Mutex::new(finish_rx),
    };
    let mvcc = Arc::new(Mvcc::open(Arc::new(engine), Limits::default()).unwrap());
    let released = mvcc.released();
    let handle = Arc::downgrade(&mvcc);
    assert_eq!(released.try_recv(), Err(TryRecvError::Empty), "open: not released");

    let dropping = std::thread::spawn(move || drop(mvcc));
    closing.recv_timeout(Duration::from_secs(30)).expect("the engine's close began");
    assert_eq!(handle.strong_count(), 0, "the last handle is gone");
    assert_eq!(released.try_recv(), Err(TryRecvError::Empty), "closing: not released yet");

    finish.send(()).unwrap();
    dropping.join().unwrap();
    assert_eq!(
        released.recv_timeout(Duration::from_secs(30)),
        Err(mpsc::RecvTimeoutError::Disconnected)
    );
}
