"""Running a benchmark: the job graph, the loop that feeds an executor, and its progress display.

Takes: task descriptors (:mod:`harness.tasks`), an executor and a sandbox. Gives: finished jobs
with content-hash markers (a rerun skips them) and, as each task completes, its published results
(:mod:`harness.results`) and report (:mod:`harness.report`).
"""
