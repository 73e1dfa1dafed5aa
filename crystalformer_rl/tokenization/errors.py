"""Typed errors for crystals that cannot be tokenized; each message names the input and the reason."""


class CrystalTokenizationError(ValueError):
    """Base class: a crystal that cannot become CrystalFormer tokens (or tokens that are no crystal)."""

    reason = "invalid crystal"


class InvalidStructureError(CrystalTokenizationError):
    reason = "unparsable input"


class EmptyStructureError(CrystalTokenizationError):
    reason = "empty structure"


class DisorderedStructureError(CrystalTokenizationError):
    reason = "partial occupancy"


class TooManySitesError(CrystalTokenizationError):
    reason = "too many sites"


class SymmetryAnalysisError(CrystalTokenizationError):
    reason = "symmetry analysis failed"


class InvalidTokensError(CrystalTokenizationError):
    reason = "invalid tokens"
