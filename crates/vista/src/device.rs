//! Compute device selection and process set-up.
