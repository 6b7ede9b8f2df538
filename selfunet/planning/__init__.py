"""Stage 1, planning: a dataset in, ``WORK/fingerprint.json`` and ``WORK/plan.json`` out.

``fingerprint`` measures spacings, shapes and foreground intensities (types in
``fingerprint_types``); ``plan`` derives every configuration from rules and a GPU memory budget
(types in ``plan_types``, the U-Net shape in ``topology``); ``nnunet_compat`` reads the reference
implementation's fingerprint so both planners can be run on the same facts.
"""
