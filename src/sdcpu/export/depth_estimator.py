"""Convert a depth estimator (a transformers DPT folder or hub id, such as `Intel/dpt-hybrid-midas`, the
MiDaS network A1111's `depth_midas` module runs) into an annotator folder (format/annotator.py): the
ControlNet depth module's network, torch-free at run time (runtime/controlnet/depth.py).

The graph is depth2img's (export/families/sd.py `depth_estimator_spec`): `pixel_values` at its image
processor's size to `predicted_depth`, relative inverse depth (larger is nearer).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdcpu.errors import SdcpuError
from sdcpu.export.families.sd import depth_estimator_spec
from sdcpu.export.folders import versions, write_manifest
from sdcpu.export.quantize import component_precision
from sdcpu.export.writers import WRITERS
from sdcpu.format.annotator import ANNOTATOR_MANIFEST, KINDS, AnnotatorManifest
from sdcpu.format.graph_signature import read_inputs
from sdcpu.format.json_bounds import read_json_object
from sdcpu.format.manifest import GRAPH_FILE, describe_files

COMPONENT = KINDS["depth"]
PROCESSOR = "preprocessor_config.json"
WEIGHTS = "model.safetensors"
MODEL_TYPES = ("dpt",)  # transformers' DPTForDepthEstimation (MiDaS v3: DPT-Hybrid and DPT-Large)


def is_depth_estimator_folder(path: Path) -> bool:
    """Whether `path` is a transformers folder of a depth estimator sdcpu converts (from its config.json)."""
    config = path / "config.json"
    if not path.is_dir() or not config.is_file():
        return False
    try:
        data = read_json_object(config)
    except (OSError, ValueError, AttributeError):
        return False
    return data.get("model_type") in MODEL_TYPES and "DPTForDepthEstimation" in (data.get("architectures") or [])


def convert_depth_estimator(
    source: Path,
    staged: Path,
    target: tuple[str, str],
    progress: Callable[[str], None],
    *,
    named: str | None = None,
) -> AnnotatorManifest:
    """Export the depth estimator folder `source` into the new folder `staged`, manifest last."""
    from transformers import DPTForDepthEstimation

    fmt, precision = target
    start = time.perf_counter()
    try:
        model = DPTForDepthEstimation.from_pretrained(source).float().eval()
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise SdcpuError(f"cannot read the depth estimator in {source} ({err}); is it a complete folder?") from err
    processor = _processor(source, int(model.config.image_size))
    (staged / COMPONENT).mkdir(parents=True)
    exact = component_precision(precision, COMPONENT)
    names = WRITERS[fmt](depth_estimator_spec(model), staged / COMPONENT, exact)
    config = {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    (staged / COMPONENT / "config.json").write_text(json.dumps(config, indent=2, default=str))
    (staged / "feature_extractor").mkdir()
    (staged / "feature_extractor" / PROCESSOR).write_text(json.dumps(processor, indent=2))
    files = [f"{COMPONENT}/{name}" for name in [*names, "config.json"]] + [f"feature_extractor/{PROCESSOR}"]
    manifest = AnnotatorManifest(
        kind="depth",
        source=named or str(source.resolve()),
        format=fmt,
        precision=exact,
        files=describe_files(staged, files),
        inputs=read_inputs(staged / COMPONENT / GRAPH_FILE[fmt]),
        versions=versions(fmt),
        extra={"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    )
    write_manifest(staged, ANNOTATOR_MANIFEST, manifest.to_json())
    progress(f"depth estimator: exported to {fmt} {exact} in {time.perf_counter() - start:.1f} s")
    return manifest


def _processor(source: Path, size: int) -> dict[str, Any]:
    # Its image processor's settings; the graph takes the model's own size, so the resize goes there.
    given = dict(read_json_object(source / PROCESSOR)) if (source / PROCESSOR).is_file() else {}
    return given | {"size": {"height": size, "width": size}}
