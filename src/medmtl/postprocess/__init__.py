"""Post-processing of segmentation outputs (Pascal et al. 2022): largest connected component, vCDR."""

from medmtl.postprocess.segmentation import binarize, largest_connected_component, vertical_cup_to_disc_ratio

__all__ = ["binarize", "largest_connected_component", "vertical_cup_to_disc_ratio"]
