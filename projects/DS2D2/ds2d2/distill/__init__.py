"""Distillation terms for the distiller (``MODEL.DS2D2.TERMS``): the framework in ``base.py``, one method per
file. Importing this package registers every term; adding a method is one file + one import line here."""
from . import crosskd, ds2d2_explicit, ds2d2_implicit, fgd, fitnet, mgd, pkd  # noqa: F401  (registration)
from .base import DISTILL_TERM_REGISTRY, DistillStep, DistillTerm, TermContext

__all__ = ["DISTILL_TERM_REGISTRY", "DistillStep", "DistillTerm", "TermContext"]
