"""Architectures sdcpu knows without downloading anything: the single-file checkpoint presets."""
