"""Checkpoint conversion (needs the `[export]` extra: torch, diffusers, transformers): `convert` in
`sdcpu.export.convert`. Nothing is imported here, so that the torch-free checks (safetensors headers)
can be used, and tested, without torch."""
