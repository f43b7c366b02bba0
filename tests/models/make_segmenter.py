"""Builds the small ONNX segmentation model the tests run remove_background with.

No real model can be downloaded here, so this one is made with the `onnx` package: a few
convolutions with fixed weights whose mask is known. It says "foreground" where a pixel is
redder than it is green: a 1x1 convolution takes red minus green (of the normalised input),
a 3x3 one averages it, and a sigmoid of four times that is the mask, shaped like U²-Net's
first output ([1, 1, H, W]). A second output stands for U²-Net's side outputs, which the
filter must ignore.

    python3 make_segmenter.py OUT.onnx [--size N] [--dynamic]

--dynamic leaves the input's height and width symbolic, as some exports do.
"""

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(size: int, dynamic: bool) -> onnx.ModelProto:
    side = "side" if dynamic else size
    shape = [1, 3, side, side]
    out_shape = [1, 1, side, side]
    red_minus_green = numpy_helper.from_array(
        np.array([1.0, -1.0, 0.0], dtype=np.float32).reshape(1, 3, 1, 1), "rg_weight"
    )
    average = numpy_helper.from_array(
        np.full((1, 1, 3, 3), 1.0 / 9.0, dtype=np.float32), "smooth_weight"
    )
    gain = numpy_helper.from_array(np.array(4.0, dtype=np.float32), "gain")
    nodes = [
        helper.make_node("Conv", ["input", "rg_weight"], ["rg"], kernel_shape=[1, 1]),
        helper.make_node(
            "Conv", ["rg", "smooth_weight"], ["smooth"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Mul", ["smooth", "gain"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["mask"]),
        helper.make_node("Sigmoid", ["rg"], ["side1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "red_is_foreground",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, out_shape),
            helper.make_tensor_value_info("side1", TensorProto.FLOAT, out_shape),
        ],
        initializer=[red_minus_green, average, gain],
    )
    model = helper.make_model(
        graph, producer_name="pixelmesh-tests", opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--dynamic", action="store_true")
    args = parser.parse_args()
    onnx.save(build(args.size, args.dynamic), args.out)


if __name__ == "__main__":
    main()
