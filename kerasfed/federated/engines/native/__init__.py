"""The native engine: federated rounds in pure TensorFlow, in this process (see engine.py)."""
