//! CLIP: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision" (2021).
//! Reference: openai/CLIP `clip/model.py`, mlfoundations/open_clip `src/open_clip/model.py`,
//! huggingface/transformers `models/clip/modeling_clip.py`.

pub mod tokenizer;
