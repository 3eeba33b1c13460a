"""Federated training with TensorFlow Federated 0.87 (the `fit_federated` half)."""
