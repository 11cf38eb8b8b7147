"""Batch-freeing fixed-batch graphs: equal outputs, a cache, and a logged fallback."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from support import standins
from support.tolerance import DEEP_RTOL

from agegender.cards import get_card
from agegender.inference import OnnxModel, preprocess
from agegender.onnxgraph import batch_free


def _inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, 3, 224, 224)).astype(np.float32)


def _one_by_one(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Outputs of the unmodified (opset 11) graph, one input at a time."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])


@pytest.mark.parametrize(
    ("kind", "opset"), [("vgg16", 11), ("vgg16", 5), ("googlenet", 11), ("googlenet", 5)]
)
def test_rewritten_graph_takes_any_batch_and_matches_the_original(
    tmp_path: Path, kind: str, opset: int
) -> None:
    path = standins.save(standins.build(kind, opset=opset, seed=7), tmp_path / "m.onnx")
    loaded = batch_free.open_graph(path)
    assert loaded.batched and loaded.reason == ""
    assert loaded.source == str(tmp_path / "m.onnx.batched.onnx")
    (inp,) = loaded.session.get_inputs()
    assert inp.name == "input" and inp.shape == ["N", 3, 224, 224]
    x = _inputs(5)
    (got,) = loaded.session.run(None, {"input": x})
    # the reference is the opset-11 graph with the same seed, run as the zoo ships it
    want = _one_by_one(standins.build(kind, opset=11, seed=7), x)
    assert got.shape == want.shape == (5, 101 if kind == "vgg16" else 8)
    np.testing.assert_allclose(got, want, rtol=DEEP_RTOL, atol=1e-6)
    assert not np.allclose(got[0], got[1])  # different inputs, different outputs


def test_reshape_shape_constants_lose_their_baked_batch() -> None:
    freed = batch_free.free_batch(standins.vgg16())
    shapes = {t.name: numpy_helper.to_array(t) for t in freed.graph.initializer}
    reshapes = [n for n in freed.graph.node if n.op_type == "Reshape"]
    assert len(reshapes) == 3
    for node in reshapes:
        assert shapes[node.input[1]][0] == 0
    assert not freed.graph.value_info
    assert [v.name for v in freed.graph.input] == ["input"]  # initializers no longer inputs
    assert freed.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"


def _tiny(nodes, inits, out_shape=(1, 12)) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    return model


def test_constant_node_and_shared_shape_initializers_are_rewritten(tmp_path: Path) -> None:
    shape = numpy_helper.from_array(np.array([1, 12], np.int64), "shape")
    nodes = [
        helper.make_node(
            "Constant", [], ["c"], value=numpy_helper.from_array(np.array([1, 3, 4], np.int64))
        ),
        helper.make_node("Reshape", ["input", "c"], ["a"]),
        helper.make_node("Reshape", ["a", "shape"], ["b"]),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["y"]),
    ]
    path = tmp_path / "tiny.onnx"
    onnx.save_model(_tiny(nodes, [shape]), str(path))
    loaded = batch_free.open_graph(path, value_range=(-1.0, 1.0))
    assert loaded.batched, loaded.reason
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 2, 2)).astype(np.float32)
    (got,) = loaded.session.run(None, {"input": x})
    np.testing.assert_array_equal(got, np.maximum(x.reshape(4, 12), 0))


def test_cache_is_reused_and_invalidated_when_the_original_changes(tmp_path: Path) -> None:
    path = standins.save(standins.googlenet(seed=1), tmp_path / "g.onnx")
    first = batch_free.open_graph(path)
    cached = Path(first.source)
    assert cached.is_file() and (tmp_path / "g.onnx.batched.onnx.key").is_file()
    stamp = cached.stat().st_mtime_ns
    again = batch_free.open_graph(path)
    assert again.source == str(cached) and cached.stat().st_mtime_ns == stamp  # not rewritten
    # a new original (other weights) must not be answered from the old cache
    standins.save(standins.googlenet(seed=2), path)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    fresh = batch_free.open_graph(path)
    x = _inputs(2, seed=3)
    (got,) = fresh.session.run(None, {"input": x})
    np.testing.assert_allclose(
        got, _one_by_one(standins.googlenet(seed=2), x), rtol=DEEP_RTOL, atol=1e-6
    )


def test_unwritable_folder_caches_in_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    path = standins.save(standins.googlenet(), models / "g.onnx")
    store = tmp_path / "store"
    real_stage = batch_free._stage

    def read_only_models(data: bytes, target: Path) -> Path:
        if target.parent == models:  # as root, chmod cannot make a folder unwritable
            raise PermissionError(13, "Permission denied")
        return real_stage(data, target)

    monkeypatch.setattr(batch_free, "_stage", read_only_models)
    loaded = batch_free.open_graph(path, cache_dir=store)
    assert loaded.batched and Path(loaded.source).parent == store
    assert batch_free.open_graph(path, cache_dir=store).source == loaded.source


def test_graph_that_mixes_the_batch_falls_back_to_one_by_one(tmp_path: Path, caplog) -> None:
    # A mean over the batch axis: any batch gives one row, so the rewrite must not be trusted.
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], axes=[0], keepdims=1),
        helper.make_node("Reshape", ["m", "shape"], ["y"]),
    ]
    path = tmp_path / "mix.onnx"
    onnx.save_model(
        _tiny(nodes, [numpy_helper.from_array(np.array([1, 12], np.int64), "shape")]), str(path)
    )
    with caplog.at_level(logging.WARNING, logger="agegender.onnxgraph.batch_free"):
        loaded = batch_free.open_graph(path, name="model mix")
    assert not loaded.batched
    assert "shape" in loaded.reason and "one by one" in loaded.reason
    assert any(
        r.levelno == logging.WARNING and "model mix: fixed batch of 1 kept" in r.getMessage()
        for r in caplog.records
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mix.onnx"]  # nothing staged is left
    assert loaded.session.get_inputs()[0].shape == [1, 3, 2, 2]


def test_graph_with_an_expand_is_not_rewritten(tmp_path: Path, caplog) -> None:
    nodes = [
        helper.make_node("Reshape", ["input", "shape"], ["r"]),
        helper.make_node("Expand", ["r", "shape"], ["y"]),
    ]
    path = tmp_path / "expand.onnx"
    onnx.save_model(
        _tiny(nodes, [numpy_helper.from_array(np.array([1, 12], np.int64), "shape")]), str(path)
    )
    with caplog.at_level(logging.WARNING, logger="agegender.onnxgraph.batch_free"):
        loaded = batch_free.open_graph(path)
    assert not loaded.batched and "Expand" in loaded.reason


def test_onnx_model_batches_a_dex_stand_in_and_matches_one_by_one(tmp_path: Path) -> None:
    card = get_card("dex-imdb-gender")
    path = standins.save(standins.vgg16(outputs=2, seed=4), tmp_path / "dex.onnx")
    model = OnnxModel(card, path, max_batch=8)
    assert model.max_batch == 8 and model.graph_source.endswith(".batched.onnx")
    crops = [
        np.random.default_rng(i).integers(0, 256, (224, 224, 3), dtype=np.uint8) for i in range(3)
    ]
    got = model.run(crops)
    single = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = np.concatenate([single.run(None, {"input": preprocess(card, [c])})[0] for c in crops])
    np.testing.assert_allclose(got, want, rtol=DEEP_RTOL, atol=1e-6)


def test_onnx_model_upgrades_and_batches_a_legacy_opset_graph(tmp_path: Path, caplog) -> None:
    card = get_card("levi-gender")
    path = standins.save(standins.googlenet(outputs=2, opset=5, seed=5), tmp_path / "levi.onnx")
    model = OnnxModel(card, path)
    assert model.max_batch > 1  # opset 5 upgraded, then batch-freed
    crops = [
        np.random.default_rng(i).integers(0, 256, (224, 224, 3), dtype=np.uint8) for i in range(2)
    ]
    got = model.run(crops)
    reference = standins.googlenet(outputs=2, opset=11, seed=5)
    want = np.concatenate([_one_by_one(reference, preprocess(card, [c])) for c in crops])
    np.testing.assert_allclose(got, want, rtol=DEEP_RTOL, atol=1e-6)


def test_rewrite_false_opens_as_is_and_writes_nothing(tmp_path: Path) -> None:
    path = standins.save(standins.googlenet(opset=5), tmp_path / "g.onnx")
    loaded = batch_free.open_graph(path, rewrite=False)
    assert not loaded.batched and loaded.session.get_inputs()[0].shape == [1, 3, 224, 224]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]
    model = OnnxModel(get_card("levi-age"), path, batch_rewrite=False)
    assert model.max_batch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.onnx"]


def test_importing_a_foreign_file_leaves_no_rewrite_beside_it(tmp_path: Path, monkeypatch) -> None:
    from agegender import store

    monkeypatch.setenv("AGEGENDER_HOME", str(tmp_path / "home"))
    downloads = tmp_path / "downloads"
    path = standins.save(standins.googlenet(outputs=2), downloads / "gender_googlenet.onnx")
    with pytest.warns(UserWarning, match="UNVERIFIED"):
        store.import_file(path, "levi-gender")
    assert sorted(p.name for p in downloads.iterdir()) == ["gender_googlenet.onnx"]


def test_no_writable_folder_still_batches_in_memory(tmp_path: Path, monkeypatch, caplog) -> None:
    path = standins.save(standins.googlenet(), tmp_path / "g.onnx")

    def nowhere(data: bytes, target: Path) -> Path:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(batch_free, "_stage", nowhere)
    with caplog.at_level(logging.WARNING, logger="agegender.onnxgraph.batch_free"):
        loaded = batch_free.open_graph(path, cache_dir=tmp_path / "store")
    assert loaded.batched and loaded.source == "<memory>"
    assert "batch-free graph not cached" in caplog.text and "Permission denied" in caplog.text
    x = _inputs(2)
    (got,) = loaded.session.run(None, {"input": x})
    np.testing.assert_allclose(got, _one_by_one(standins.googlenet(), x), rtol=DEEP_RTOL, atol=1e-6)
