"""Writes small ONNX models for the importer's fuzz seed corpus (fuzz/seeds/onnx/).

Each covers a different part of the importer (convolution with bias, the YOLO head's
split/concat/reshape/softmax path, a matmul with an initializer, attributes of every type)
while staying a few hundred bytes, so libFuzzer's mutations stay cheap.

    ../venv/bin/python tools/fuzz_seed_onnx.py fuzz/seeds/onnx
"""

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(7)


def init(name, *shape):
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def save(path, nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kestrel-fuzz-seed")
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    f = TensorProto.FLOAT
    x = helper.make_tensor_value_info("x", f, [1, 3, 8, 8])

    # Conv + SiLU (Sigmoid, Mul) + MaxPool: the backbone's building block.
    save(
        out / "conv_silu.onnx",
        [
            helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
            helper.make_node("Sigmoid", ["c"], ["s"]),
            helper.make_node("Mul", ["c", "s"], ["m"]),
            helper.make_node("MaxPool", ["m"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
        ],
        [x],
        [helper.make_tensor_value_info("y", f, [1, 4, 4, 4])],
        [init("w", 4, 3, 3, 3), init("b", 4)],
    )

    # The detection head's plumbing: Split, Concat, Reshape, Transpose, Softmax, Resize.
    shape = numpy_helper.from_array(np.array([1, 3, 64], dtype=np.int64), "shape")
    split = numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "split")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")
    save(
        out / "head.onnx",
        [
            helper.make_node("Split", ["x", "split"], ["a", "b"], axis=1),
            helper.make_node("Concat", ["b", "a"], ["c"], axis=1),
            helper.make_node("Reshape", ["c", "shape"], ["r"]),
            helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
            helper.make_node("Softmax", ["t"], ["y"], axis=-1),
            helper.make_node("Resize", ["x", "", "scales"], ["z"], mode="nearest"),
        ],
        [x],
        [helper.make_tensor_value_info("y", f, [1, 64, 3]), helper.make_tensor_value_info("z", f, [1, 3, 16, 16])],
        [shape, split, scales],
    )

    # A linear layer: MatMul with an initializer, Add, Relu.
    v = helper.make_tensor_value_info("v", f, [1, 30])
    save(
        out / "mlp.onnx",
        [
            helper.make_node("MatMul", ["v", "w"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["a"]),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        [v],
        [helper.make_tensor_value_info("y", f, [1, 7])],
        [init("w", 30, 7), init("b", 7)],
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fuzz/seeds/onnx")
