"""Benchmarks: operator speed (bench_ops), training-step cost (bench_step), accuracy (bench_accuracy)."""
