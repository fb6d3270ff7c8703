"""Network specs describe their modules exactly; executors keep the lifecycle and agree with each other."""
import pytest
import torch

from vfrt.engines.executors import CompiledExecutor, EagerExecutor, ExecutorStateError
from vfrt.engines.specs import NETWORK_NAMES, SpecMismatchError, build_networks


@pytest.fixture(scope="module")
def networks(tiny_model):
    return build_networks(tiny_model, "cpu", torch.float32, torch.float32, channels_last=False)


@pytest.fixture(scope="module")
def specs(networks):
    return networks.specs(max_refs=6, max_batch=3)


@pytest.mark.parametrize("name", NETWORK_NAMES)
@pytest.mark.parametrize("point", ["min", "opt", "max"])
def test_each_module_produces_what_its_spec_declares(networks, specs, name, point):
    spec = specs[name]
    sizes = spec.sizes_at(point)
    inputs = spec.sample_inputs(sizes, generator=torch.Generator().manual_seed(1))
    with EagerExecutor(spec, networks.module(name)) as ex:
        out = ex.run(inputs)
    assert list(out) == list(spec.output_names)
    for t in spec.outputs:
        assert out[t.name].dtype == t.dtype, (name, t.name)
        assert tuple(out[t.name].shape) == spec.shape(t, sizes), (name, t.name)
        assert torch.isfinite(out[t.name]).all()


def test_spec_axes_and_shapes(specs):
    unet = specs["unet_step"]
    assert unet.input_names == ("x", "h0", "emb", "consts") and unet.output_names == ("eps",)
    assert (unet.axis("rows").min, unet.axis("rows").max) == (1, 7)
    assert unet.input_shapes("max")["h0"][0] == 7 and unet.input_shapes("min")["consts"][0] == 1
    assert specs["clip_image"].axis("batch").max == 3
    assert specs["time_embedding"].axis("steps").opt == 76


def test_inputs_that_do_not_fit_the_spec_are_refused_with_a_reason(networks, specs):
    spec = specs["unet_step"]
    ex = EagerExecutor(spec, networks.unet_step).load()
    good = spec.sample_inputs()
    with pytest.raises(SpecMismatchError, match="takes inputs"):
        ex.run({k: v for k, v in good.items() if k != "emb"})
    with pytest.raises(SpecMismatchError, match="dtype"):
        ex.run({**good, "x": good["x"].double()})
    with pytest.raises(SpecMismatchError, match="axis 'rows' is"):
        ex.run({**good, "consts": good["consts"][:1]})
    with pytest.raises(SpecMismatchError, match="outside the built range 1..7"):
        ex.run(spec.sample_inputs({"rows": 8}))


def test_executor_lifecycle(networks, specs):
    spec = specs["vae_decoder"]
    ex = EagerExecutor(spec, networks.vae_decoder)
    with pytest.raises(ExecutorStateError, match="not loaded"):
        ex.run(spec.sample_inputs())
    inputs = spec.sample_inputs({"batch": 2}, generator=torch.Generator().manual_seed(3))
    with ex:
        target = {"image": torch.full((2, 3, 64, 64), float("nan"))}      # poisoned: every element must be written
        written = ex.run(inputs, outputs=target)
        assert written["image"] is target["image"] and torch.isfinite(target["image"]).all()
        torch.testing.assert_close(target["image"], ex.run(inputs)["image"])
    with pytest.raises(ExecutorStateError, match="closed"):
        ex.load()


@pytest.mark.parametrize("name", ["unet_step", "conditioning"])
def test_compiled_executor_agrees_with_eager_on_fresh_inputs(networks, specs, name):
    """torch.compile (aot_eager here: no C++ toolchain needed) with the spec's dynamic axes: one graph for
    every row count, equal to eager within 1e-5."""
    from torch._dynamo.testing import CompileCounterWithBackend
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    spec = specs[name]
    eager = EagerExecutor(spec, networks.module(name)).load()
    compiled = CompiledExecutor(spec, networks.module(name), backend=counter).load()
    for seed, rows in ((0, 3), (1, 5), (2, 7)):
        inputs = spec.sample_inputs({"rows": rows}, generator=torch.Generator().manual_seed(seed))
        got, want = compiled.run(inputs), eager.run(inputs)
        for key in spec.output_names:
            torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5)
    assert compiled.compiled and counter.frame_count == 1
    torch._dynamo.reset()
