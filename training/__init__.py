"""ferlite.training: Keras models and the commands that train them (needs TensorFlow)."""
