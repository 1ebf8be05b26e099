from train.export.onnx import main

main()
