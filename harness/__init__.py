"""The benchmark harness: many task descriptors in, leaderboards, rankings and a report out.

Packages, from the bottom layer up (``tests/test_import_layers.py`` keeps this order: a package
imports only packages before it):

* :mod:`harness.sandboxes`: *how* one job runs (a subprocess or a hardened Docker container) and
  the project image it runs in;
* :mod:`harness.executors`: *where* jobs run (this machine's slots, a Ray cluster, a Slurm cluster);
* :mod:`harness.tasks`: task descriptors, read and checked as untrusted YAML;
* :mod:`harness.fetch`: the tasks' datasets downloaded, checksummed and unpacked safely;
* :mod:`harness.results`: leaderboards, rankings, tables, seeds, costs, published predictions;
* :mod:`harness.report`: the static HTML report and its plots;
* :mod:`harness.run`: the job graph, the run loop, its progress display;
* :mod:`harness.challenge`: scoring containers on held-out cases and the grand-challenge export;
* :mod:`harness.cli`: the ``harness`` command.
"""
