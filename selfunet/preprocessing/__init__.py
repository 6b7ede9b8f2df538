"""Stage 2, preprocessing: the plan and the dataset in, ``WORK/preprocessed/<data_identifier>/`` out.

``preprocess`` crops each case to its non-zero box (``selfunet.data.cropping``), normalizes every
channel by its planned scheme (``normalize``) and resamples to the planned spacing (``resample``);
``revert`` is the way back from the preprocessed grid to the original image geometry, with the
crop-space probability files that ensembling and the cascade read.
"""
