"""Import heavy or optional libraries on first use, with a message naming the extra to install."""
from __future__ import annotations

import importlib
from types import ModuleType

from edgereid.errors import MissingDependencyError

# module -> (pip extra of edgereid, what it is needed for)
_EXTRAS = {
    "torch": ("train", "PyTorch models, training and export"),
    "onnx": ("export", "writing and editing ONNX files"),
    "onnxsim": ("export", "simplifying exported ONNX graphs"),
    "onnxruntime": ("", "running .onnx models"),
    "openvino": ("openvino", "running models with OpenVINO (.xml IR, or .onnx with backend='openvino')"),
    "tensorrt": ("trt", "building and running TensorRT engines"),
    "pycuda": ("trt", "running TensorRT engines"),
    "faiss": ("faiss", "approximate search in large galleries"),
    "pymilvus": ("milvus", "Milvus galleries (edgereid.retrieval.milvus_gallery)"),
    "matplotlib": ("plots", "plots"),
    "tensorboard": ("tensorboard", "TensorBoard logs"),
    "yaml": ("train", "YAML training configs"),
    "boxmot": ("boxmot", "boxmot's trackers (edgereid.integrations.boxmot)"),
}


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import `module` or raise MissingDependencyError saying which edgereid extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra, default_purpose = _EXTRAS.get(top, ("", top))
        what = purpose or default_purpose
        hint = f'pip install "edgereid[{extra}]"' if extra else "pip install edgereid"
        if top == "torch":
            hint += " (CPU-only machines: pip install torch==<version> from the CPU wheel index first)"
        if top == "boxmot":
            # boxmot's declared dependencies pull torchvision and with it a CUDA build of torch
            hint += (" (CPU-only machines: pip install -r requirements/boxmot-cpu.txt, then pip install --no-deps "
                     "boxmot)")
        raise MissingDependencyError(f"{module} is needed for {what} but is not installed: {hint}") from exc
