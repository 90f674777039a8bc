//! What the CLI and server call: zero-shot classification, embedding.
