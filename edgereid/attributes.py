"""Pedestrian attribute names: the default list a model's attribute head predicts, shared by every stage.

The default is the 35-attribute protocol of the PETA benchmark (Deng et al., "Pedestrian attribute recognition at
far distance", ACM MM 2014; the list used by DeepMAR and later work): age groups, carrying, clothing type,
accessories, footwear, hair. Names are PETA's own words, as in its `Label.txt` files. A model carries its list
(names and order) in its checkpoint and ONNX metadata; nothing downstream assumes this default.
"""
from __future__ import annotations

PETA_35 = (
    "accessoryHat", "accessoryMuffler", "accessoryNothing", "accessorySunglasses", "hairLong",
    "upperBodyCasual", "upperBodyFormal", "upperBodyJacket", "upperBodyLogo", "upperBodyPlaid",
    "upperBodyShortSleeve", "upperBodyThinStripes", "upperBodyTshirt", "upperBodyOther", "upperBodyVNeck",
    "lowerBodyCasual", "lowerBodyFormal", "lowerBodyJeans", "lowerBodyShorts", "lowerBodyShortSkirt",
    "lowerBodyTrousers", "footwearLeatherShoes", "footwearSandals", "footwearShoes", "footwearSneaker",
    "carryingBackpack", "carryingOther", "carryingMessengerBag", "carryingNothing", "carryingPlasticBags",
    "personalLess30", "personalLess45", "personalLess60", "personalLarger60", "personalMale",
)

DEFAULT_ATTRIBUTES = PETA_35

__all__ = ["DEFAULT_ATTRIBUTES", "PETA_35"]
