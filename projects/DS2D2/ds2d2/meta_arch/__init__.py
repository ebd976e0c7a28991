"""DS2D2's meta-architectures, registered in Detectron2's META_ARCH_REGISTRY on import."""
from .amplifier import DS2D2Amplifier, HighFrequencyBackbone
from .distiller import DS2D2Distiller

__all__ = ["DS2D2Amplifier", "DS2D2Distiller", "HighFrequencyBackbone"]
