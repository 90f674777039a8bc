//! Model-agnostic building blocks.
