"""Stage 0, data: a dataset folder in, a validated ``DatasetSpec`` out.

Finds a dataset folder from a path or an nnU-Net dataset name or id (``dataset_locator``), reads
the Medical Segmentation Decathlon and nnU-Net v2 layouts (``dataset``), images through
SimpleITK (``io``, with ``nifti_raw`` for what SimpleITK hides), checks a dataset for every
problem in one pass (``check``, ``check_case``), finds the non-zero box of a case (``cropping``,
shared by the fingerprint and preprocessing) and generates the synthetic demo task (``demo``).
Writes nothing into the work directory.
"""
