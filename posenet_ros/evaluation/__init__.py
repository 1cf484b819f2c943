"""Accuracy and latency evaluation: metrics, baselines, reports, plots."""
