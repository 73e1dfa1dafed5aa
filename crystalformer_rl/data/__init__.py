"""Datasets of crystals: loading CIF datasets and tokenizing them into CrystalFormer tokens."""

from .prepare import load_crystal_dataset, load_prepared, prepare_data


__all__ = ["load_crystal_dataset", "load_prepared", "prepare_data"]
