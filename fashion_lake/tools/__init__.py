"""Developer tools: benchmarks (``bench``, ``readbench``, ``speed``) and the config reference."""
