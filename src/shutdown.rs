//! The shutdown flag every long-running loop watches.

use tokio::sync::watch;

/// Resolves once `shutdown` is true (never if its sender is gone without saying so).
pub async fn until_shutdown(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
