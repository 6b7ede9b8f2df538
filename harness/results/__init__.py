"""Results: from finished work directories to leaderboards, rankings and published predictions.

Takes: work directories (selection, cross-validation metrics, costs, seeds). Gives:
``results/<task>/`` (leaderboard CSV/Markdown, rankings, challenge-format predictions, run
record), the consensus ranking across tasks, and the regression comparison against a baseline.
Never runs a job and never imports the run loop.
"""
