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

import os as _os

# MKL's fast memory manager keeps a lock per thread; a loader worker forked while another thread
# of the parent held it (the thread-mode loader, a pinned-memory thread) spins on it for ever in
# its first matrix product. Without the fast manager MKL allocates through the C library, which
# is fork-safe. Set before torch loads MKL; a user's own setting wins.
_os.environ.setdefault("MKL_DISABLE_FAST_MM", "1")
