pub mod classify;
pub mod common;
pub mod embed;
