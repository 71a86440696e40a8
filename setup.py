"""DistinctAD: distributed training framework for movie audio description.

The three source folders are mapped into one ``distinctad`` namespace so that the
generic folder names (train, data, eval) never clash with other installed packages.
"""

from setuptools import setup

TORCH = ["torch>=2.4,<=2.14.1", "torchvision"]

setup(
    name="distinctad",
    version="0.1.0",
    description="DistinctAD: distinctive audio description for movies, trained at scale with DeepSpeed",
    python_requires=">=3.10",
    packages=["distinctad", "distinctad.train", "distinctad.train.models", "distinctad.data", "distinctad.eval"],
    package_dir={
        "distinctad": "distinctad",
        "distinctad.train": "train",
        "distinctad.train.models": "train/models",
        "distinctad.data": "data",
        "distinctad.eval": "eval",
    },
    package_data={"distinctad.train.models": ["model_configs/*.json"]},
    install_requires=[
        *TORCH,
        "deepspeed>=0.15",
        "transformers>=4.40",
        "tokenizers",
        "open_clip_torch>=2.24",
        "webdataset>=0.2.86",
        "mlflow>=2.14",
        "pycocoevalcap>=1.2",
        "numpy",
        "pyyaml",
        "h5py",
        "av",
        "pillow",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        "dev": ["pytest>=8", "ruff"],
        "llama": ["peft>=0.10"],
    },
    entry_points={
        "console_scripts": [
            "distinctad-shards=distinctad.data.cli:main",
            "distinctad-eval=distinctad.eval.cli:main",
            "distinctad-train=distinctad.train.main:main",
            "distinctad-extract=distinctad.train.extract:main",
            "distinctad-generate=distinctad.train.generate:main",
            "distinctad-ablate=distinctad.train.ablation:main",
        ]
    },
)
