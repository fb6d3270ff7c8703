"""ONNX export of the six networks: checked graphs whose I/O is the spec, equal to PyTorch on fresh inputs."""
import dataclasses
import json

import pytest
import torch

from vfrt.engines.specs import NETWORK_NAMES, TensorSpec

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'vfrt[onnx]')")
pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed (pip install 'vfrt[onnx]')")

import vfrt.export.onnx as onnx_export  # noqa: E402
from vfrt.export.onnx import (OnnxArtifact, OnnxExportConfig, OnnxExportError, OnnxMismatchError,  # noqa: E402
                              check_onnx, compare_with_torch, export_network, export_networks, export_onnx_engine)


def _dims(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_every_network_is_exported_checked_and_within_tolerance(onnx_fp32):
    assert list(onnx_fp32.artifacts) == list(NETWORK_NAMES)
    record = json.loads(json.dumps(onnx_fp32.artifacts))           # what a manifest stores
    for name, fields in record.items():
        artifact = OnnxArtifact.from_dict(fields)
        assert artifact.files == (f"{name}.onnx",) and (onnx_fp32.directory / artifact.model).stat().st_size > 0
        assert artifact.precision == "float32" and artifact.tolerance == 1e-3 and artifact.opset == 18
        assert set(artifact.max_error) == {"min", "opt", "max"}
        # fp32 graphs agree with PyTorch far inside the stated tolerance (ONNX Runtime orders sums differently)
        assert max(artifact.max_error.values()) <= 1e-4, (name, artifact.max_error)
    leftovers = [p.name for p in onnx_fp32.directory.iterdir() if not p.name.endswith(".onnx")]
    assert leftovers == []


@pytest.mark.parametrize("name", NETWORK_NAMES)
def test_graph_inputs_and_outputs_are_the_spec(onnx_fp32, name):
    """Names, element types and axis names as the spec declares them (exporters name derived dims their own way)."""
    spec = onnx_fp32.specs[name]
    graph = onnx.load(str(onnx_fp32.directory / f"{name}.onnx")).graph
    for declared, values in ((spec.inputs, graph.input), (spec.outputs, graph.output)):
        assert [v.name for v in values] == [t.name for t in declared]
        for t, v in zip(declared, values):
            assert _dims(v) == list(t.shape)
            assert v.type.tensor_type.elem_type == {torch.float32: 1, torch.float16: 10, torch.int64: 7}[t.dtype]


def test_fp16_graph_computes_in_fp16_and_stays_within_tolerance(make_networks, onnx_fp32, tmp_path):
    """TensorRT-RTX takes precision from the graph: the fp16 UNet graph has fp16 tensors where the spec says so,
    and agrees with PyTorch fp16 (and with fp32) within the fp16 tolerance."""
    networks, specs = make_networks(torch.float16)
    artifacts = export_networks(networks, specs, tmp_path, OnnxExportConfig(compare_at=("min",)),
                                names=("unet_step",))
    art = artifacts["unet_step"]
    assert art.precision == "float16" and art.tolerance == 3e-2 and max(art.max_error.values()) <= 3e-2
    graph = onnx.load(str(tmp_path / art.model)).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)}
    assert types == {"x": 1, "h0": 10, "emb": 10, "consts": 10, "eps": 10}
    weight_bytes = {}
    for init in graph.initializer:
        weight_bytes[init.data_type] = weight_bytes.get(init.data_type, 0) + len(init.raw_data)
    assert weight_bytes[10] > 0.95 * sum(weight_bytes.values())               # the weights are fp16
    fp32_module = onnx_fp32.networks.unet_step                        # the same weights in fp32
    spec16 = specs["unet_step"]
    inputs = spec16.sample_inputs({"rows": 5}, generator=torch.Generator().manual_seed(7))
    from vfrt.engines.executors.onnxruntime import OnnxRuntimeExecutor
    with OnnxRuntimeExecutor(spec16, tmp_path / art.model) as session:
        got = session.run(inputs)["eps"]
    want = fp32_module(**{k: v.float() for k, v in inputs.items()})
    assert (got.float() - want).abs().max() / max(1.0, want.abs().max()) <= 3e-2


@pytest.mark.parametrize("name", ["conditioning", "unet_step", "clip_image"])
def test_torchscript_exporter_gives_the_same_networks(onnx_fp32, tmp_path, name):
    """The fallback exporter (no onnxscript) passes the same checks and comparisons."""
    config = OnnxExportConfig(exporter="torchscript", compare_at=("min", "max"))
    art = export_networks(onnx_fp32.networks, onnx_fp32.specs, tmp_path, config, names=(name,))[name]
    assert art.exporter == "torchscript" and max(art.max_error.values()) <= 1e-4


