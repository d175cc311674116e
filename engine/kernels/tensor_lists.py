"""TensorList kernels: the lists of tensors TF2 loops read and write (a Keras RNN unstacks its
sequence into one and stacks its outputs from another).

A list travels as a variant tensor: a 0-d object array holding a `TensorList`. Lists are values:
an op that changes one returns a new TensorList sharing the unchanged items. An item never set is
None; reading or stacking it gives zeros of the element shape, which must then be fully known.
An element shape input is -1 (unknown rank) or a vector with -1 for unknown dimensions.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from . import kernel
from ..dtypes import numpy_dtype


@dataclasses.dataclass(frozen=True)
class TensorList:
    items: tuple            # ndarray, or None where no item was set
    element_dtype: int
    element_shape: tuple | None     # None: unknown rank; -1: an unknown dimension

    @property
    def nbytes(self) -> int:
        """What its items take, for the evaluator's memory budget."""
        return sum(item.nbytes for item in self.items if item is not None)


def _handle(tensor_list: TensorList) -> np.ndarray:
    handle = np.empty((), dtype=object)
    handle[()] = tensor_list
    return handle


def _list(handle: np.ndarray) -> TensorList:
    handle = np.asarray(handle)
    value = handle.reshape(()).item() if handle.size == 1 and handle.dtype == object else None
    if not isinstance(value, TensorList):
        raise ValueError("input is not a TensorList")
    return value


def _shape(value) -> tuple | None:
    shape = np.asarray(value)
    if shape.ndim == 0:
        if int(shape) != -1:
            raise ValueError(f"element shape {int(shape)} is neither -1 nor a vector")
        return None
    return tuple(int(d) for d in shape.reshape(-1))


def _merge(a: tuple | None, b: tuple | None) -> tuple | None:
    """The shape both `a` and `b` allow."""
    if a is None or b is None:
        return b if a is None else a
    if len(a) != len(b) or any(x >= 0 and y >= 0 and x != y for x, y in zip(a, b)):
        raise ValueError(f"element shapes {list(a)} and {list(b)} are incompatible")
    return tuple(x if x >= 0 else y for x, y in zip(a, b))


def _check_item(tensor_list: TensorList, item: np.ndarray) -> None:
    shape = tensor_list.element_shape
    if shape is not None and (len(shape) != item.ndim or
                              any(d >= 0 and d != s for d, s in zip(shape, item.shape))):
        raise ValueError(f"an item of shape {list(item.shape)} does not fit the list's element "
                         f"shape {list(shape)}")


def _zeros(tensor_list: TensorList, element_shape: tuple | None) -> np.ndarray:
    # The shape of an item never set: the list's and the op's, or else any item's that was set.
    shape = _merge(tensor_list.element_shape, element_shape)
    for item in tensor_list.items:
        if item is not None:
            shape = _merge(shape, item.shape)
    if shape is None or any(d < 0 for d in shape):
        raise ValueError(f"an item was never set and the element shape "
                         f"{'(unknown)' if shape is None else list(shape)} is not fully known")
    return np.zeros(shape, numpy_dtype(tensor_list.element_dtype))


def _index(tensor_list: TensorList, index) -> int:
    position = int(np.asarray(index).reshape(()))
    if not 0 <= position < len(tensor_list.items):
        raise ValueError(f"index {position} is out of range for a list of {len(tensor_list.items)}")
    return position


@kernel("EmptyTensorList")
def empty_tensor_list(node, inputs):
    return _handle(TensorList((), node.get_attr("element_dtype"), _shape(inputs[0])))


@kernel("TensorListReserve")
def tensor_list_reserve(node, inputs):
    element_shape, count = inputs
    return _handle(TensorList((None,) * int(count), node.get_attr("element_dtype"), _shape(element_shape)))


@kernel("TensorListFromTensor")
def tensor_list_from_tensor(node, inputs):
    tensor, element_shape = inputs
    if tensor.ndim == 0:
        raise ValueError("a scalar cannot be split into a list")
    shape = _merge(_shape(element_shape), tensor.shape[1:])
    return _handle(TensorList(tuple(tensor), node.get_attr("element_dtype"), shape))


@kernel("TensorListLength")
def tensor_list_length(node, inputs):
    return np.int32(len(_list(inputs[0]).items))


@kernel("TensorListElementShape")
def tensor_list_element_shape(node, inputs):
    shape = _list(inputs[0]).element_shape
    dtype = numpy_dtype(node.get_attr("shape_type"))
    return np.asarray(-1 if shape is None else shape, dtype=dtype)


@kernel("TensorListGetItem")
def tensor_list_get_item(node, inputs):
    handle, index, element_shape = inputs
    tensor_list = _list(handle)
    item = tensor_list.items[_index(tensor_list, index)]
    return _zeros(tensor_list, _shape(element_shape)) if item is None else item


@kernel("TensorListSetItem")
def tensor_list_set_item(node, inputs):
    handle, index, item = inputs
    tensor_list = _list(handle)
    items = list(tensor_list.items)
    position = int(np.asarray(index).reshape(()))
    if node.get_attr("resize_if_index_out_of_bounds", False) and position >= len(items):
        items += [None] * (position + 1 - len(items))
    position = _index(dataclasses.replace(tensor_list, items=tuple(items)), position)
    _check_item(tensor_list, item)
    items[position] = item
    return _handle(dataclasses.replace(tensor_list, items=tuple(items)))


@kernel("TensorListPushBack")
def tensor_list_push_back(node, inputs):
    handle, item = inputs
    tensor_list = _list(handle)
    _check_item(tensor_list, item)
    return _handle(dataclasses.replace(tensor_list, items=tensor_list.items + (item,)))


@kernel("TensorListPopBack")
def tensor_list_pop_back(node, inputs):
    handle, element_shape = inputs
    tensor_list = _list(handle)
    if not tensor_list.items:
        raise ValueError("the list is empty")
    item = tensor_list.items[-1]
    rest = dataclasses.replace(tensor_list, items=tensor_list.items[:-1])
    return _handle(rest), (_zeros(tensor_list, _shape(element_shape)) if item is None else item)


def _stack(tensor_list: TensorList, positions, element_shape: tuple | None) -> np.ndarray:
    items = [tensor_list.items[p] for p in positions]
    if not items or any(item is None for item in items):
        zeros = _zeros(tensor_list, element_shape)
        if not items:
            return zeros[np.newaxis][:0]
        items = [zeros if item is None else item for item in items]
    return np.stack(items)


@kernel("TensorListStack")
def tensor_list_stack(node, inputs):
    handle, element_shape = inputs
    tensor_list = _list(handle)
    wanted = node.get_attr("num_elements", -1)
    if wanted != -1 and wanted != len(tensor_list.items):
        raise ValueError(f"the list has {len(tensor_list.items)} items, not {wanted}")
    return _stack(tensor_list, range(len(tensor_list.items)), _shape(element_shape))


@kernel("TensorListGather")
def tensor_list_gather(node, inputs):
    handle, indices, element_shape = inputs
    tensor_list = _list(handle)
    positions = [_index(tensor_list, i) for i in np.asarray(indices).reshape(-1)]
    return _stack(tensor_list, positions, _shape(element_shape))
