"""The pipelines, one per model family, keyed by the manifest's `family` (format/families.py). A family
is a `Pipeline` subclass that names its families (`class X(Pipeline, families=(...))`); importing its
module here registers it. `Pipeline.load` picks the class; a family with none is a clear error."""

from __future__ import annotations

from sdcpu.runtime.pipelines.base import Pipeline
from sdcpu.runtime.pipelines.sd import StableDiffusionPipeline
from sdcpu.runtime.pipelines.sdxl import StableDiffusionXLPipeline
from sdcpu.runtime.result import PipelineResult

__all__ = ["Pipeline", "PipelineResult", "StableDiffusionPipeline", "StableDiffusionXLPipeline"]
