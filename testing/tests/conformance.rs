//! The in-memory backend keeps the backend contract, alone and behind a `Faulty` with no
//! faults configured.

use storage::conformance::check_backend;
use testing::{Faulty, MemoryStorage};

#[tokio::test]
async fn memory_keeps_the_backend_contract() {
    check_backend(&MemoryStorage::new()).await;
}

#[tokio::test]
async fn a_faulty_wrapper_without_faults_keeps_the_backend_contract() {
    check_backend(&Faulty::builder(MemoryStorage::new()).build()).await;
}
