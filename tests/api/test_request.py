"""One request shape from the edge to the core: the CLI and the API resolve the same defaults, a request
survives the job store, and jobs batch together exactly when their batch keys match."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preempt.cli import _request, build_parser
from preempt.registry import card_for, registered_models
from preempt.request import MAX_ITERATIONS, PRESETS, RequestError, RobustifyRequest


def cli_request(*options: str) -> RobustifyRequest:
    return _request(build_parser().parse_args(["robustify", "in.png", "-o", "out", *options]))


@pytest.mark.parametrize("name", sorted(registered_models()))
def test_cli_and_api_resolve_the_same_defaults_for_every_shipped_model(name, client):
    """The CLI's request for ``--model NAME`` is the one the API stores for ``model=NAME``."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (28, 28), 128).save(buf, "PNG")
    r = client.post("/v1/robustify", files={"file": ("x.png", buf.getvalue())}, data={"model": name})
    assert r.status_code == 202, r.text
    api = RobustifyRequest.from_json(client.app.state.store.get(r.json()["job_id"])["request"])
    assert api == cli_request("--model", name)
    threat = card_for(name).get("threat") or {}
    assert api.norm == threat.get("norm", "linf")  # the model card's threat, on both doors


def test_the_cli_refuses_what_the_api_refuses():
    for options in (["--delta", "5"], ["--iterations", str(MAX_ITERATIONS + 1)], ["--no-verify", "--retry"],
                    ["--model", "fmnist-l2-ours-8ep", "--epsilon", "1001"]):
        with pytest.raises(Exception) as e:
            cli_request(*options)
        assert type(e.value).__name__ == "UsageError"


def test_a_request_survives_the_job_store_json():
    r = RobustifyRequest.resolve(card_for("fmnist-l2-ours-8ep"), "fmnist-l2-ours-8ep", preset="high", delta=1.0,
                                 stop_loss=0.05, verify="pgd", retry=True)
    assert RobustifyRequest.from_json(r.to_json()) == r
    assert (r.iterations, r.steps, r.samples) == tuple(PRESETS["high"][k] for k in ("iterations", "steps", "samples"))


def test_unknown_fields_and_bad_values_name_every_field():
    with pytest.raises(RequestError) as e:
        RobustifyRequest.resolve({}, "m", iteraions=10)
    assert e.value.errors == [("iteraions", "unknown parameter")]
    with pytest.raises(RequestError) as e:
        RobustifyRequest.resolve({}, "m", norm="linf", epsilon="nan", steps=0, preset="ultra")
    assert {field for field, _ in e.value.errors} == {"epsilon", "delta", "steps", "preset"}


FIELDS = {"delta": st.sampled_from([0.05, 0.1]), "iterations": st.sampled_from([5, 6]),
          "preset": st.sampled_from(sorted(PRESETS)), "verify": st.sampled_from(["apgd", "pgd"]),
          "stop_patience": st.sampled_from([0, 3]), "model": st.sampled_from(["a", "b"])}
SHAPES = st.sampled_from([(1, 28, 28), (3, 28, 28), (1, 28, 32)])


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional=FIELDS), st.fixed_dictionaries({}, optional=FIELDS), SHAPES, SHAPES)
def test_batch_keys_match_exactly_when_the_computation_and_the_shape_match(a, b, shape_a, shape_b):
    ra = RobustifyRequest.resolve({}, a.pop("model", "a"), **a)
    rb = RobustifyRequest.resolve({}, b.pop("model", "a"), **b)
    same_work = ra.model_dump(exclude={"preset"}) == rb.model_dump(exclude={"preset"}) and shape_a == shape_b
    assert (ra.batch_key(shape_a) == rb.batch_key(shape_b)) == same_work


def test_strength_and_smooth_have_defaults_and_are_checked():
    from preempt.request import DEFAULT_STRENGTH, RequestError, RobustifyRequest

    card = {"threat": {"norm": "linf", "epsilon": 0.1}}
    r = RobustifyRequest.resolve(card, "m")
    assert r.strength == DEFAULT_STRENGTH and r.smooth is True
    assert RobustifyRequest.resolve(card, "m", strength="high", smooth=False).strength == "high"
    with pytest.raises(RequestError, match="strength"):
        RobustifyRequest.resolve(card, "m", strength="invisible")
