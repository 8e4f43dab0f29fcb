//! End-to-end tests: the shipped static binary and EG's own launcher.

mod eg_payload;
mod images;
mod static_chroot;
