"""The torch-free runtime: tokenizer, schedulers, backends and the denoising loop."""
