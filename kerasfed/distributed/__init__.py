"""Data-parallel training with tf.distribute."""
