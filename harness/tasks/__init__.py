"""Task descriptors: what a benchmark task is, read from ``tasks/*.yaml``.

Takes: YAML files (untrusted text: size-checked, strictly parsed, includes confined) and the
container policy of :mod:`harness.sandboxes.policy`. Gives: validated :class:`TaskDescriptor`
objects (:mod:`harness.tasks.descriptor`) and the name rules every path built from a descriptor
or a container label goes through (:mod:`harness.tasks.names`).
"""
