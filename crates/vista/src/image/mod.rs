//! Image decoding and preprocessing (placeholder: being written).
