"""rmrun throughput benchmarks: see benchmarks/README.md; run with benchmarks/run.sh."""
