"""The HTML report: a static page per task and an index, with inline plots (no scripts).

Takes: leaderboards and rankings from :mod:`harness.results`. Gives: ``results/index.html`` and
``results/<task>/report.html``, each written atomically.
"""
