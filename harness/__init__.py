"""The benchmark harness: task descriptors, job graph, executors, sandboxes, leaderboards."""
