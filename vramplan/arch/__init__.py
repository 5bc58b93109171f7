"""Architectures from config.json, and the offline registry."""

from vramplan.arch.lookup import ModelNotFound, RegistryEntry, find_entry, registry, resolve
from vramplan.arch.spec import Arch, ArchError, ExpertTensor, Linear

__all__ = ["Arch", "ArchError", "ExpertTensor", "Linear", "ModelNotFound", "RegistryEntry",
           "find_entry", "registry", "resolve"]
