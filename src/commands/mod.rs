pub mod backup;
pub mod catalog;
pub mod info;
pub mod restore;
pub mod verify;
pub mod wal;
