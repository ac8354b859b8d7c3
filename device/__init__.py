"""ferlite.device: camera/video -> detection -> int8 inference -> tracking -> results log (no TensorFlow)."""
