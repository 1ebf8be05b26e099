"""A model folder's files: config.json, weights and transformers code (``folder``), the ONNX files
and their parity (``onnx``, ``python -m train.export``), the model card and its plots (``card``)."""
