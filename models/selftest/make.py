"""Writes affine.onnx: Y = 2 * X + 1 on a float tensor of any shape.

The runtime self-test model: idcfs's tests load it through ONNX Runtime to prove the runtime
loads, creates a session and computes (src/neural). Regenerate with
`$VENV/bin/python models/selftest/make.py` (needs the `onnx` package); the file is checked in.
"""
import os
import onnx
from onnx import TensorProto, helper

x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
g = helper.make_graph(
    [helper.make_node("Mul", ["x", "two"], ["t"]), helper.make_node("Add", ["t", "one"], ["y"])],
    "affine",
    [x],
    [y],
    initializer=[two, one],
)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="idcfs")
m.ir_version = 8
onnx.checker.check_model(m)
onnx.save(m, os.path.join(os.path.dirname(os.path.abspath(__file__)), "affine.onnx"))
