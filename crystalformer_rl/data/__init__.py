"""Datasets of crystals: loading CIF datasets and tokenizing them into CrystalFormer tokens."""

from ..utils import lazy_exports


#: where ``scripts/build_corpus.py`` writes the training corpus (relative to the working directory)
DEFAULT_CORPUS_DIR = "data/corpus"
#: its splits: the default ``--train_data`` / ``--validation_data`` of ``pretrain``
DEFAULT_TRAIN_DATA = f"{DEFAULT_CORPUS_DIR}/train.parquet"
DEFAULT_VALIDATION_DATA = f"{DEFAULT_CORPUS_DIR}/validation.parquet"

_EXPORTS = dict.fromkeys(("load_crystal_dataset", "load_prepared", "prepare_data"), ".prepare")

__all__ = ["DEFAULT_CORPUS_DIR", "DEFAULT_TRAIN_DATA", "DEFAULT_VALIDATION_DATA", *sorted(_EXPORTS)]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)  # pandas and the tokenizer load on first use
