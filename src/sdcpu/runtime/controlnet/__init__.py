"""ControlNet at run time (Zhang et al., https://arxiv.org/abs/2302.05543): converted ControlNet folders
(format/controlnet.py), their residuals added to any converted UNet by a graph pass (residuals.py),
computed at every UNet call by a hook (hook.py), from control images an annotator may make
(annotators.py)."""

# ONNX Runtime cannot be given new inputs at run time (the runtime does without the onnx package): an ONNX
# folder's UNet has a second graph with them, written at convert (export/controlnet.py).
RESIDUAL_GRAPH = "model_controlnet.onnx"
NEEDS_CONVERT = (
    "this ONNX folder was converted without the UNet graph that takes ControlNet's inputs (unet/"
    f"{RESIDUAL_GRAPH}): convert it again with this sdcpu, or run it with --backend openvino"
)
