"""ferlite.convert: Keras model -> verified full-int8 .ferlite bundle (needs TensorFlow)."""
