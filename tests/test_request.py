"""The request schema is the one source of every option: the CLI's flags and the UI's form are built from it."""

import argparse

import pytest

from hdpainter import cli
from hdpainter.errors import HDPainterError
from hdpainter.request import InpaintRequest, OptionError, SRConfig, option_index, options

KEYS = [opt.key for opt in options()]


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = cli._parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[name]


@pytest.mark.parametrize("command", ["inpaint", "batch"])
def test_the_cli_offers_exactly_the_schemas_options(command):
    parser = subcommand(command)
    actions = {a.dest: a for a in parser._actions}
    offered = [dest for dest in actions if dest in option_index()]
    assert offered == KEYS  # every option, in the schema's order, and no other flag spells one
    for opt in options():
        action = actions[opt.key]
        assert action.option_strings[0] == opt.flag
        if opt.key in cli.MODEL_FLAGS:  # --sam-refine [MODEL]: off unless given, then with its model
            assert action.option_strings == [opt.flag] and action.default is None and action.nargs == "?"
            assert action.const == cli.MODEL_FLAGS[opt.key]
            continue
        if opt.type is bool:
            assert action.option_strings == [opt.flag, "--no-" + opt.flag[2:]] and action.default is opt.default
            continue
        assert action.default == opt.label(opt.default)
        want_choices = (
            list(opt.labels) if opt.labels else None if opt.sequence else list(opt.choices) if opt.choices else None
        )
        assert action.choices == want_choices, opt.key
    text = " ".join(parser.format_help().split())  # argparse wraps lines
    assert "(default: 50)" in text and "(default: auto)" in text and "(default: 16,32)" in text


def test_sam_refine_takes_an_optional_model_which_loads_and_a_switch_which_asks():
    base = ["--image", "i", "--mask", "m", "--prompt", "p", "--output", "o.png"]
    parser = subcommand("inpaint")
    off, on, named = (parser.parse_args(base + extra) for extra in ([], ["--sam-refine"], ["--sam-refine", "my/sam"]))
    assert [cli.make_request(a, "p").sr.sam_refine for a in (off, on, named)] == [False, True, True]
    assert (off.sam_refine, on.sam_refine, named.sam_refine) == (None, "facebook/sam-vit-base", "my/sam")


def test_cli_defaults_parse_to_the_schemas_defaults():
    args = subcommand("inpaint").parse_args(["--image", "i", "--mask", "m", "--prompt", "p", "--output", "o.png"])
    assert cli.make_request(args, "p") == InpaintRequest("p")


def test_eval_and_demo_take_the_schemas_options_with_their_own_defaults():
    args = cli._parser().parse_args(["eval", "--coco", "c", "--out", "o"])
    assert (args.rasg_eta, args.negative_prompt, args.steps) == (0.25, "", option_index()["steps"].default)
    assert subcommand("eval")._option_string_actions["--rasg-sigma"].choices == list(
        option_index()["rasg_sigma"].choices
    )
    args = cli._parser().parse_args(["demo"])
    assert args.seed == 0 and args.method == InpaintRequest.method


def test_the_ui_form_offers_exactly_the_schemas_options_and_choices():
    pytest.importorskip("gradio")
    from hdpainter.ui import InpaintApp, UIConfig

    app = InpaintApp(UIConfig(models=["m"], upscaler="x4", working_size=1536))  # beyond the slider's usual end
    try:
        info = app.build().get_api_info()["named_endpoints"]["/inpaint"]["parameters"]
    finally:
        app.close()
    assert [p["parameter_name"] for p in info] == ["editor", "mask_upload", "prompt", "model"] + KEYS
    by_name = {p["parameter_name"]: p for p in info}
    for opt in options():
        shown = by_name[opt.key]
        default = 1536 if opt.key == "working_size" else opt.default
        if opt.labels is not None or (opt.choices and not opt.sequence):
            assert shown["type"]["enum"] == list(opt.labels or opt.choices), opt.key
            assert shown["parameter_default"] == opt.label(default)
        elif opt.sequence and opt.choices:
            assert shown["type"]["items"]["enum"] == list(opt.choices) and shown["parameter_default"] == list(default)
        elif opt.sequence:  # free numbers: typed as text, "0,0,0,0"
            assert shown["parameter_default"] == opt.label(default)
        elif opt.optional:  # 0 on its slider: automatic (None), unless the server set its own
            assert shown["parameter_default"] == (default or 0), opt.key
        else:
            assert shown["parameter_default"] == default, opt.key
        if opt.ui_max is not None:
            low = 0 if opt.optional else opt.range[0] if opt.range else -opt.ui_max
            high = max(opt.ui_max, default or 0)  # the server's own working size fits on its slider
            assert shown["type"]["description"] == f"numeric value between {low:g} and {high:g}", opt.key


