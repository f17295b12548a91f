"""Running a sweep: the command line, the spec and its expansion, the planner, the
executors (Ray Tune or in process), the pair-aware searcher, signals, growth of a
refined sweep."""
