"""selfunet: a self-configuring U-Net for medical image segmentation.

The package reads as the pipeline, one subpackage per stage, each taking the previous stage's
artifact from a work directory and leaving its own:

``data`` (a dataset folder) -> ``planning`` (``fingerprint.json``, ``plan.json``) ->
``preprocessing`` (``preprocessed/``) -> ``training`` (``train/<config>/fold_<k>/``) ->
``inference`` (predictions) -> ``evaluation`` (``crossval/``, ``selection.json``).

Lower stages never import higher ones; ``pipeline`` runs them all and ``cli`` exposes them.
``artifacts``, ``errors``, ``workdir`` and ``runtime`` are what every stage shares.
"""

__version__ = "0.1.0"
