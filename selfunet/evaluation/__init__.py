"""Stage 5, evaluation and selection: predictions and references in, ``WORK/crossval/`` and
``WORK/selection.json`` out.

``metrics`` scores one case (overlap counts, Dice, IoU, the empty-mask rule) with ``surface``
(surface elements and distances: NSD, HD95); ``summary`` is the ``summary.json``/``per_case.csv``
artifact and table over cases; ``evaluate`` scores folders of files (``selfunet evaluate``);
``crossval`` gathers out-of-fold predictions; ``ensemble`` scores every configuration and pair and
picks the best; ``postprocess_selection`` decides the connected-component rule on the
cross-validation.
"""
