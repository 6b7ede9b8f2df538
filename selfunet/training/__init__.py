"""Stage 3, training: preprocessed data in, ``WORK/train/<configuration>/fold_<k>/`` out.

``train`` runs one configuration on one fold (``train_config`` and ``budgets`` say how long,
``training_log`` records and plots it) with the ``network`` and ``loss``, folds from ``splits``,
patches from ``sampling`` and ``augment`` (drawing ``augment_spatial`` and ``augment_intensity``
transforms configured by ``augment_config``, ``augment_cascade`` for a cascade's previous-stage
segmentation) assembled per batch by ``batches`` and fed by ``loader`` (threads or processes);
``cascade`` builds the inputs of the full-resolution cascade stage from the low-resolution stage's
out-of-fold predictions.
Training never imports inference: validation predictions are made by ``selfunet.pipeline``.
"""
