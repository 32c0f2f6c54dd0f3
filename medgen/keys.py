"""Every dictionary key used in medgen's data and step outputs, in one place.

Modelled on MONAI's ``CommonKeys``: code never spells a key as a bare string.
"""

from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):
    """A ``str`` enum whose members format as their value (``f"{Keys.MRI}" == "mri"``)."""

    def __str__(self) -> str:
        return str(self.value)


class Keys(StrEnum):
    """Keys of the sample dictionaries that flow through transforms, engines and inference."""

    MRI = "mri"
    CT = "ct"
    IMAGE = "image"
    LABEL = "label"
    GEN = "gen"  # generation labels of the label -> image model (every structure + intensity classes)
    MASK = "mask"
    PRED = "pred"
    FAKE_CT = "fake_ct"
    FAKE_MRI = "fake_mri"
    REC_MRI = "rec_mri"
    REC_CT = "rec_ct"
    IDT_MRI = "idt_mri"
    IDT_CT = "idt_ct"
    NAME = "name"
    REF = "ref"
    SCALE = "scale"
    SPACING = "spacing"


class Modality(StrEnum):
    """Imaging modalities medgen translates between."""

    MRI = "mri"
    CT = "ct"


class Direction(StrEnum):
    """Translation directions; ``mri2ct`` runs generator A->B."""

    MRI2CT = "mri2ct"
    CT2MRI = "ct2mri"
