"""Making model graphs runnable as agegender feeds them.

- :mod:`.batch_free`: graphs exported with a fixed batch of 1 rewritten to take any batch
  (checked against one-by-one runs, cached beside the original or in the store).
- :mod:`.opsets`: legacy-opset graphs (opset < 7, such as the zoo's opset-5 Caffe
  conversions) upgraded so ONNX Runtime can run them.
- :mod:`.tfjs`: TensorFlow.js graph models (``model.json`` + weight shards) converted to
  ONNX without TensorFlow, byte for byte the same each time (a card pins the sha256).

Nothing is imported here, so ``import agegender.onnxgraph`` costs nothing.
"""
