"""DistinctAD: distributed training framework for movie audio description.

The three source folders are mapped into one ``distinctad`` namespace so that the
generic folder names (train, data, eval) never clash with other installed packages.
"""

from pathlib import Path

from setuptools import setup


def _packages(folder: str) -> list[str]:
    """``train`` -> ["distinctad.train", "distinctad.train.core", ...]: every folder holding an __init__.py."""
    root = Path(__file__).parent / folder
    found = sorted(root.rglob("__init__.py"))
    return [".".join(["distinctad", folder, *p.parent.relative_to(root).parts]) for p in found]


TORCH = ["torch>=2.4,<=2.14.1", "torchvision"]
LLAMA = ["peft>=0.10"]  # LoRA adapters (Llama-3 captioner)

setup(
    name="distinctad",
    version="0.1.0",
    description="DistinctAD: distinctive audio description for movies, trained at scale with DeepSpeed",
    python_requires=">=3.10",
    packages=["distinctad", *_packages("train"), *_packages("data"), *_packages("eval")],
    package_dir={
        "distinctad": "distinctad",
        "distinctad.train": "train",
        "distinctad.data": "data",
        "distinctad.eval": "eval",
    },
    package_data={"distinctad.train.models": ["model_configs/*.json"], "distinctad.data": ["assets/*", "assets/**/*"]},
    install_requires=[
        *TORCH,
        "deepspeed>=0.15",
        "transformers>=4.40",
        "tokenizers",
        "open_clip_torch>=2.24",
        "webdataset>=0.2.86",
        "mlflow>=2.14",
        "psutil",  # MLflow's system metrics (CPU, memory) on training runs
        "pycocoevalcap>=1.2",
        "numpy",
        "pyyaml",
        "h5py",
        "av",
        "pillow",
        "matplotlib",
        "tqdm",
        "silero-vad",  # distinctad-describe: speech detection (its pip package ships the model)
        "scenedetect",  # distinctad-describe: shot cuts (PySceneDetect, PyAV backend)
        "webvtt-py",  # distinctad-describe: the WebVTT/SRT description track
    ],
    extras_require={
        # dev: everything the test suite and the lint need; the LoRA tests use peft, so dev holds llama's too.
        # README and .ci/run install the same extras (tests/test_install.py).
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "ruff==0.17.6", *LLAMA],
        "llama": LLAMA,
    },
    entry_points={
        "console_scripts": [
            "distinctad-shards=distinctad.data.cli:main",
            "distinctad-eval=distinctad.eval.cli:main",
            "distinctad-train=distinctad.train.main:main",
            "distinctad-extract=distinctad.train.tools.extract:main",
            "distinctad-generate=distinctad.train.tools.generate:main",
            "distinctad-ablate=distinctad.train.tools.ablate:main",
            "distinctad-describe=distinctad.train.tools.describe.cli:main",
        ]
    },
)
