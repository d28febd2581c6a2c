"""Packaging for namus-edge: on-device face search against the NamUs index."""

from glob import glob

from setuptools import find_packages, setup

#: Repository folder of each sub-package: the product keeps its folders, the install has one top-level name.
LAYERS = ("core", "models", "index", "export", "training", "edge", "review")

#: The reviewer console (namus_edge.review): web app, storage, migrations.
REVIEW_DEPS = [
    "fastapi>=0.110",
    "uvicorn>=0.29",
    "jinja2>=3.1",
    "sqlalchemy>=2.0",
    "alembic>=1.13",
    "argon2-cffi>=23.1",
    "python-multipart>=0.0.9",
    "itsdangerous>=2.1",
    "psycopg[binary]>=3.1",
]


def _packages() -> tuple[list[str], dict[str, str]]:
    packages = ["namus_edge"]
    package_dir = {"namus_edge": "namus_edge"}
    for folder in LAYERS:
        for sub in [folder, *(f"{folder}.{p}" for p in find_packages(where=folder))]:
            name = f"namus_edge.{sub}"
            packages.append(name)
            package_dir[name] = sub.replace(".", "/")
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()


setup(
    name="namus-edge",
    version="0.2.0",
    description="Edge face search for missing persons: detection, embedding, FAISS search, MQTT events",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={
        **{name: ["py.typed"] for name in ("namus_edge", *(f"namus_edge.{f}" for f in LAYERS))},
        "namus_edge.review": ["py.typed", "templates/*.html", "static/*"],
        # the one model this project trained itself (<= 4 MB, non-commercial): models/weights/
        "namus_edge.models": ["py.typed", "weights/*.onnx"],
    },
    install_requires=[
        "numpy>=1.24",
        "onnxruntime>=1.16",
        "opencv-python-headless>=4.8",
        "faiss-cpu>=1.7.4",
        "paho-mqtt>=2.0",
        "pyyaml>=6.0",
        "pydantic>=2.5",
        "cryptography>=41",
        "tqdm>=4.66",
    ],
    extras_require={
        "gpu": ["onnxruntime-gpu>=1.16", "tensorrt>=8.5", "pycuda>=2022.2"],
        "export": ["onnx>=1.14", "onnxslim>=0.1.30"],
        "dev": [
            "pytest>=7.4",
            "ruff>=0.4",
            "mypy>=1.8",
            "import-linter>=2.0",
            "types-PyYAML",
            "onnx>=1.14",
            "onnxslim>=0.1.30",
            "scikit-image>=0.21",
            "pillow>=10",
            *REVIEW_DEPS,
            "httpx>=0.27",
            "selenium>=4.15",
            "jsonschema>=4.17",  # tests validate emitted match events against docs/events.md's JSON Schema
        ],
        "review": REVIEW_DEPS,
        # insightface declares opencv-python, which replaces opencv-python-headless: see docs/benchmarks.md
        "bench": ["insightface>=0.7.3", "psutil>=5.9"],
        "demo": ["scikit-image>=0.21", "amqtt>=0.11"],
        # `namus-edge train age-sex` only; never imported by the runtime. Install the CPU build
        # (e.g. torch==2.13.0+cpu, ~190 MB wheel): PyPI's default torch pulls ~3 GB of CUDA wheels.
        "training": ["torch>=2.1", "onnx>=1.14"],
    },
    data_files=[("share/namus-edge/systemd", sorted(glob("systemd/*"))), ("share/namus-edge", ["config.yaml"])],
    entry_points={"console_scripts": ["namus-edge=namus_edge.cli:main"]},
    classifiers=["Programming Language :: Python :: 3", "Operating System :: POSIX :: Linux"],
)
