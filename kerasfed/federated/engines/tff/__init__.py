"""The TFF engine: the only package of kerasfed that imports TensorFlow Federated."""
