"""Measuring a Runtime: the benchmark runner behind `edgereid bench` and benchmarks/, latency statistics and
memory probes, and the machine description every result records."""
