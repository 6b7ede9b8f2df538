"""Getting a task's dataset: ``harness fetch`` and ``harness run --fetch``.

Takes: task descriptors (:mod:`harness.tasks`) and the mirror and checksum settings. Gives: the
dataset folder each descriptor names, filled from the task's archive, which is downloaded
resumably from the mirror (:mod:`harness.fetch.download`), checked against its MD5 sum (the
Decathlon's built in, from MONAI: :mod:`harness.fetch.sources`) and unpacked all or nothing, with
every member that could land outside refused (:mod:`harness.fetch.safe_tar`). Orchestrated per
task by :mod:`harness.fetch.fetch`.
"""