def test_large_weights_go_to_one_external_data_file(onnx_fp32, tmp_path):
    """Above the threshold (2 GiB for real; 0 here) the weights move to <name>.onnx.data; checks and
    ONNX Runtime read them from beside the model, wherever the directory is."""
    spec, module = onnx_fp32.specs["time_embedding"], onnx_fp32.networks.time_embedding
    art = export_network(module, spec, tmp_path / "a", OnnxExportConfig(external_data_threshold=0))
    assert art.files == ("time_embedding.onnx", "time_embedding.onnx.data")
    moved = tmp_path / "b"
    (tmp_path / "a").rename(moved)
    weights = onnx.load(str(moved / art.model), load_external_data=False).graph.initializer
    assert all(w.data_location == onnx.TensorProto.EXTERNAL for w in weights if w.dims and max(w.dims) >= 256)
    check_onnx(moved / art.model, spec)
    assert compare_with_torch(moved / art.model, module, spec, "max") <= 1e-4


def test_export_adapter_refuses_a_precision_the_networks_do_not_have(onnx_fp32, tmp_path):
    with pytest.raises(ValueError, match="built in float32"):
        export_onnx_engine(onnx_fp32.networks, onnx_fp32.specs, tmp_path, "float16", "cpu")
    with pytest.raises(ValueError, match="float16 or float32, not 'bfloat16'"):
        export_onnx_engine(onnx_fp32.networks, onnx_fp32.specs, tmp_path, "bfloat16", "cpu")
    assert list(tmp_path.iterdir()) == []


def test_custom_kernels_are_refused(make_networks, tmp_path):
    networks, specs = make_networks()
    networks.unet_step.configure(attention="auto", fused_geglu=True, triton_conv=False)
    with pytest.raises(OnnxExportError, match=r"custom kernels \(fused_geglu\)"):
        export_network(networks.unet_step, specs["unet_step"], tmp_path)


def test_graph_unlike_its_spec_is_refused_with_every_difference(onnx_fp32, tmp_path):
    spec = onnx_fp32.specs["conditioning"]
    one_output = dataclasses.replace(spec, outputs=spec.outputs[:1])        # the module returns two
    with pytest.raises(OnnxExportError, match=r"outputs \['consts', '.*'\], the spec has \['consts'\]"):
        export_network(onnx_fp32.networks.conditioning, one_output, tmp_path)
    wrong_dtype = dataclasses.replace(spec, outputs=tuple(dataclasses.replace(t, dtype=torch.float16)
                                                          for t in spec.outputs))
    with pytest.raises(OnnxExportError, match="consts has ONNX element type 1.*h0 has ONNX element type 1"):
        export_network(onnx_fp32.networks.conditioning, wrong_dtype, tmp_path)
    assert list(tmp_path.iterdir()) == []                           # nothing half-written left behind


def test_exporter_failure_is_one_clear_error(onnx_fp32, tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, timesteps):
            raise RuntimeError("this network cannot be traced")

    with pytest.raises(OnnxExportError, match="exporting time_embedding with the torchscript exporter failed: "
                                              "RuntimeError: this network cannot be traced"):
        export_network(Broken(), onnx_fp32.specs["time_embedding"], tmp_path, OnnxExportConfig(exporter="torchscript"))


def test_checks_catch_a_broken_file_and_a_shape_that_disagrees(onnx_fp32, tmp_path):
    spec = onnx_fp32.specs["time_embedding"]
    model = onnx.load(str(onnx_fp32.directory / "time_embedding.onnx"))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 999      # the graph computes 416 columns
    onnx.save(model, str(tmp_path / "shape.onnx"))
    with pytest.raises(OnnxExportError, match="shape inference"):
        check_onnx(tmp_path / "shape.onnx", spec)
    model = onnx.load(str(onnx_fp32.directory / "time_embedding.onnx"))
    model.graph.node[0].input[0] = "no_such_tensor"
    onnx.save(model, str(tmp_path / "broken.onnx"))
    with pytest.raises(OnnxExportError, match="fails onnx.checker"):
        check_onnx(tmp_path / "broken.onnx", spec)


def test_comparison_measures_a_real_difference(onnx_fp32, make_networks, tmp_path, monkeypatch):
    """A graph of other weights is far off; a tolerance the graph misses fails the export with the number."""
    spec = onnx_fp32.specs["time_embedding"]
    other = make_networks()[0].time_embedding
    with torch.no_grad():
        other.unet.time_embed[0].weight.mul_(1.5)
    assert compare_with_torch(onnx_fp32.directory / "time_embedding.onnx", other, spec, "opt") > 1e-2
    monkeypatch.setitem(onnx_export.TOLERANCE, "float32", 1e-12)
    with pytest.raises(OnnxMismatchError, match=r"time_embedding at max: .* > 1e-12"):
        export_networks(onnx_fp32.networks, onnx_fp32.specs, tmp_path, OnnxExportConfig(compare_at=("max",)),
                        names=("time_embedding",))


def test_export_config_is_validated():
    with pytest.raises(ValueError, match="exporter must be one of auto, dynamo, torchscript"):
        OnnxExportConfig(exporter="tf2onnx")
    with pytest.raises(ValueError, match="compare_at takes min, opt, max"):
        OnnxExportConfig(compare_at=("middle",))
    with pytest.raises(ValueError, match="opset must be an integer >= 17"):
        OnnxExportConfig(opset=11)
