"""Named recipes: the registry, the Table, variants by dataclasses.replace, validation."""
import dataclasses

import pytest

from quantlib.recipes import RECIPES, Recipe, get_recipe, recipes

ISSUE_NAMES = ["nvfp4", "mxfp4", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxint8",
               "fp8_e4m3_tensor", "fp8_e4m3_rowwise", "fp8_e4m3_1x128", "fp8_e4m3_128x128",
               "fp8_e5m2_tensor", "fp8_e5m2_rowwise", "fp8_e5m2_1x128", "fp8_e5m2_128x128",
               "int8_channel", "int4_g128", "int4_g128_asym"]


def test_every_issue_recipe_is_named_and_listed():
    t = recipes()
    assert set(ISSUE_NAMES) <= set(t.column("recipe"))
    assert len(t) == len(RECIPES)
    for name in ISSUE_NAMES:
        assert get_recipe(name).name == name
        assert get_recipe(name.upper()) is get_recipe(name)


@pytest.mark.parametrize("name, bits", [("nvfp4", 4.5), ("mxfp4", 4.25), ("mxfp8_e4m3", 8.25),
                                        ("mxfp6_e2m3", 6.25), ("mxfp6_e3m2", 6.25),
                                        ("mxint8", 8.25), ("int4_g128", 4.25),
                                        ("int4_g128_asym", 4.3125), ("fp8_e4m3_1x128", 8.25)])
def test_bits_per_element_with_scales(name, bits):
    assert abs(get_recipe(name).bits_per_element() - bits) < 1e-5
    row = recipes().to_dicts()[list(RECIPES).index(name)]
    assert row["bits/element"] == get_recipe(name).bits_per_element()


def test_variants_by_replace_and_frozen():
    r = get_recipe("mxfp4")
    v = dataclasses.replace(r, scale_rule="rceil", name="mxfp4_rceil")
    assert v.scale_rule == "rceil" and r.scale_rule == "floor" and v != r
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.block = 16
    g64 = dataclasses.replace(get_recipe("int4_g128"), block=64)
    assert g64.block == 64 and get_recipe("int4_g128").block == 128
    p2 = dataclasses.replace(get_recipe("fp8_e4m3_1x128"), scale_format="pow2")
    assert p2.scale_format == "pow2"


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as e:
        get_recipe("mxfp5")
    assert "nvfp4" in str(e.value) and "int4_g128_asym" in str(e.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"element": "e9m9"}, "unknown format"),
    ({"granularity": "column"}, "granularity"),
    ({"granularity": "group", "block": None}, "positive int"),
    ({"granularity": "block2d", "block": 128}, r"\(rows, cols\)"),
    ({"scale_format": "e8m0"}, "block scales"),
    ({"scale_format": "fp8"}, "scale_format"),
    ({"granularity": "group", "block": 32, "scale_rule": "up"}, "scale_rule"),
    ({"element": "uint4", "granularity": "group", "block": 32, "scale_format": "e8m0"}, "zero point"),
    ({"element": "e8m0"}, "scale format"),
])
def test_invalid_recipes_raise(kwargs, match):
    args = {"name": "bad", "element": "e4m3"} | kwargs
    with pytest.raises(ValueError, match=match):
        Recipe(**args)


def test_asymmetric_and_mx_int_flags():
    assert get_recipe("int4_g128_asym").asymmetric and not get_recipe("int4_g128").asymmetric
    assert get_recipe("mxint8").mx_int8 and not get_recipe("int8_channel").mx_int8
