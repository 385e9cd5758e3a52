"""ONNX Runtime backend (CPU execution provider, full graph optimisation).

Tensors inside the graph are made outputs (GraphInterface.outputs) without the `onnx` package, which
the runtime does not install: a serialized protobuf message followed by another one of the same type
parses as their merge, and repeated fields append. So the model's bytes, followed by a ModelProto that
holds only `graph { output { name, type: float tensor } }`, are the model with those outputs added
(https://protobuf.dev/programming-guides/encoding/#last-one-wins). Its external weights are then found
through the session option that names their folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sdcpu.errors import SdcpuError
from sdcpu.runtime.engines.base import Input, conform, whole

# onnx.proto field numbers: ModelProto.graph, GraphProto.output, ValueInfoProto.name and .type,
# TypeProto.tensor_type, TypeProto.Tensor.elem_type; TensorProto.FLOAT.
_GRAPH, _OUTPUT, _NAME, _TYPE, _TENSOR_TYPE, _ELEM_TYPE, _FLOAT = 7, 12, 1, 2, 1, 1, 1
_DTYPES = {
    f"tensor({name})": np.dtype(kind)
    for name, kind in [("float", np.float32), ("float16", np.float16), ("double", np.float64)]
    + [("int64", np.int64), ("int32", np.int32)]
}


def session_options(threads: int = 0) -> ort.SessionOptions:
    """Full graph optimisation, quiet logs, and every weight's DequantizeLinear folded at load.

    Folding: an int8 folder (export/quantize.py stores weights as int8 + DequantizeLinear) then runs the
    very graph and kernels of its fp32 folder, with fp32 weights in memory. Left unfolded, ONNX Runtime
    1.32 dequantized at every call and fed MatMuls with a weight computed at run time, a path no fp32
    folder takes; on an AMD Zen 5 (AVX-512, AVX-VNNI) it killed the process with SIGFPE while running the
    tiny int8 text encoder (not reproducible on Zen 3 or Zen 4). The folder stays int8 on disk; for int8
    weights in memory, use an OpenVINO folder."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, a thread per core
    # Disables QDQ rewrites (there are none in sdcpu's graphs) and lets constant folding fold DequantizeLinear.
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return options


class OnnxRuntimeModel:
    compute_precision: str | None = "f32"  # the CPU execution provider's float kernels

    def __init__(self, path: Path, lazy: bool = False, extra_outputs: tuple[str, ...] = (), threads: int = 0):
        self.path, self.extra_outputs, self.threads = path, extra_outputs, threads
        self._dtypes: dict[str, np.dtype] = {}
        self._session: ort.InferenceSession | None = None if lazy else self._open()
        # Shrink the CPU memory arena back after every run. Kept, it only grows: an int8 SD 1.5 UNet
        # at 512x512 held 4.8 GB after its second step, against 0.05 GB with this and the same step time.
        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def _open(self) -> ort.InferenceSession:
        # Extra outputs are declared float32, the type of the only ones asked for (DeepCache's features).
        options = session_options(self.threads)
        model: str | bytes = str(self.path)
        if self.extra_outputs:
            model = self.path.read_bytes() + b"".join(_float_output(name) for name in self.extra_outputs)
            weights = "session.model_external_initializers_file_folder_path"
            options.add_session_config_entry(weights, str(self.path.parent))
        try:
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own exception types for unreadable graphs
            raise SdcpuError(f"ONNX Runtime cannot load {self.path}: {err}") from err
        self._dtypes = {i.name: _DTYPES[i.type] for i in session.get_inputs() if i.type in _DTYPES}
        return session

    def __call__(self, **inputs: Input) -> np.ndarray:
        return self.outputs(**inputs)[0]

    def outputs(self, **inputs: Input) -> list[np.ndarray]:
        """Every output of the graph, in order. Repeated inputs are fed whole: a session cannot rewrite its graph."""
        self._session = self._session or self._open()
        return list(self._session.run(None, conform(whole(inputs), self._dtypes), self._run_options))

    def adapt(self, branches: Any, tensors: dict[str, np.ndarray]) -> None:
        from sdcpu.runtime.lora.setting import NEEDS_OPENVINO

        raise SdcpuError(NEEDS_OPENVINO)

    def extend(self, graph_pass: Any) -> None:
        """Run the graph written at convert with `graph_pass`'s rewrite made (GraphPass.onnx_graph) from now on."""
        if graph_pass.onnx_graph is None:
            raise SdcpuError(f"the graph pass {graph_pass.name} needs the OpenVINO backend: --backend openvino")
        graph = self.path.with_name(graph_pass.onnx_graph)
        if not graph.is_file():
            raise SdcpuError(
                f"{self.path.parent} has no {graph.name} ({graph_pass.name}): convert the model again with this "
                "sdcpu, or run it with --backend openvino"
            )
        if graph != self.path:
            self.path, self._session = graph, None

    def release_memory(self) -> None:
        """Nothing to do: every run returns its intermediate buffers to the system as it ends."""

    def release(self) -> None:
        """Free the session and its weights; the next call opens the graph again."""
        self._session = None


def _float_output(name: str) -> bytes:
    # ModelProto { graph { output { name: NAME, type { tensor_type { elem_type: FLOAT } } } } }, serialized.
    tensor_type = _field(_TENSOR_TYPE, _varint(_ELEM_TYPE << 3) + _varint(_FLOAT))
    value_info = _field(_NAME, name.encode()) + _field(_TYPE, tensor_type)
    return _field(_GRAPH, _field(_OUTPUT, value_info))


def _field(number: int, payload: bytes) -> bytes:  # a length-delimited field (wire type 2)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)
