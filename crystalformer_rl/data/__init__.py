"""Datasets of crystals: loading CIF datasets and tokenizing them into CrystalFormer tokens."""

from .prepare import load_crystal_dataset, load_prepared, prepare_data


#: where ``scripts/build_corpus.py`` writes the training corpus (relative to the working directory)
DEFAULT_CORPUS_DIR = "data/corpus"
#: its splits: the default ``--train_data`` / ``--validation_data`` of ``pretrain``
DEFAULT_TRAIN_DATA = f"{DEFAULT_CORPUS_DIR}/train.parquet"
DEFAULT_VALIDATION_DATA = f"{DEFAULT_CORPUS_DIR}/validation.parquet"

__all__ = [
    "DEFAULT_CORPUS_DIR",
    "DEFAULT_TRAIN_DATA",
    "DEFAULT_VALIDATION_DATA",
    "load_crystal_dataset",
    "load_prepared",
    "prepare_data",
]
