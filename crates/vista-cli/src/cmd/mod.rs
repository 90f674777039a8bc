pub mod classify;
pub mod common;
pub mod dino;
pub mod dupes;
pub mod embed;
pub mod index;
pub mod search;
pub mod segment;
