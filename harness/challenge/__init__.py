"""Challenges: grand-challenge algorithm containers, exported and scored.

Takes: task descriptors, trained work directories or model archives, and anyone's algorithm
container or prediction folder. Gives: a build context for a grand-challenge container
(:mod:`harness.challenge.gc_export`) and scores of submissions on held-out cases
(:mod:`harness.challenge.score`), reading every submission output as untrusted data.
"""
