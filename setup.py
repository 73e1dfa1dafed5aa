"""crystalformer-rl: reinforcement fine-tuning of CrystalFormer on the Hugging Face stack."""

from setuptools import find_packages, setup


# torch is deliberately bounded below only: on a CPU machine install the CPU wheel first
# (`pip install torch==2.13.0`, or `--index-url https://download.pytorch.org/whl/cpu`), then this package.
INSTALL_REQUIRES = [
    "torch>=2.4",
    "numpy>=1.26",
    "pandas>=2.0",
    "pyarrow>=14",
    "pymatgen>=2024.6.10",
    "pyxtal>=1.0.7",
    "spglib>=2.5",
    "smact>=3.0",
    "ase>=3.23",
    "transformers>=5.0",
    "trl==1.16.0",  # CrystalRLOOTrainer subclasses RLOOTrainer internals: pinned
    "accelerate>=1.10",
    "datasets>=4.0",
    "huggingface_hub>=1.0",
    "safetensors>=0.4",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "pyyaml>=6.0",
]

EXTRAS = {
    "chgnet": ["chgnet>=0.4.2"],
    "matgl": ["matgl>=4.1"],
    "sevenn": ["sevenn==0.13.0"],
    # Download their weights at run time; keep out of the default install (see README).
    "orb": ["orb-models>=0.5"],
    "mace": ["mace-torch>=0.3"],
    "mattersim": ["mattersim>=1.2"],
    "deepspeed": ["deepspeed>=0.16"],
    # The MP-20 benchmark's coverage features (CrystalNN fingerprints, magpie composition features).
    "benchmark": ["matminer>=0.10"],
    "test": ["pytest>=8", "ruff>=0.6"],
}
EXTRAS["rewards"] = EXTRAS["chgnet"] + EXTRAS["matgl"]
EXTRAS["dev"] = EXTRAS["rewards"] + EXTRAS["sevenn"] + EXTRAS["benchmark"] + EXTRAS["test"]

setup(
    name="crystalformer-rl",
    version="0.1.0.dev0",
    description="Hugging Face-native reinforcement fine-tuning of CrystalFormer crystal generative models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["crystalformer_rl", "crystalformer_rl.*"]),
    include_package_data=True,
    package_data={
        "crystalformer_rl": [
            "**/*.npz",
            "**/*.json",
            "**/*.json.gz",
            "**/*.safetensors",
            "**/*.md",
            "**/*.csv.gz",
            "**/*.pt",
            "**/LICENSE*",
            "pretrained/default/*.py",  # the embedded model folder's remote code (not a package)
        ]
    },
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["crystalformer-rl=crystalformer_rl.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Chemistry",
        "Topic :: Scientific/Engineering :: Physics",
    ],
)
