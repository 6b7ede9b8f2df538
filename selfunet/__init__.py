"""selfunet: a self-configuring U-Net for medical image segmentation.

The pipeline reads off the module list: ``dataset`` -> ``fingerprint`` -> ``plan`` ->
``preprocess`` -> ``train`` -> ``predict`` -> ``evaluate`` -> ``ensemble`` -> ``postprocess``.
Every stage writes one typed, versioned JSON (or array) artifact into a work directory.
"""

__version__ = "0.1.0"
