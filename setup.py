"""edgereid: one dual-head person model (re-ID embedding + gender) from PyTorch to the edge."""
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
VERSION = {}
exec((ROOT / "edgereid" / "_version.py").read_text(), VERSION)

# The runtime needs only these; a Jetson app installs nothing else (plus tensorrt/pycuda).
CORE = ["numpy>=1.23", "opencv-python-headless>=4.6", "click>=8.0", "onnxruntime>=1.16", "tqdm>=4.60"]

EXTRAS = {
    "train": ["torch>=2.1", "pyyaml>=6.0"],
    "export": ["torch>=2.1", "onnx>=1.14", "onnxsim>=0.4.33"],
    "quant": ["onnx>=1.14"],
    "trt": ["tensorrt>=8.6", "pycuda>=2022.1"],
    # a 60 MB wheel (180 MB installed) needing only numpy: light enough for the CPU set, so CI tests it
    "openvino": ["openvino>=2024.0"],
    # 66 MB installed, needs only numpy: in the CPU set, so CI tests the approximate search path
    "faiss": ["faiss-cpu>=1.7"],
    # Milvus client + the embedded milvus-lite (with pandas, pyarrow, grpcio ~280 MB installed); in the CPU set so
    # CI runs MilvusGallery against a real milvus-lite file
    "milvus": ["pymilvus>=2.4.2", "milvus-lite>=2.4"],
    "plots": ["matplotlib>=3.5"],
    "tensorboard": ["tensorboard>=2.10"],
    # Trackers (edgereid.integrations.boxmot). boxmot declares torchvision, which on a CPU-only machine pulls a CUDA
    # torch: there use requirements/boxmot-cpu.txt + `pip install --no-deps boxmot==25.0.0` (as .ci/run does).
    "boxmot": ["boxmot>=20.0"],
    "dev": ["pytest>=7.0", "psutil>=5.9"],
}
# Everything that runs on a CPU-only machine (CI, a laptop); TensorRT is a GPU-host extra.
EXTRAS["cpu"] = sorted({d for k in ("train", "export", "quant", "openvino", "faiss", "milvus", "dev")
                        for d in EXTRAS[k]})

# Stage folders live at the top level of the repository but install into one namespace,
# so nothing generic like `export` lands in site-packages.
PACKAGE_DIR = {
    "edgereid": "edgereid",
    "edgereid.training": "training",
    "edgereid.export": "export",
    "edgereid.calibration": "calibration",
}


def _subpackages() -> list:
    """Every folder with an __init__.py below a mapped folder, named in the edgereid namespace."""
    found = []
    for name, folder in PACKAGE_DIR.items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder)
            if rel.parts and "__pycache__" not in rel.parts:
                found.append(".".join((name,) + rel.parts))
    return [p for p in found if p not in PACKAGE_DIR]


setup(
    name="edgereid",
    version=VERSION["__version__"],
    description=__doc__,
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=sorted(PACKAGE_DIR) + _subpackages(),
    package_dir=PACKAGE_DIR,
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["edgereid=edgereid.cli.main:main"]},
)
