"""ControlNet at run time (Zhang et al., https://arxiv.org/abs/2302.05543): converted ControlNet folders
(format/controlnet.py), their residuals added to any converted UNet by a graph pass (residuals.py),
computed at every UNet call by a hook (hook.py), from control images an annotator may make
(annotators.py)."""

# ONNX Runtime cannot take them: new UNet inputs need the graph edited with the onnx package (not a runtime
# dependency) and a new session.
NEEDS_OPENVINO = "ControlNet needs the OpenVINO backend (--backend openvino), which adds its inputs to any UNet"
