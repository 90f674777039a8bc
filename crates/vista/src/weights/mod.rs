//! Foreign checkpoints: safetensors and PyTorch pickles, family detection and renaming.
