"""Stage 5, evaluation and selection: predictions and references in, ``WORK/crossval/`` and
``WORK/selection.json`` out.

``evaluate`` (overlap metrics) and ``surface`` (distance metrics) score folders; ``crossval``
gathers out-of-fold predictions; ``ensemble`` scores every configuration and pair and picks the
best; ``postprocess_selection`` decides the connected-component rule on the cross-validation.
"""
