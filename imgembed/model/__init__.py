"""What a model is: the backbone registry and preprocessing, the default network as data and as an
ONNX graph built without torch (backbones, lite_arch, torchfile, lite_onnx); and the torch network
itself, its heads, precision and checkpoints (network, efficientnet_lite, heads, precision,
checkpoint), which only the torch runtime and training import."""
