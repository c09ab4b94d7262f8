from setuptools import find_packages, setup

setup(
    name="sparkann",
    version="0.1.0",
    description="Distributed approximate nearest-neighbour search on Apache Spark "
    "(IVF partitioning with per-partition HNSW graphs).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["sparkann", "sparkann.*"]),
    package_data={"sparkann": ["py.typed"]},
    install_requires=[
        "pyspark>=4.0,<5",
        "pyarrow>=15",
        "numpy>=1.24",
        "pandas>=2.2,<3",
        "scikit-learn>=1.3",
        "hnswlib>=0.8,<0.9",
        "faiss-cpu>=1.8",  # the pq and hnsw_sq8 index types
        "sqlglot>=25",  # parses item filters (Spark SQL predicates) for evaluation in tasks
    ],
    extras_require={
        # everything `python -m pytest -q tests` needs: Spark Connect client, notebook runner,
        # the HDF5 reader and the benchmark smoke run
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6", "pyspark[connect]>=4.0,<5",
                 "matplotlib>=3.7", "nbclient>=0.9", "nbformat>=5.9", "ipykernel>=6.25", "h5py>=3",
                 "psutil>=5.9", "boto3>=1.35.16", "moto[server]>=5.1"],
        "connect": ["pyspark[connect]>=4.0,<5"],
        "s3": ["boto3>=1.35.16"],  # atomic publishing on S3 (conditional PUT), driver only
        "hdf5": ["h5py>=3"],
        "eval": ["matplotlib>=3.7"],  # sparkann evaluate / jobs/evaluate.py charts
        "lint": ["ruff>=0.5", "mypy>=1.10"],
        "docs": ["sphinx>=7", "numpydoc>=1.6"],  # the API reference, docs/api
        "bench": ["matplotlib>=3.7", "psutil>=5.9"],
    },
    entry_points={"console_scripts": ["sparkann=sparkann.cli:main"]},
)
