"""Static shapes for onnxruntime's blocked layout: the symbolic batch carried through Resize nodes.

onnxruntime's CPU provider keeps a tensor in its blocked NCHWc layout through an elementwise Mul or Add only when it
can prove both operands have the same shape. A Resize with constant scales (the deploy form of GhostNetV2's DFC gate,
`deploy/dfc.py`) runs in that layout, but ONNX shape inference multiplies every input dimension by its scale and a
symbolic one ("batch") times 1 comes out unknown. From the first DFC gate on, the batch dimension of everything
downstream is unknown, so onnxruntime reorders each gated product (and each residual Add after it) out of the blocked
layout and back: on ghostnetv2_100 that is 14 products, 28 reorders and 42 reshapes, against 0 with the batch known.

Every Resize a PyTorch export writes comes from `F.interpolate` (or an Upsample module), which never changes the
batch or channel dimension, so declaring the output's batch to be the input's symbolic batch is a fact about the
graph, not a guess; the declaration is an ordinary `value_info` entry that onnxruntime merges with its own inference.
"""
from __future__ import annotations

from typing import Any

__all__ = ["declare_batch_through_resize"]


def _tensor_types(proto: Any) -> dict[str, Any]:
    """Every value's inferred tensor type (with ONNX's data propagation, so that computed Resize sizes are known)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    graph = inferred.graph
    return {v.name: v.type.tensor_type for v in list(graph.value_info) + list(graph.input) + list(graph.output)
            if v.type.tensor_type.HasField("shape")}


def _declare(proto: Any, name: str, tensor_type: Any, batch: str) -> None:
    """Replace any value_info of `name` by one with the symbolic batch first and the inferred other dimensions."""
    import onnx

    sizes = [batch] + [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim[1:]]
    for value in [v for v in proto.graph.value_info if v.name == name]:
        proto.graph.value_info.remove(value)
    proto.graph.value_info.append(onnx.helper.make_tensor_value_info(name, tensor_type.elem_type, sizes))


def declare_batch_through_resize(proto: Any) -> int:
    """Declare, in place, the symbolic batch dimension of the graph input on every Resize output whose input carries
    it (see the module docstring); returns how many were declared. A graph with a fixed batch is left alone."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    batch = dims[0].dim_param if len(dims) else ""
    resizes = [node for node in proto.graph.node if node.op_type == "Resize"]
    if not batch or not resizes:
        return 0
    # Declare them all at once (each declaration is what lets the next Resize's input carry the batch), then take
    # back those whose input turns out not to carry it: two inferences instead of one per Resize.
    types = _tensor_types(proto)
    declared = {node.output[0]: node.input[0] for node in resizes
                if node.output[0] in types and len(types[node.output[0]].shape.dim) > 0}
    for name in declared:
        _declare(proto, name, types[name], batch)
    while declared:
        types = _tensor_types(proto)
        wrong = [name for name, source in declared.items()
                 if source not in types or not len(types[source].shape.dim)
                 or types[source].shape.dim[0].dim_param != batch]
        if not wrong:
            break
        for name in wrong:
            del declared[name]
            for value in [v for v in proto.graph.value_info if v.name == name]:
                proto.graph.value_info.remove(value)
    return len(declared)