def test_options_parse_text_and_name_themselves_per_front_end():
    request = InpaintRequest.from_options(
        {
            "prompt": "a boat",
            "steps": "7",
            "sr_steps": 3,
            "vae_tiling": "on",
            "painta_grids": "32",
            "blend_dilation": "",
            "upscale": "false",
            "sr.region": "whole",
            "rasg_eta": 0.25,
        }
    )
    assert (request.num_inference_steps, request.sr.num_inference_steps, request.sr.vae_tiling) == (7, 3, True)
    assert request.guidance.painta_grids == (32,) and request.sr.blend_dilation is None and request.upscale is False
    assert request.sr.region == "whole" and request.rasg_eta == 0.25
    with pytest.raises(OptionError) as caught:
        InpaintRequest.from_options({"prompt": "x", "sr_steps": 0})
    assert str(caught.value) == "sr.num_inference_steps must be in 1..1000, got 0"  # the library names the field
    assert str(caught.value.for_cli()) == "--sr-steps must be in 1..1000, got 0"  # the command line the flag
    for bad, message in [
        ({"steps": "many"}, "must be an integer"),
        ({"sr_mask_blur": 4}, "must be odd"),
        ({"working_size": 100}, "multiple of 8"),
        ({"rasg_grid": 12}, "must be one of 8, 16, 32, 64"),
        ({"vae_tiling": "maybe"}, "must be one of auto, on, off"),
        ({"color": "red"}, "unknown option"),
    ]:
        with pytest.raises(HDPainterError, match=message):
            InpaintRequest.from_options({"prompt": "x"} | bad)


def test_size_bounded_options_are_checked_against_the_image():
    request = InpaintRequest("x", mask_feather=60)
    request.validate((100, 50))
    with pytest.raises(OptionError, match=r"mask_feather must be in 0..40 \(the image's long side\), got 60"):
        request.validate((40, 30))
    request = InpaintRequest("x", sr=SRConfig(blend_pad=41))
    with pytest.raises(OptionError, match="sr.blend_pad must be in 1..40"):
        request.validate((40, 30))
    InpaintRequest("x", upscale=False, sr=SRConfig(blend_pad=41)).validate((40, 30))  # no blend without stage 2


@pytest.mark.parametrize("size", [(512, 512), (513, 200), (300, 700), (1024, 768), (40, 30)])
@pytest.mark.parametrize("working", [256, 512])
@pytest.mark.parametrize(
    "upscale, method", [(True, "specialized"), (True, "baseline"), (True, "bicubic"), (False, "specialized")]
)
def test_needs_upscaler_is_diffusion_above_the_stage1_size(size, working, upscale, method):
    request = InpaintRequest("x", working_size=working, upscale=upscale, sr=SRConfig(method=method))
    stage1_long_side = working  # the reference's resize: long side = working size, short side truncated
    assert request.needs_upscaler(size) == (upscale and method != "bicubic" and max(size) > stage1_long_side)


def test_seeds_and_metadata_round_trip_through_the_option_keys():
    request = InpaintRequest("a boat", seed=5, num_samples=3, sr=SRConfig(region="whole", vae_tiling=False))
    assert request.seeds() == [5, 1005, 2005]
    meta = request.metadata()
    assert set(meta) == {"prompt", *KEYS} and meta["sr_region"] == "whole" and meta["steps"] == 50
    assert InpaintRequest.from_options(meta) == request  # a result's parameters are a valid manifest row


def test_the_documented_option_table_is_the_schemas():
    from pathlib import Path

    from hdpainter.request import options_markdown

    text = (Path(__file__).resolve().parents[1] / "docs" / "development.md").read_text(encoding="utf-8")
    documented = text.split("<!-- options:begin -->\n")[1].split("<!-- options:end -->")[0]
    assert documented == options_markdown(), "regenerate the table with: python -m hdpainter.request"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("sr", SRConfig(vae_tiling="off"), "sr.vae_tiling must be one of auto, on, off; got 'off'"),  # truthy text
        ("sr", SRConfig(vae_tiling=1), "sr.vae_tiling must be one of auto, on, off; got 1"),
        ("upscale", "no", "upscale must be true or false; got 'no'"),
        ("num_samples", 2.5, "num_samples must be an integer; got 2.5"),
        ("seed", True, "seed must be an integer; got True"),
        ("negative_prompt", None, "negative_prompt must be text; got None"),
    ],
)
def test_validate_checks_the_types_the_python_api_gets(field, value, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        InpaintRequest("x", **{field: value}).validate()
    InpaintRequest(
        "x", guidance_scale=7, sr=SRConfig(vae_tiling=True, blend_dilation=None)
    ).validate()  # int for float


def test_text_and_scalars_parse_as_a_manifest_gives_them():
    request = InpaintRequest.from_options(
        {"prompt": "x", "painta_grids": 16, "negative_prompt": None, "upscale": "off"}
    )
    assert request.guidance.painta_grids == (16,) and request.negative_prompt == "" and request.upscale is False
