"""The torch-free runtime: pipelines (one per family), tasks, components, engines, schedulers and io."""
